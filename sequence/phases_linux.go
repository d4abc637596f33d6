package sequence

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"keel/boot"
	"keel/config"
	"keel/disk"
	"keel/host"
	"keel/install"
	"keel/internal/fault"
	"keel/journal"
	"keel/machine"
	"keel/netapi"
	"keel/network"
)

// phase is one step of the boot: timed, reported as an event and in status. A fatal phase's
// error ends the boot (the init exits, the kernel panics, panic=1 reboots); any other's is a
// warning and the boot goes on: a node must reach its endpoint whenever it can.
type phase struct {
	name  string
	fatal bool
	run   func(context.Context) error
}

// bootPhases are the boot of an installed node, in order, after the early phases (the mounts,
// the command line, the drivers, the consoles) that install mode shares. STATE comes before
// META: the upgrade's executor needs the node's configuration, and what a boot may have to
// redo first (re-making EPHEMERAL, clearing a trial) never touches STATE. The host's
// preparation for containers (prepare_linux.go) runs between them, and its name resolution
// once the network is up.
func (n *Node) bootPhases() []phase {
	return []phase{
		{"partitions", true, n.findPartitions},
		{"bootloader", false, n.readBootloader},
		{"state", true, n.mountState},
		{"accounts", false, n.accounts},
		{"machine-id", false, n.machineID},
		{"ca-certificates", false, n.caCertificates},
		{"cgroups", false, n.cgroups},
		{"container-modules", false, n.containerModules},
		{"sysctls", false, n.sysctls},
		{"meta", false, n.bootMeta},
		{"slots", false, n.readSlots},
		{"system", false, n.mountSystem},
		{"ephemeral", false, n.mountEphemeral},
		{"fault", false, n.injectFault},
		{"network", false, n.network},
		{"names", false, n.names},
		{"api", false, n.serveAPI},
		{"services", false, n.startServices},
	}
}

func (n *Node) runPhase(ctx context.Context, p phase) error {
	t0 := machine.Uptime()
	err := p.run(ctx)
	d := machine.Uptime() - t0
	rec := netapi.Phase{Name: p.name, DurationS: d.Seconds()}
	data := map[string]any{"duration_s": d.Seconds()}
	if err != nil {
		rec.Error = err.Error()
		data["error"] = err.Error()
	}
	n.mu.Lock()
	n.phases = append(n.phases, rec)
	n.mu.Unlock()
	n.publish("boot", p.name, "phase done", data)
	switch {
	case err != nil && p.fatal:
		n.log.Error("boot phase failed", "phase", p.name, "err", err, "took", d.Round(time.Millisecond))
		return fmt.Errorf("%w: %s: %w", ErrFatal, p.name, err)
	case err != nil:
		n.warn("boot phase %s: %v", p.name, err)
	default:
		n.log.Info("boot phase done", "phase", p.name, "took", d.Round(time.Millisecond))
	}
	return nil
}

