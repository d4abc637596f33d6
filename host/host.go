// Package host prepares the node's own operating system for containers and a kubelet, as boot
// phases: cgroup v2 with its controllers delegated, the kernel modules containers and pod
// networking need, sysctls, name resolution (/etc/resolv.conf, /etc/hosts), a persistent
// /etc/machine-id, and a CA bundle for registries. host.go is pure: it plans what the
// effects in *_linux.go do, and is tested exhaustively without a VM.
package host

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// ContainerModules are the kernel modules container runtimes and pod networking need, loaded
// when the node prepares for containers: overlay (image layers), bridge and veth (pod links),
// br_netfilter (bridged traffic seen by iptables, which the bridge-nf sysctls need), conntrack
// and NAT, and the nftables and xtables pieces iptables-nft (CNI's portmap and masquerade) uses.
var ContainerModules = []string{
	"overlay", "bridge", "br_netfilter", "veth",
	"nf_conntrack", "nf_nat",
	"nf_tables", "nft_chain_nat", "nft_compat", "nft_masq", "nft_ct",
	"ip_tables", "iptable_nat", "iptable_filter", "ipt_REJECT",
	"xt_conntrack", "xt_MASQUERADE", "xt_comment", "xt_mark", "xt_addrtype",
}

// DefaultSysctls are what a Kubernetes node needs: forwarding between pod links and the
// uplink, and bridged traffic passing through iptables (kube-proxy and CNI rules).
var DefaultSysctls = map[string]string{
	"net.ipv4.ip_forward":                 "1",
	"net.ipv6.conf.all.forwarding":        "1",
	"net.bridge.bridge-nf-call-iptables":  "1",
	"net.bridge.bridge-nf-call-ip6tables": "1",
	"fs.inotify.max_user_watches":         "524288",
	"fs.inotify.max_user_instances":       "8192",
	"vm.overcommit_memory":                "1", // the kubelet's default expectation
	"kernel.panic_on_oops":                "1", // a node that oopses reboots (panic=1) instead of limping
}

// Sysctl is one setting, by its dotted name.
type Sysctl struct{ Name, Value string }

var sysctlName = regexp.MustCompile(`^[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+$`)

// ErrInvalid wraps every refused input.
var ErrInvalid = errors.New("host: invalid")

