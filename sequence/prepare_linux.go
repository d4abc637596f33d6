package sequence

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"

	"keel/host"
	"keel/machine"
)

// The node's host preparation for containers (package host plans it), as boot phases: the
// machine id and CA bundle once STATE is mounted, cgroups, modules and sysctls before the
// services, names once the network is up. None is fatal: a node that cannot run containers
// still serves its endpoint and says why (status, "host").

// Files the phases write in the node's root (RAM) and keep on STATE.
const (
	machineIDKeep = MountState + "/machine-id"
	machineIDFile = "/etc/machine-id"
	caBundle      = "/etc/ssl/certs/ca-certificates.crt" // Go's crypto/x509 reads it
	resolvConf    = "/etc/resolv.conf"
	hostsFile     = "/etc/hosts"
)

// hostFacts is what the preparation did, for status.
type hostFacts struct {
	controllers, missing []string
	sysctls              []host.Sysctl
	machineID            string
	nameservers, search  []string
	caCerts              int
}

func (n *Node) machineID(context.Context) error {
	id, created, err := host.EnsureMachineID(machineIDKeep, machineIDFile)
	if err != nil {
		return err
	}
	if created {
		n.log.Info("host: machine id created", "id", id)
	}
	n.mu.Lock()
	n.host.machineID = id
	n.mu.Unlock()
	return nil
}

func (n *Node) caCertificates(context.Context) error {
	system, err := os.ReadFile(caBundle)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var extra []byte
	if p := n.config().Host.CACertificates; p != "" {
		if extra, err = os.ReadFile(filepath.Join(MountState, p)); err != nil {
			return err
		}
	}
	b, count, err := host.CABundle(system, extra)
	if err != nil {
		return err
	}
	if len(extra) > 0 {
		if err := host.WriteFile(caBundle, b, 0o644); err != nil {
			return err
		}
	}
	n.mu.Lock()
	n.host.caCerts = count
	n.mu.Unlock()
	return nil
}

func (n *Node) cgroups(context.Context) error {
	on, missing, err := host.MountCgroups()
	n.mu.Lock()
	n.host.controllers, n.host.missing = on, missing
	n.mu.Unlock()
	if err == nil && len(missing) > 0 {
		n.log.Info("host: cgroup controllers this kernel lacks", "missing", missing)
	}
	return err
}

func (n *Node) containerModules(context.Context) error {
	loaded, errs := machine.LoadModules(host.ContainerModules)
	n.log.Info("host: container modules loaded", "count", loaded, "failed", len(errs))
	return errors.Join(errs...)
}

func (n *Node) sysctls(context.Context) error {
	s, err := host.Sysctls(host.DefaultSysctls, n.config().Host.Sysctls)
	if err != nil {
		return err
	}
	err = host.ApplySysctls(s)
	for i := range s {
		if v, rerr := host.ReadSysctl(s[i].Name); rerr == nil {
			s[i].Value = v // what the kernel holds, for status
		}
	}
	n.mu.Lock()
	n.host.sysctls = s
	n.mu.Unlock()
	return err
}

// accounts writes /etc/passwd and /etc/group (host.Accounts).
func (n *Node) accounts(context.Context) error {
	for _, p := range []string{"/etc/passwd", "/etc/group"} {
		if err := host.WriteFile(p, []byte(host.Accounts[p]), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// names writes /etc/resolv.conf (DHCP's servers, or the config's) and /etc/hosts.
func (n *Node) names(context.Context) error {
	cfg := n.config()
	configured, err := cfg.Host.Resolver()
	if err != nil {
		return err
	}
	n.mu.Lock()
	dhcp := n.dns
	var addrs []netip.Addr
	for _, p := range n.addrs {
		addrs = append(addrs, p.Addr())
	}
	n.mu.Unlock()
	rc, err := host.ResolvConf(dhcp, configured)
	if err != nil {
		return err
	}
	extra, err := cfg.Host.HostsEntries()
	if err != nil {
		return err
	}
	hosts, err := host.Hosts(cfg.HostnameOrDefault(), addrs, extra)
	if err != nil {
		return err
	}
	if err := host.WriteFile(resolvConf, rc, 0o644); err != nil {
		return err
	}
	if err := host.WriteFile(hostsFile, hosts, 0o644); err != nil {
		return err
	}
	r := dhcp
	if len(configured.Nameservers) > 0 {
		r.Nameservers = configured.Nameservers
	}
	if len(configured.Search) > 0 {
		r.Search = configured.Search
	}
	n.mu.Lock()
	n.host.nameservers, n.host.search = nil, r.Search
	for _, a := range r.Nameservers {
		n.host.nameservers = append(n.host.nameservers, a.String())
	}
	n.mu.Unlock()
	return nil
}