// Boot brings the node up to serving its endpoint, prints the ready line, and lets the upgrade
// executor go on with what this boot means (a trial, a commit, obligations). An error wraps
// ErrFatal.
func (n *Node) Boot(ctx context.Context) error {
	early := []phase{
		{"mount-early", true, n.mountEarly},
		{"cmdline", false, n.readCmdline},
		{"modules", false, n.loadModules},
		{"consoles", false, n.consoles},
	}
	for _, p := range early {
		if err := n.runPhase(ctx, p); err != nil {
			return err
		}
	}
	if n.installing() {
		for _, p := range n.installPhases() {
			if err := n.runPhase(ctx, p); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range n.bootPhases() {
		if err := n.runPhase(ctx, p); err != nil {
			return err
		}
	}
	n.mu.Lock()
	n.readyAt = machine.Uptime()
	r := Ready{
		Version: n.opts.Version, Slot: string(n.booted), BootID: n.bootID,
		KernelAtInitS: n.initAt.Seconds(), KernelAtReadyS: n.readyAt.Seconds(), Warnings: len(n.warnings),
	}
	for _, a := range n.addrs {
		r.Endpoint = append(r.Endpoint, "https://"+net.JoinHostPort(a.Addr().String(), fmt.Sprint(n.cfg.APIPort())))
	}
	n.mu.Unlock()
	n.log.Info("ready", "version", r.Version, "slot", r.Slot, "init_to_ready", time.Duration((r.KernelAtReadyS-r.KernelAtInitS)*float64(time.Second)).Round(time.Millisecond))
	fmt.Fprintln(n.opts.Console, r.Line())
	fmt.Fprintf(n.opts.Console, "keel: %s ready (slot %s); endpoint %s (mTLS)\n", r.Version, r.Slot, strings.Join(r.Endpoint, " "))
	n.publish("boot", "ready", "ready", map[string]any{"version": r.Version, "slot": r.Slot, "init_to_ready_s": r.KernelAtReadyS - r.KernelAtInitS})
	if n.exec != nil {
		n.exec.Ready()
	}
	return nil
}

func (n *Node) mountEarly(context.Context) error {
	for _, m := range machine.EarlyMounts {
		if err := m.Do(); err != nil {
			return err
		}
	}
	if err := machine.DisableCtrlAltDel(); err != nil {
		n.warn("ctrl-alt-del stays a hard reboot: %v", err)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		n.mu.Lock()
		n.bootID = strings.TrimSpace(string(b))
		n.mu.Unlock()
	}
	return nil
}

func (n *Node) readCmdline(context.Context) error {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	c := boot.ParseCmdline(string(b))
	s, err := c.BootedSlot()
	n.mu.Lock()
	n.cmdline, n.booted = c, s
	n.mu.Unlock()
	if install.Requested(c) {
		return nil // not booted by GRUB: no slot
	}
	return err
}

// consoles is a console that can write to more devices (machine.Console).
type consoles interface {
	Attach(devs []string, open func(string) (io.WriteCloser, error)) []error
}

// openConsole opens a console device for writing, waiting a moment for its node (a driver
// just loaded makes it asynchronously). Non-blocking, written with write(2) itself (os.File
// would park a writer on the poller): a screen stopped with Ctrl-S or Scroll Lock drops what
// it cannot take instead of stopping PID 1's log.
func openConsole(dev string) (io.WriteCloser, error) {
	for i := 0; ; i++ {
		fd, err := unix.Open(dev, unix.O_WRONLY|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			return rawConsole(fd), nil
		}
		if !errors.Is(err, unix.ENOENT) || i == 20 {
			return nil, fmt.Errorf("console %s: %w", dev, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rawConsole is a console device's non-blocking descriptor.
type rawConsole int

func (c rawConsole) Write(b []byte) (int, error) {
	n, err := unix.Write(int(c), b)
	if errors.Is(err, unix.EAGAIN) {
		return len(b), nil // dropped: the console is not taking output
	}
	return n, err
}

func (c rawConsole) Close() error { return unix.Close(int(c)) }

// consoles makes the init write to every console= device (a screen and a serial line), once
// the drivers are loaded (a virtio console appears with its module).
func (n *Node) consoles(context.Context) error {
	con, ok := n.opts.Console.(consoles)
	if !ok {
		return nil
	}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	active, _ := os.ReadFile("/sys/class/tty/console/active")
	return errors.Join(con.Attach(machine.ExtraConsoles(string(b), string(active)), openConsole)...)
}

// loadModules loads the base modules, then the drivers the devices ask for (coldplug), and
// goes on loading drivers for devices that appear later (hotplug).
func (n *Node) loadModules(ctx context.Context) error {
	loaded, errs := machine.LoadModules(n.opts.Modules)
	d, err := machine.OpenDrivers()
	if err != nil {
		// No alias file or no uevent socket: load every driver carried rather than none (the
		// disk would not be found).
		_, more := machine.LoadModules(machine.HardwareModules)
		return errors.Join(append(append(errs, err), more...)...)
	}
	n.mu.Lock()
	n.drivers = d
	n.mu.Unlock()
	err = d.Coldplug()
	var names []string
	for _, dr := range d.List() {
		names = append(names, dr.Module)
	}
	n.log.Info("modules loaded", "base", loaded, "failed", len(errs), "drivers", names)
	d.Loaded = func(dr machine.Driver) {
		n.log.Info("driver loaded for a new device", "module", dr.Module, "device", dr.Device, "err", dr.Error)
		n.publish("driver", dr.Module, "loaded for "+dr.Device, map[string]any{"modalias": dr.Modalias, "error": dr.Error})
	}
	go d.Hotplug(context.WithoutCancel(ctx))
	return errors.Join(append(errs, err)...)
}

func (n *Node) findPartitions(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.opts.PartitionWait)
	defer cancel()
	parts, err := disk.WaitPartitions(ctx, "/sys", disk.PartEFI, disk.PartBootA, disk.PartBootB,
		disk.PartMeta, disk.PartState, disk.PartEphemeral)
	n.mu.Lock()
	n.parts = parts
	n.mu.Unlock()
	return err
}

// readBootloader mounts the ESP read-only and reads grubenv: which slot is committed and
// whether a slot is under trial (with the tries GRUB has left of it).
func (n *Node) readBootloader(context.Context) error {
	esp := n.partition(disk.PartEFI)
	if err := (machine.Mount{Source: esp.Dev, Target: MountESP, FSType: "vfat", Flags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC}).Do(); err != nil {
		return err
	}
	n.mounts.add(mounted{part: disk.PartEFI, target: MountESP})
	e, err := boot.OpenESP(esp.Dev, MountESP)
	if err != nil {
		return err // n.esp stays nil: upgrades are refused, they could not arm or commit
	}
	n.esp = e
	if b, ent := n.bootedSlot(), e.Entries(); b != "" && b != ent.Committed && ent.Next == "" {
		n.log.Info("booted slot differs from the committed slot", "booted", b, "committed", ent.Committed)
	}
	return nil
}

// readSlots reads each slot's manifest (mounting it read-only for a moment) so status can say
// which version each slot holds.
func (n *Node) readSlots(ctx context.Context) error {
	var errs []error
	var infos []netapi.SlotInfo
	for _, s := range []boot.Slot{boot.SlotA, boot.SlotB} {
		info := netapi.SlotInfo{Slot: string(s)}
		m, err := disk.ReadSlot(ctx, n.partition(s.Partition()).Dev, filepath.Join(slotMountDir, string(s)), false)
		switch {
		case errors.Is(err, disk.ErrSlotEmpty):
			info.Error = err.Error()
		case err != nil:
			info.Error = err.Error()
			errs = append(errs, fmt.Errorf("slot %s: %w", s, err))
		default:
			info.Version = m.Version
		}
		infos = append(infos, info)
	}
	n.mu.Lock()
	n.slots = infos
	n.mu.Unlock()
	return errors.Join(errs...)
}

// mountSystem mounts the booted slot read-only and loop-mounts its system image at
// disk.SystemDir: the programs the node supervises (etcd, containerd, the kubelet) live there,
// not in RAM. Both stay mounted until the shutdown; an upgrade writes the other slot. A slot
// without a system image (built without node binaries) is not an error: it runs no such
// services.
func (n *Node) mountSystem(context.Context) error {
	slot := n.bootedSlot()
	if slot == "" {
		return errors.New("booted slot unknown: no system image")
	}
	part := slot.Partition()
	dev := n.partition(part).Dev
	if err := (machine.Mount{Source: dev, Target: bootedSlotDir, FSType: "vfat", Flags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV}).Do(); err != nil {
		return fmt.Errorf("slot %s: %w", slot, err)
	}
	img := filepath.Join(bootedSlotDir, disk.SystemImageName)
	if _, err := os.Stat(img); errors.Is(err, os.ErrNotExist) {
		n.log.Info("slot has no system image", "slot", slot)
		return machine.Unmount(bootedSlotDir, time.Second)
	}
	n.mounts.add(mounted{part: part, target: bootedSlotDir})
	if err := disk.MountSystem(img, disk.SystemDir); err != nil {
		return err
	}
	n.mounts.add(mounted{part: part, target: disk.SystemDir})
	return nil
}

func (n *Node) mountState(context.Context) error {
	if err := n.mountExt4(disk.PartState, MountState); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(MountState, config.FileName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	cfg, err := config.Parse(b)
	if err != nil {
		// A broken config must not make the node unreachable: what could be read (defaults
		// where the JSON did not decode), loudly. An etcd section that fails its own checks
		// is dropped: etcd not running beats etcd running open (http without insecure).
		if cfg.Etcd != nil && cfg.Etcd.Validate() != nil {
			cfg.Etcd = nil
			n.warn("%s: the etcd section is invalid: this node does not run etcd until it is fixed", config.FileName)
		}
		n.warn("%s: %v; booting with what could be read, defaults for the rest", config.FileName, err)
	}
	n.mu.Lock()
	n.cfg = cfg
	n.mu.Unlock()
	if err := unix.Sethostname([]byte(cfg.HostnameOrDefault())); err != nil {
		n.warn("sethostname: %v", err)
	}
	return nil
}

func (n *Node) mountEphemeral(context.Context) error {
	if u := n.exec.Record().Current; u != nil && u.Wipe {
		// The boot's re-wipe failed (it is retried): what EPHEMERAL holds is half made.
		return fmt.Errorf("EPHEMERAL is half made: its wipe (upgrade %s) failed and is retried; /var is not mounted this boot", u.ID)
	}
	if err := n.mountExt4(disk.PartEphemeral, MountEphemeral); err != nil {
		return err
	}
	if err := n.recordBoot(); err != nil {
		return err
	}
	n.startJournal()
	return nil
}

// startJournal keeps this boot's logs on EPHEMERAL: the init's from its first line (the ring
// holds them) and every service's. A failure keeps them in memory only, and says so.
func (n *Node) startJournal() {
	n.mu.Lock()
	info := journal.Info{Version: n.opts.Version, Slot: string(n.booted), Started: time.Now().UTC()}
	id := n.bootID
	n.mu.Unlock()
	j, err := journal.Start(JournalDir, id, info, journal.Options{Log: n.log})
	if err != nil {
		n.warn("this boot's logs are kept in memory only: %v", err)
		return
	}
	if n.opts.InitLog != nil {
		j.Follow(n.opts.InitLog, "init")
	}
	n.mu.Lock()
	n.journal = j
	n.mu.Unlock()
}

// closeJournal flushes and closes the logs kept on EPHEMERAL: before it is unmounted. Later
// lines stay in memory only.
func (n *Node) closeJournal() {
	n.mu.Lock()
	j := n.journal
	n.journal = nil
	n.mu.Unlock()
	if j != nil {
		j.Close()
	}
}

// logJournal is this boot's journal, if its logs are being kept.
func (n *Node) logJournal() *journal.Journal {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.journal
}

// recordBoot appends this boot to BootLog and syncs it.
func (n *Node) recordBoot() error {
	if err := os.MkdirAll(filepath.Dir(BootLog), 0o755); err != nil {
		return err
	}
	prev, _ := os.ReadFile(BootLog)
	n.mu.Lock()
	n.bootCount = strings.Count(string(prev), "\n")
	line := fmt.Sprintf("%s slot=%s version=%s\n", n.bootID, n.booted, n.opts.Version)
	n.mu.Unlock()
	f, err := os.OpenFile(BootLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		return err
	}
	return f.Sync()
}

// injectFault sets up a test image's failure that needs the booted node.
func (n *Node) injectFault(context.Context) error {
	if n.opts.Fault != fault.BusyVar {
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

func (n *Node) network(ctx context.Context) error {
	n.mu.Lock()
	arg := n.cfg.Network.IP
	if v, ok := n.cmdline["ip"]; ok {
		arg = v
	}
	n.mu.Unlock()
	cfg, err := network.ParseIPArg(arg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := network.Up(ctx, cfg, n.log)
	n.mu.Lock()
	n.addrs = res.Addrs
	n.dns = host.Resolver{Nameservers: res.Nameservers, Search: res.Search}
	n.mu.Unlock()
	return err
}

func (n *Node) serveAPI(context.Context) error {
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
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", n.config().APIPort()))
	if err != nil {
		return err
	}
	srv, done := netapi.Serve(ln, netapi.New(netapi.Options{Node: &api{n}, Log: n.log, Metrics: n.metrics.Handler()}), cfg, n.log)
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