// Sysctls merges overrides into the defaults (an empty value drops a default) and returns the
// settings in name order, so that they are applied and shown the same way every boot.
func Sysctls(defaults, overrides map[string]string) ([]Sysctl, error) {
	m := map[string]string{}
	for k, v := range defaults {
		m[k] = v
	}
	for k, v := range overrides {
		if !sysctlName.MatchString(k) || strings.Contains(k, "..") {
			return nil, fmt.Errorf("%w: sysctl name %q", ErrInvalid, k)
		}
		if strings.ContainsAny(v, "\n\x00") {
			return nil, fmt.Errorf("%w: sysctl %s: value %q", ErrInvalid, k, v)
		}
		if v == "" {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	out := make([]Sysctl, 0, len(m))
	for k, v := range m {
		out = append(out, Sysctl{k, v})
	}
	slices.SortFunc(out, func(a, b Sysctl) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// SysctlPath is where a sysctl lives under /proc/sys.
func SysctlPath(name string) string { return "/proc/sys/" + strings.ReplaceAll(name, ".", "/") }

// KubeletControllers are the cgroup v2 controllers the kubelet uses; those the kernel has are
// delegated to the root's children.
var KubeletControllers = []string{"cpuset", "cpu", "io", "memory", "hugetlb", "pids"}

// SubtreeControl is what to write to the root's cgroup.subtree_control to delegate want,
// given the root's cgroup.controllers, and the wanted controllers the kernel lacks.
func SubtreeControl(available string, want []string) (line string, missing []string) {
	have := strings.Fields(available)
	var on []string
	for _, c := range want {
		if slices.Contains(have, c) {
			on = append(on, "+"+c)
		} else {
			missing = append(missing, c)
		}
	}
	return strings.Join(on, " "), missing
}

// MachineID returns the node's machine id: existing (the file kept on STATE) if it is a valid
// one, else a new one made from random (16 bytes). created says a new one was made.
func MachineID(existing string, random []byte) (id string, created bool, err error) {
	if id := strings.TrimSpace(existing); validMachineID(id) {
		return id, false, nil
	}
	if len(random) < 16 {
		return "", false, fmt.Errorf("%w: machine id from %d random bytes", ErrInvalid, len(random))
	}
	return hex.EncodeToString(random[:16]), true, nil
}

func validMachineID(s string) bool {
	if len(s) != 32 || s == strings.Repeat("0", 32) {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// Resolver is /etc/resolv.conf: nameservers (at most three count, as in glibc) and search
// domains.
type Resolver struct {
	Nameservers []netip.Addr
	Search      []string
}

// ResolvConf renders r; configured parts replace DHCP's (a configured list wins whole).
func ResolvConf(dhcp, configured Resolver) ([]byte, error) {
	r := dhcp
	if len(configured.Nameservers) > 0 {
		r.Nameservers = configured.Nameservers
	}
	if len(configured.Search) > 0 {
		r.Search = configured.Search
	}
	var b strings.Builder
	b.WriteString("# written by keel at boot (DHCP, or the node's config)\n")
	for _, ns := range r.Nameservers {
		if !ns.IsValid() {
			return nil, fmt.Errorf("%w: nameserver %v", ErrInvalid, ns)
		}
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(r.Search) > 0 {
		for _, d := range r.Search {
			if !validHostname(d) {
				return nil, fmt.Errorf("%w: search domain %q", ErrInvalid, d)
			}
		}
		fmt.Fprintf(&b, "search %s\n", strings.Join(r.Search, " "))
	}
	return []byte(b.String()), nil
}

// HostsEntry is one /etc/hosts line.
type HostsEntry struct {
	Addr  netip.Addr
	Names []string
}

// Hosts renders /etc/hosts: localhost, the node's own name on each of its addresses (or on
// 127.0.1.1 when it has none yet), then the configured entries.
func Hosts(hostname string, addrs []netip.Addr, extra []HostsEntry) ([]byte, error) {
	if !validHostname(hostname) {
		return nil, fmt.Errorf("%w: hostname %q", ErrInvalid, hostname)
	}
	var b strings.Builder
	b.WriteString("# written by keel at boot\n127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
	if len(addrs) == 0 {
		addrs = []netip.Addr{netip.MustParseAddr("127.0.1.1")}
	}
	for _, a := range addrs {
		fmt.Fprintf(&b, "%s %s\n", a, hostname)
	}
	for _, e := range extra {
		if !e.Addr.IsValid() || len(e.Names) == 0 {
			return nil, fmt.Errorf("%w: hosts entry %v %v", ErrInvalid, e.Addr, e.Names)
		}
		for _, n := range e.Names {
			if !validHostname(n) {
				return nil, fmt.Errorf("%w: hosts name %q", ErrInvalid, n)
			}
		}
		fmt.Fprintf(&b, "%s %s\n", e.Addr, strings.Join(e.Names, " "))
	}
	return []byte(b.String()), nil
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

func validHostname(s string) bool { return len(s) <= 253 && hostnameRE.MatchString(s) }

// ParseHostsEntry parses "ADDR NAME [NAME...]" (the config's form).
func ParseHostsEntry(s string) (HostsEntry, error) {
	f := strings.Fields(s)
	if len(f) < 2 {
		return HostsEntry{}, fmt.Errorf("%w: hosts entry %q: want ADDR NAME...", ErrInvalid, s)
	}
	a, err := netip.ParseAddr(f[0])
	if err != nil {
		return HostsEntry{}, fmt.Errorf("%w: hosts entry %q: %v", ErrInvalid, s, err)
	}
	return HostsEntry{Addr: a, Names: f[1:]}, nil
}

// CABundle is the system bundle with extra certificates (PEM) appended; every extra block must
// be a certificate that parses. It returns the bundle and how many certificates it holds.
func CABundle(system, extra []byte) ([]byte, int, error) {
	n := countCerts(system)
	rest := extra
	var out []byte
	out = append(out, system...)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, 0, fmt.Errorf("%w: extra CA bundle holds a %s, not a CERTIFICATE", ErrInvalid, blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return nil, 0, fmt.Errorf("%w: extra CA certificate: %v", ErrInvalid, err)
		}
		out = append(out, pem.EncodeToMemory(blk)...)
		n++
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, 0, fmt.Errorf("%w: extra CA bundle has bytes that are not PEM", ErrInvalid)
	}
	return out, n, nil
}

func countCerts(b []byte) int {
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return n
		}
		if blk.Type == "CERTIFICATE" {
			n++
		}
	}
}

// Accounts are the node's /etc/passwd and /etc/group: root and nobody only. Nothing logs in;
// programs that look users up (the kubelet's user-namespace manager, runc resolving a
// container's "0:0") need the files to exist.
var Accounts = map[string]string{
	"/etc/passwd": "root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
	"/etc/group":  "root:x:0:\nnogroup:x:65534:\n",
}
