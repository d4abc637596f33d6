package sequence

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"keel/boot"
	etcdnode "keel/cluster/etcd"
	"keel/cluster/kube"
	"keel/config"
	"keel/disk"
	"keel/disk/meta"
	"keel/events"
	"keel/machine"
	"keel/netapi"
	"keel/network"
	"keel/supervisor"
	"keel/upgrade"
)

// Where the node mounts things.
const (
	MountESP       = "/boot"
	MountState     = "/state"
	MountEphemeral = "/var"
	slotMountDir   = "/run/keel/slot"
	// BootLog is appended to on every boot (boot id, slot, version): it makes a lost /var or
	// a torn unmount visible from outside.
	BootLog = MountEphemeral + "/log/keel/boots.log"
	// PKIDir holds the endpoint's CA, certificate and key on STATE.
	PKIDir = MountState + "/pki"
)

// Options configure a Node.
type Options struct {
	Version string
	Log     *slog.Logger
	Console io.Writer // where the ready line goes (the init's stdout is the console)
	Modules []string  // kernel modules to load at boot
	// PartitionWait bounds the wait for the disk's partitions to appear.
	PartitionWait time.Duration
	// Fault is a test image's injected failure (empty in production).
	Fault Fault
	// InitLog is the init's own log ring (served as the "init" log); Events the event bus.
	InitLog *events.Ring
	Events  *events.Bus
}

// Node is the running machine as the init sees it.
type Node struct {
	opts   Options
	log    *slog.Logger
	Reaper *machine.Reaper

	mu        sync.Mutex
	initAt    time.Duration // kernel uptime when the init started
	readyAt   time.Duration
	phases    []netapi.Phase
	bootID    string
	cmdline   boot.Cmdline
	booted    boot.Slot
	entries   boot.Entries
	parts     map[string]disk.Device
	mounts    []mounted // in mount order; unmounted in reverse
	cfg       config.Config
	addrs     []netip.Prefix
	slots     []netapi.SlotInfo
	warnings  []string
	srv       *http.Server
	bootCount int
	goingDown bool

	// The upgrade: execMu serializes Step and its persisting; rec is guarded by mu for readers.
	execMu   sync.Mutex
	grubMu   sync.Mutex
	metaDev  *os.File
	store    *meta.Store
	rec      upgrade.Record
	bootActs []upgrade.Action // what this boot means for the upgrade, run once ready
	watchdog *machine.Watchdog

	sup           *supervisor.Supervisor
	kube          *kube.Client
	uncordonRetry bool
	drainProg     *netapi.DrainProgress
	pendingWipe   []string // partitions a reset re-makes during the shutdown

	etcd       *clientv3.Client   // to the cluster's endpoints (control-plane nodes)
	lockHeld   *etcdnode.Lock     // the upgrade lock, while this process keeps its lease alive
	cancelLock context.CancelFunc // ends a wait for the upgrade lock

	down     chan machine.Action
	downOnce sync.Once
}

type mounted struct {
	part, target string
	clean        *bool // ext4 health before mounting, nil for other filesystems
	uuid         string
}

// New returns a Node; initAt is the kernel uptime at which the init started.
func New(o Options, initAt time.Duration) *Node {
	if o.PartitionWait == 0 {
		o.PartitionWait = 10 * time.Second
	}
	return &Node{
		opts:   o,
		log:    o.Log,
		Reaper: machine.NewReaper(o.Log),
		initAt: initAt,
		down:   make(chan machine.Action, 1),
	}
}

// ErrFatal marks a boot failure the init cannot serve through: the caller exits, the kernel
// panics, and panic=N reboots (into the committed slot if this was a one-shot).
var ErrFatal = errors.New("fatal boot failure")

func (n *Node) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	n.log.Warn(msg)
	n.mu.Lock()
	n.warnings = append(n.warnings, msg)
	n.mu.Unlock()
}

// phase runs one timed step. A fatal step's error ends the boot.
func (n *Node) phase(name string, fatal bool, f func() error) error {
	t0 := machine.Uptime()
	err := f()
	d := machine.Uptime() - t0
	p := netapi.Phase{Name: name, DurationS: d.Seconds()}
	if err != nil {
		p.Error = err.Error()
	}
	n.mu.Lock()
	n.phases = append(n.phases, p)
	n.mu.Unlock()
	data := map[string]any{"duration_s": d.Seconds()}
	if err != nil {
		data["error"] = err.Error()
	}
	n.publish("boot", name, "phase done", data)
	switch {
	case err != nil && fatal:
		n.log.Error("boot phase failed", "phase", name, "err", err, "took", d.Round(time.Millisecond))
		return fmt.Errorf("%w: %s: %w", ErrFatal, name, err)
	case err != nil:
		n.warn("boot phase %s: %v", name, err)
	default:
		n.log.Info("boot phase done", "phase", name, "took", d.Round(time.Millisecond))
	}
	return nil
}

