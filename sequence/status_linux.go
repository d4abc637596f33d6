package sequence

import (
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"

	"keel/config"
	"keel/disk"
	"keel/machine"
	"keel/netapi"
)

// status is GET /v1/status: what the boot found, the upgrade record (a copy of the
// executor's), the bootloader's entries, the mounts.
func (n *Node) status() netapi.Status {
	rec := n.exec.Record()
	n.mu.Lock()
	st := netapi.Status{
		Version:       n.opts.Version,
		BootedSlot:    string(n.booted),
		UptimeS:       machine.Uptime().Seconds(),
		InitRSSBytes:  machine.SelfRSS(),
		MemTotalBytes: machine.MemInfo("MemTotal"), MemAvailableBytes: machine.MemInfo("MemAvailable"),
		BootID:    n.bootID,
		BootCount: n.bootCount,
		Boot: netapi.BootTiming{
			KernelAtInitS: n.initAt.Seconds(), KernelAtReadyS: n.readyAt.Seconds(),
			InitToReadyS: (n.readyAt - n.initAt).Seconds(),
			Phases:       append([]netapi.Phase(nil), n.phases...),
		},
		Slots:         append([]netapi.SlotInfo(nil), n.slots...),
		Role:          n.cfg.Role,
		ControlPlane:  n.cfg.Etcd != nil,
		Kubernetes:    kubeStatus(n.cfg),
		Warnings:      append([]string(nil), n.warnings...),
		History:       rec.History,
		Rollbacks:     rec.Rollbacks,
		SlotsMeta:     rec.Slots,
		RollbackFloor: rec.Floor,
		Upgrade:       rec.Current,
	}
	for _, a := range n.addrs {
		st.Addresses = append(st.Addresses, a.String())
	}
	h := n.host
	st.Host = &netapi.HostStatus{CgroupControllers: h.controllers, CgroupMissing: h.missing, Sysctls: map[string]string{},
		MachineID: h.machineID, Nameservers: h.nameservers, Search: h.search, CACertificates: h.caCerts}
	for _, s := range h.sysctls {
		st.Host.Sysctls[s.Name] = s.Value
	}
	parts, drivers := n.parts, n.drivers
	n.mu.Unlock()
	if drivers != nil {
		st.Drivers = drivers.List()
	}
	if n.esp != nil {
		e := n.esp.Entries()
		st.CommittedSlot, st.NextSlot, st.TrialTries = string(e.Committed), string(e.Next), e.Tries
	}
	if n.etcd != nil {
		for _, s := range n.etcd.Snapshots() {
			st.EtcdSnapshots = append(st.EtcdSnapshots, netapi.EtcdSnapshot{Name: filepath.Base(s.File), File: s.File, Member: s.Member,
				UpgradeID: s.UpgradeID, Revision: s.Revision, EtcdVersion: s.EtcdVersion, Size: s.Size, SHA256: s.SHA256, TakenAt: s.TakenAt})
		}
	}
	if n.kube != nil {
		if d := n.kube.Drained(); d != nil {
			st.Drain = &netapi.DrainProgress{UpgradeID: d.UpgradeID, PodsLeft: d.PodsLeft, LastEvicted: d.LastEvicted}
		}
	}
	mountOf := map[string]mounted{}
	for _, m := range n.mounts.list() {
		mountOf[m.part] = m
	}
	for _, name := range []string{disk.PartEFI, disk.PartBootA, disk.PartBootB, disk.PartMeta, disk.PartState, disk.PartEphemeral} {
		d, ok := parts[name]
		if !ok {
			continue
		}
		m := mountOf[name]
		st.Partitions = append(st.Partitions, netapi.Partition{
			Name: name, Device: d.Dev, SizeBytes: d.Size, Mountpoint: m.target, CleanAtMount: m.clean, FSUUID: m.uuid,
		})
	}
	if sup := n.supervisor(); sup != nil {
		st.Services = sup.Status()
	}
	return st
}

func (n *Node) version() netapi.Version {
	var u unix.Utsname
	_ = unix.Uname(&u)
	return netapi.Version{Version: n.opts.Version, GoVersion: runtime.Version(), Kernel: unix.ByteSliceToString(u.Release[:])}
}

func kubeStatus(c config.Config) string {
	if c.Kubernetes == nil {
		return "not configured: the upgrade skips cordon and drain"
	}
	return "node " + c.Kubernetes.NodeName
}