// Boot brings the node up to serving its endpoint. An error wraps ErrFatal.
func (n *Node) Boot(ctx context.Context) error {
	steps := []struct {
		name  string
		fatal bool
		f     func() error
	}{
		{"mount-early", true, n.mountEarly},
		{"cmdline", false, n.readCmdline},
		{"modules", false, n.loadModules},
		{"partitions", true, func() error { return n.findPartitions(ctx) }},
		{"bootloader", false, n.readBootloader},
		{"meta", false, n.bootMeta},
		{"slots", false, n.readSlots},
		{"state", true, n.mountState},
		{"ephemeral", false, n.mountEphemeral},
		{"fault", false, n.injectFault},
		{"network", false, func() error { return n.network(ctx) }},
		{"api", false, n.serveAPI},
		{"services", false, n.startServices},
	}
	for _, s := range steps {
		if err := n.phase(s.name, s.fatal, s.f); err != nil {
			return err
		}
	}
	n.mu.Lock()
	n.readyAt = machine.Uptime()
	r := Ready{
		Version: n.opts.Version, Slot: string(n.booted), BootID: n.bootID,
		KernelAtInitS: n.initAt.Seconds(), KernelAtReadyS: n.readyAt.Seconds(), Warnings: len(n.warnings),
	}
	n.mu.Unlock()
	n.log.Info("ready", "version", r.Version, "slot", r.Slot, "init_to_ready", (n.readyAt - n.initAt).Round(time.Millisecond))
	fmt.Fprintln(n.opts.Console, r.Line())
	n.publish("boot", "ready", "ready", map[string]any{"version": r.Version, "slot": r.Slot, "init_to_ready_s": r.KernelAtReadyS - r.KernelAtInitS})
	if len(n.bootActs) > 0 {
		go n.runActions(ctx, n.bootActs)
	}
	return nil
}

// bootMeta reads the upgrade record and tells the state machine which slot this boot is.
// Actions that must precede the mounts (re-wipe, disarm) run now; the rest (trial, commit,
// reboot back) once the node is ready.
func (n *Node) bootMeta() error {
	if err := n.openMeta(); err != nil {
		return err
	}
	acts, err := n.apply(upgrade.Booted{Slot: n.booted, Committed: n.entries.Committed, Now: now()})
	if err != nil {
		return err
	}
	for _, a := range acts {
		switch a {
		case upgrade.ActWipe, upgrade.ActDisarm:
			if ev := n.perform(context.Background(), a); ev != nil {
				n.warn("boot action %s: %+v", a, ev)
			}
		default:
			n.bootActs = append(n.bootActs, a)
		}
	}
	return nil
}

// injectFault sets up a test image's failure that needs the booted node.
func (n *Node) injectFault() error {
	if n.opts.Fault != FaultBusyVar {
		return nil
	}
	f := filepath.Join(MountEphemeral, "busy.img")
	if err := os.WriteFile(f, make([]byte, 1<<20), 0o600); err != nil {
		return err
	}
	dev, err := machine.AttachLoop(f)
	if err != nil {
		return err
	}
	n.log.Warn("fault injected: loop device keeps /var busy", "device", dev, "file", f)
	return nil
}

func (n *Node) mountEarly() error {
	for _, m := range machine.EarlyMounts {
		if err := m.Do(); err != nil {
			return err
		}
	}
	if err := machine.DisableCtrlAltDel(); err != nil {
		n.warn("ctrl-alt-del stays a hard reboot: %v", err)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		n.bootID = strings.TrimSpace(string(b))
	}
	return nil
}

func (n *Node) readCmdline() error {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	n.cmdline = boot.ParseCmdline(string(b))
	s, err := n.cmdline.BootedSlot()
	if err != nil {
		return err
	}
	n.booted = s
	return nil
}

func (n *Node) loadModules() error {
	loaded, errs := machine.LoadModules(n.opts.Modules)
	n.log.Info("modules loaded", "count", loaded, "failed", len(errs))
	return errors.Join(errs...)
}

func (n *Node) findPartitions(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.opts.PartitionWait)
	defer cancel()
	parts, err := disk.WaitPartitions(ctx, "/sys", disk.PartEFI, disk.PartBootA, disk.PartBootB,
		disk.PartMeta, disk.PartState, disk.PartEphemeral)
	n.parts = parts
	return err
}

// readBootloader mounts the ESP read-only and reads grubenv: which slot is committed and
// whether a one-shot is still armed (it should not be: GRUB clears it before booting).
func (n *Node) readBootloader() error {
	esp := n.parts[disk.PartEFI]
	if err := (machine.Mount{Source: esp.Dev, Target: MountESP, FSType: "vfat", Flags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC}).Do(); err != nil {
		return err
	}
	n.addMount(disk.PartEFI, MountESP, nil)
	env, err := boot.ReadEnvFile(filepath.Join(MountESP, "grub", "grubenv"))
	if err != nil {
		return err
	}
	n.entries, err = boot.EntriesOf(env)
	if err != nil {
		return err
	}
	if n.booted != "" && n.booted != n.entries.Committed && n.entries.Next == "" {
		n.log.Info("booted slot differs from the committed slot", "booted", n.booted, "committed", n.entries.Committed)
	}
	return nil
}

// readSlots reads each slot's manifest (mounting it read-only for a moment) so status can say
// which version each slot holds.
func (n *Node) readSlots() error {
	var errs []error
	for _, s := range []boot.Slot{boot.SlotA, boot.SlotB} {
		info := netapi.SlotInfo{Slot: string(s)}
		m, err := n.readSlot(s, false)
		if errors.Is(err, errSlotEmpty) {
			info.Error = err.Error()
		} else if err != nil {
			info.Error = err.Error()
			errs = append(errs, fmt.Errorf("slot %s: %w", s, err))
		} else {
			info.Version = m.Version
		}
		n.slots = append(n.slots, info)
	}
	return errors.Join(errs...)
}

// errSlotEmpty marks a slot partition that was never written (a fresh node's BOOT-B).
var errSlotEmpty = errors.New("empty: no filesystem")

// zeroStart reports whether the first sector of dev is all zeros (no boot sector).
func zeroStart(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b := make([]byte, 512)
	if _, err := io.ReadFull(f, b); err != nil {
		return false, err
	}
	for _, c := range b {
		if c != 0 {
			return false, nil
		}
	}
	return true, nil
}

// mountExt4 records the filesystem's health before mounting it (mounting changes it).
func (n *Node) mountExt4(part, target string) error {
	d := n.parts[part]
	var clean *bool
	uuid := ""
	if f, err := os.Open(d.Dev); err == nil {
		h, herr := disk.ReadExt4Health(f)
		f.Close()
		if herr != nil {
			return fmt.Errorf("%s (%s): %w", part, d.Dev, herr)
		}
		c := h.Clean()
		clean = &c
		uuid = h.UUID
		if !c {
			n.log.Warn("filesystem was not cleanly unmounted; the kernel replays its journal", "partition", part, "needs_recovery", h.NeedsRecovery, "errors", h.Errors)
		}
	}
	if err := (machine.Mount{Source: d.Dev, Target: target, FSType: "ext4", Flags: unix.MS_NOSUID | unix.MS_NODEV}).Do(); err != nil {
		return err
	}
	n.addMount(part, target, clean)
	n.mu.Lock()
	n.mounts[len(n.mounts)-1].uuid = uuid
	n.mu.Unlock()
	return nil
}

func (n *Node) addMount(part, target string, clean *bool) {
	n.mu.Lock()
	n.mounts = append(n.mounts, mounted{part: part, target: target, clean: clean})
	n.mu.Unlock()
}

func (n *Node) mountState() error {
	if err := n.mountExt4(disk.PartState, MountState); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(MountState, config.FileName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	cfg, err := config.Parse(b)
	if err != nil {
		// A broken config must not make the node unreachable: defaults, loudly.
		n.warn("%s: %v; using defaults", config.FileName, err)
	}
	n.cfg = cfg
	if err := unix.Sethostname([]byte(cfg.HostnameOrDefault())); err != nil {
		n.warn("sethostname: %v", err)
	}
	return nil
}

func (n *Node) mountEphemeral() error {
	if err := n.mountExt4(disk.PartEphemeral, MountEphemeral); err != nil {
		return err
	}
	return n.recordBoot()
}

// recordBoot appends this boot to BootLog and syncs it.
func (n *Node) recordBoot() error {
	if err := os.MkdirAll(filepath.Dir(BootLog), 0o755); err != nil {
		return err
	}
	prev, _ := os.ReadFile(BootLog)
	n.bootCount = strings.Count(string(prev), "\n")
	f, err := os.OpenFile(BootLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s slot=%s version=%s\n", n.bootID, n.booted, n.opts.Version); err != nil {
		return err
	}
	return f.Sync()
}

func (n *Node) network(ctx context.Context) error {
	arg := n.cfg.Network.IP
	if v, ok := n.cmdline["ip"]; ok {
		arg = v
	}
	cfg, err := network.ParseIPArg(arg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	addrs, err := network.Up(ctx, cfg, n.log)
	n.mu.Lock()
	n.addrs = addrs
	n.mu.Unlock()
	return err
}

func (n *Node) serveAPI() error {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(PKIDir, name))
		if err != nil {
			n.log.Error("api: missing key material", "file", name, "err", err)
		}
		return b
	}
	cfg, err := netapi.TLSConfig(read("ca.crt"), read("server.crt"), read("server.key"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", n.cfg.APIPort()))
	if err != nil {
		return err
	}
	srv, done := netapi.Serve(ln, netapi.New(netapi.Options{Node: n, Log: n.log}), cfg, n.log)
	n.mu.Lock()
	n.srv = srv
	n.mu.Unlock()
	go func() {
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("api: server stopped", "err", err)
		}
	}()
	n.log.Info("api: serving", "addr", ln.Addr().String())
	return nil
}

// Status implements netapi.Node.
func (n *Node) Status() netapi.Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := netapi.Status{
		Version:       n.opts.Version,
		BootedSlot:    string(n.booted),
		CommittedSlot: string(n.entries.Committed),
		NextSlot:      string(n.entries.Next),
		UptimeS:       machine.Uptime().Seconds(),
		InitRSSBytes:  machine.SelfRSS(),
		BootID:        n.bootID,
		BootCount:     n.bootCount,
		Boot: netapi.BootTiming{
			KernelAtInitS: n.initAt.Seconds(), KernelAtReadyS: n.readyAt.Seconds(),
			InitToReadyS: (n.readyAt - n.initAt).Seconds(),
			Phases:       append([]netapi.Phase(nil), n.phases...),
		},
		Slots:      append([]netapi.SlotInfo(nil), n.slots...),
		Role:       n.cfg.Role,
		Kubernetes: kubeStatus(n.cfg),
		Drain:      n.drainProg,
		Warnings:   append([]string(nil), n.warnings...),
		History:    n.rec.History,
		Rollbacks:  n.rec.Rollbacks,
		SlotsMeta:  n.rec.Slots,
	}
	if n.rec.Current != nil {
		u := *n.rec.Current
		st.Upgrade = &u
	}
	for _, a := range n.addrs {
		st.Addresses = append(st.Addresses, a.String())
	}
	mountOf := map[string]mounted{}
	for _, m := range n.mounts {
		mountOf[m.part] = m
	}
	for _, name := range []string{disk.PartEFI, disk.PartBootA, disk.PartBootB, disk.PartMeta, disk.PartState, disk.PartEphemeral} {
		d, ok := n.parts[name]
		if !ok {
			continue
		}
		m := mountOf[name]
		st.Partitions = append(st.Partitions, netapi.Partition{
			Name: name, Device: d.Dev, SizeBytes: d.Size, Mountpoint: m.target, CleanAtMount: m.clean, FSUUID: m.uuid,
		})
	}
	return st
}

// Version implements netapi.Node.
func (n *Node) Version() netapi.Version {
	var u unix.Utsname
	_ = unix.Uname(&u)
	return netapi.Version{Version: n.opts.Version, GoVersion: runtime.Version(), Kernel: unix.ByteSliceToString(u.Release[:])}
}

// ErrShuttingDown answers a second power request.
var ErrShuttingDown = errors.New("the node is already shutting down")

func (n *Node) request(a machine.Action, reason string) error {
	err := ErrShuttingDown
	n.downOnce.Do(func() {
		n.mu.Lock()
		n.goingDown = true
		n.mu.Unlock()
		n.log.Info("power request", "action", a.String(), "reason", reason)
		n.publish("power", a.String(), reason, nil)
		n.down <- a
		err = nil
	})
	return err
}

// Reboot implements netapi.Node.
func (n *Node) Reboot(reason string) error { return n.request(machine.ActionReboot, reason) }

// Shutdown implements netapi.Node.
func (n *Node) Shutdown(reason string) error { return n.request(machine.ActionPowerOff, reason) }

// PowerRequests delivers the one accepted power request.
func (n *Node) PowerRequests() <-chan machine.Action { return n.down }

func kubeStatus(c config.Config) string {
	if c.Kubernetes == nil {
		return "not configured: the upgrade skips cordon and drain"
	}
	return "node " + c.Kubernetes.NodeName
}
