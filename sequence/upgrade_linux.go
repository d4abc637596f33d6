package sequence

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"keel/boot"
	"keel/disk"
	"keel/disk/meta"
	"keel/installer"
	"keel/machine"
	"keel/netapi"
	"keel/upgrade"
)

// upgradeDir holds the pulled slot image: tmpfs, so EPHEMERAL is never touched before the
// point of no return (preserve=true keeps it byte for byte).
const upgradeDir = "/run/keel/upgrade"

// Fault names a failure baked into a test image at build time (-X main.fault=...), to reach
// failures a real part cannot produce on demand. Production images have none.
type Fault string

// Faults.
const (
	FaultExitAtStart Fault = "exit-at-start" // the init exits at once: kernel panic
	FaultHangInTrial Fault = "hang-in-trial" // arm the watchdog in a trial, then hang
	FaultHealthFail  Fault = "health-fail"   // a health gate fails in a trial
	FaultBusyVar     Fault = "busy-var"      // a loop device on a file in /var keeps it busy
	FaultSlowTrial   Fault = "slow-trial"    // a health gate takes 15 s (a window to cut power in)
	// FaultBenchWrite is for the slot-write benchmark: before writing a slot, write the same
	// bytes to the same partition with dd oflag=direct (packed in the image) and time both.
	FaultBenchWrite Fault = "bench-write"
	// FaultHangInReboot: after the ordered shutdown, hang instead of calling reboot(2), as a
	// kernel that locks up on its way down (seen under TCG: soft lockups after reboot(2)).
	FaultHangInReboot Fault = "hang-in-reboot"
)

// openMeta reads the record; a META that holds no valid copy is reset (with a warning)
// rather than trusted: no state can be inferred from it.
func (n *Node) openMeta() error {
	dev := n.parts[disk.PartMeta].Dev
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	n.metaDev = f
	st, payload, err := meta.Open(f)
	if errors.Is(err, meta.ErrNoValidCopy) {
		n.warn("META: %v; starting a new record", err)
		if err := st.Reset(); err != nil {
			return err
		}
		payload = nil
	} else if err != nil {
		return err
	}
	n.store = st
	rec, err := upgrade.Decode(payload)
	if err != nil {
		n.warn("META: %v; starting a new record", err)
		rec = upgrade.Record{}
	}
	n.rec = rec
	return nil
}

// apply steps the state machine and persists the result before returning the actions: no
// effect starts before its state is on disk.
func (n *Node) apply(ev upgrade.Event) ([]upgrade.Action, error) {
	n.execMu.Lock()
	defer n.execMu.Unlock()
	rec, acts, err := upgrade.Step(n.rec, ev)
	if err != nil {
		return nil, err
	}
	b, err := rec.Encode()
	if err != nil {
		return nil, err
	}
	if err := n.store.Write(b); err != nil {
		return nil, fmt.Errorf("persist upgrade record: %w", err)
	}
	prev := n.rec.Current
	n.mu.Lock()
	n.rec = rec
	n.mu.Unlock()
	if p, ok := ev.(upgrade.Progressed); ok {
		n.publish("upgrade", rec.Current.ID, "progress", map[string]any{"written": p.Written, "total": p.Total})
	}
	if u := rec.Current; u != nil && (prev == nil || prev.State != u.State || prev.ID != u.ID) {
		n.publish("upgrade", u.ID, string(u.State), map[string]any{"reason": u.Reason, "image": u.Image, "to_version": u.ToVersion})
		n.log.Info("upgrade: state", "id", u.ID, "state", string(u.State), "reason", u.Reason)
		// One line per state change on the console, for people and for tests that cut the
		// power at a given state.
		fmt.Fprintf(n.opts.Console, "keel-upgrade id=%s state=%s\n", u.ID, u.State)
	}
	return acts, nil
}

// runActions performs actions in order, feeding each outcome back through apply.
func (n *Node) runActions(ctx context.Context, acts []upgrade.Action) {
	for len(acts) > 0 {
		a := acts[0]
		acts = acts[1:]
		ev := n.perform(ctx, a)
		if ev == nil {
			continue
		}
		more, err := n.apply(ev)
		if err != nil {
			n.log.Error("upgrade: step refused", "action", string(a), "err", err)
			return
		}
		acts = append(more, acts...)
	}
}

func now() time.Time { return time.Now().UTC() }

// perform runs one action and returns the event it produced (nil for none).
func (n *Node) perform(ctx context.Context, a upgrade.Action) upgrade.Event {
	n.mu.Lock()
	u := *n.rec.Current
	n.mu.Unlock()
	fail := func(format string, args ...any) upgrade.Event {
		reason := fmt.Sprintf(format, args...)
		n.log.Error("upgrade: step failed", "action", string(a), "reason", reason)
		return upgrade.Failed{Reason: reason, Now: now()}
	}
	switch a {
	case upgrade.ActPull:
		p, err := n.pull(ctx, u)
		if err != nil {
			return fail("pull %s: %v", u.Image, err)
		}
		return upgrade.Pulled{Digest: p.Digest, ToVersion: p.Manifest.Version, SlotSHA256: p.Manifest.SlotSHA256, SlotSize: p.Manifest.SlotSize, Now: now()}
	case upgrade.ActLock:
		return n.lock(ctx, u)
	case upgrade.ActCheck:
		return n.check(ctx, u)
	case upgrade.ActLeave:
		return n.leave(ctx, u)
	case upgrade.ActKeepLease:
		return n.resumeLease(ctx, u)
	case upgrade.ActRejoin:
		return n.rejoin(ctx)
	case upgrade.ActRelease:
		return n.release(ctx, u)
	case upgrade.ActCordon:
		return n.cordon(ctx)
	case upgrade.ActDrain:
		return n.drain(ctx, u)
	case upgrade.ActUncordon:
		return n.uncordon(ctx)
	case upgrade.ActStop:
		if err := n.quiesce(); err != nil {
			return fail("%v", err)
		}
		return upgrade.Completed{Now: now()}
	case upgrade.ActWriteSlot:
		if err := n.writeSlot(u); err != nil {
			return fail("write slot %s: %v", u.ToSlot, err)
		}
		return upgrade.Completed{Now: now()}
	case upgrade.ActWipe:
		if err := n.wipeEphemeral(); err != nil {
			return fail("wipe %s: %v", disk.PartEphemeral, err)
		}
		return upgrade.Completed{Now: now()}
	case upgrade.ActArm:
		if err := n.editGrubenv(setKeys(boot.KeyNextEntry, string(u.ToSlot))); err != nil {
			return fail("arm boot-once %s: %v", u.ToSlot, err)
		}
		return upgrade.Completed{Now: now()}
	case upgrade.ActDisarm:
		if err := n.editGrubenv(setKeys(boot.KeyNextEntry, "")); err != nil {
			n.warn("clear boot-once: %v", err)
		}
		return nil
	case upgrade.ActReboot:
		n.request(machine.ActionReboot, fmt.Sprintf("upgrade %s: boot slot %s once", u.ID, u.ToSlot))
		return nil
	case upgrade.ActRebootCurrent:
		n.request(machine.ActionReboot, fmt.Sprintf("upgrade %s %s: back to the committed slot", u.ID, u.State))
		return nil
	case upgrade.ActTrial:
		return n.trial(ctx, u)
	case upgrade.ActCommit:
		if err := n.editGrubenv(setKeys(boot.KeySavedEntry, string(u.ToSlot), boot.KeyNextEntry, "")); err != nil {
			// Not committed: the trial fails, and the next boot is the old slot.
			return upgrade.Health{OK: false, Reason: "commit: " + err.Error(), Now: now()}
		}
		return upgrade.Completed{Now: now()}
	case upgrade.ActFinish:
		n.mu.Lock()
		wd := n.watchdog
		n.watchdog = nil
		n.mu.Unlock()
		if wd != nil {
			if err := wd.Disarm(); err != nil {
				n.warn("%v", err)
			}
		}
		n.log.Info("upgrade: done", "id", u.ID, "version", u.ToVersion, "slot", string(u.ToSlot))
		return nil
	}
	n.log.Error("upgrade: unknown action", "action", string(a))
	return nil
}

func (n *Node) policy(u upgrade.Upgrade) (installer.Policy, bool) {
	cfg := n.cfg.Upgrade
	p := installer.Policy{Arch: runtime.GOARCH, AllowUnsigned: cfg.AllowUnsigned, MaxSlotSize: n.parts[u.ToSlot.Partition()].Size}
	for _, k := range cfg.TrustedKeys {
		if pk, err := installer.DecodePublicKey(k); err == nil {
			p.TrustedKeys = append(p.TrustedKeys, ed25519.PublicKey(pk))
		}
	}
	insecure := false
	for _, r := range cfg.InsecureRegistries {
		if strings.HasPrefix(u.Image, r+"/") {
			insecure = true
		}
	}
	return p, insecure
}

func (n *Node) pull(ctx context.Context, u upgrade.Upgrade) (installer.Pulled, error) {
	if err := os.MkdirAll(upgradeDir, 0o700); err != nil {
		return installer.Pulled{}, err
	}
	p, insecure := n.policy(u)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	return installer.Pull(ctx, u.Image, p, installer.PullOptions{
		Insecure: insecure,
		Dest:     filepath.Join(upgradeDir, "slot.img"),
		Progress: func(done, total int64) {
			n.log.Info("upgrade: pulling", "bytes", done, "total", total)
		},
	})
}

// quiesce stops the services and whatever else uses STATE and EPHEMERAL, and unmounts them.
func (n *Node) quiesce() error {
	n.stopServices()
	mounts := []string{MountEphemeral, MountState}
	if k := machine.KillHolders(5*time.Second, n.Reaper.ReapOnce, mounts...); k > 0 {
		n.log.Warn("upgrade: processes needed SIGKILL", "count", k)
	}
	machine.Sync()
	for _, m := range mounts {
		if err := machine.Unmount(m, 5*time.Second); err != nil {
			return fmt.Errorf("%w (still in use after killing every process holding it)", err)
		}
		n.dropMount(m)
	}
	return nil
}

func (n *Node) dropMount(target string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, m := range n.mounts {
		if m.target == target {
			n.mounts = append(n.mounts[:i], n.mounts[i+1:]...)
			return
		}
	}
}

// writeSlot streams the pulled slot image onto the inactive partition while hashing it,
// syncs, drops the device's cache, then re-reads the written bytes and checks the digest.
func (n *Node) writeSlot(u upgrade.Upgrade) error {
	if u.ToSlot == n.booted || u.ToSlot == n.entries.Committed {
		return fmt.Errorf("refusing to write slot %s: it is the booted or committed slot", u.ToSlot)
	}
	src, err := os.Open(filepath.Join(upgradeDir, "slot.img"))
	if err != nil {
		return err
	}
	defer src.Close()
	dev := n.parts[u.ToSlot.Partition()].Dev
	if n.opts.Fault == FaultBenchWrite {
		t0 := time.Now()
		out, err := exec.Command("/bin/dd", "if="+src.Name(), "of="+dev, "bs=4M", "oflag=direct").CombinedOutput()
		if err != nil {
			return fmt.Errorf("bench dd: %v: %s", err, out)
		}
		fmt.Fprintf(n.opts.Console, "keel-bench dd_oflag_direct_s=%.3f bytes=%d\n", time.Since(t0).Seconds(), u.SlotSize)
	}
	// O_DIRECT: the bytes go to the disk as they are written, not into a page cache that
	// fsync then has to flush (measured here: 5x slower under QEMU). The buffer is aligned
	// as O_DIRECT requires; a tail that is not a whole sector is written without it.
	dst, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer dst.Close()
	h := sha256.New()
	buf := alignedBuffer(4<<20, 4096)
	var written int64
	var hashTime time.Duration
	last := time.Now()
	t0 := time.Now()
	for {
		k, rerr := io.ReadFull(src, buf)
		if k > 0 {
			chunk := buf[:k]
			if k%512 != 0 {
				if err := writeTail(dev, written, chunk); err != nil {
					return err
				}
			} else if _, err := dst.WriteAt(chunk, written); err != nil {
				return fmt.Errorf("write %s at %d: %w", dev, written, err)
			}
			th := time.Now()
			h.Write(chunk)
			hashTime += time.Since(th)
			written += int64(k)
			if time.Since(last) > 250*time.Millisecond {
				last = time.Now()
				if _, err := n.apply(upgrade.Progressed{Written: written, Total: u.SlotSize, Now: now()}); err != nil {
					n.log.Warn("upgrade: progress", "err", err)
				}
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if written != u.SlotSize || hex.EncodeToString(h.Sum(nil)) != u.SlotSHA256 {
		return fmt.Errorf("source changed: %d bytes, want %d with the pulled digest", written, u.SlotSize)
	}
	if err := dst.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dev, err)
	}
	took := time.Since(t0)
	if n.opts.Fault == FaultBenchWrite {
		fmt.Fprintf(n.opts.Console, "keel-bench slot_write_s=%.3f hash_s=%.3f bytes=%d\n", took.Seconds(), hashTime.Seconds(), written)
	}
	// Read back from the device, not from the page cache.
	if err := unix.IoctlSetInt(int(dst.Fd()), unix.BLKFLSBUF, 0); err != nil {
		n.log.Warn("upgrade: BLKFLSBUF", "err", err)
	}
	rd, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer rd.Close()
	unix.Fadvise(int(rd.Fd()), 0, u.SlotSize, unix.FADV_DONTNEED)
	vh := sha256.New()
	if _, err := io.CopyBuffer(vh, io.LimitReader(rd, u.SlotSize), buf); err != nil {
		return fmt.Errorf("re-read %s: %w", dev, err)
	}
	if got := hex.EncodeToString(vh.Sum(nil)); got != u.SlotSHA256 {
		return fmt.Errorf("re-read of %s: sha256 %s, wrote %s", dev, got, u.SlotSHA256)
	}
	n.log.Info("upgrade: slot written and verified", "slot", string(u.ToSlot), "bytes", written,
		"write_s", took.Seconds(), "mib_per_s", float64(written)/(1<<20)/took.Seconds())
	os.Remove(filepath.Join(upgradeDir, "slot.img"))
	return nil
}

// alignedBuffer returns size bytes starting at an align boundary (O_DIRECT needs it).
func alignedBuffer(size, align int) []byte {
	b := make([]byte, size+align)
	off := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) & uintptr(align-1)); r != 0 {
		off = align - r
	}
	return b[off : off+size]
}

// writeTail writes a last chunk that is not a whole number of sectors, without O_DIRECT.
func writeTail(dev string, off int64, b []byte) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		return fmt.Errorf("write %s at %d: %w", dev, off, err)
	}
	return f.Sync()
}

func (n *Node) wipeEphemeral() error {
	dev := n.parts[disk.PartEphemeral].Dev
	machine.Unmount(MountEphemeral, 5*time.Second)
	n.dropMount(MountEphemeral)
	cmd := exec.Command("/sbin/mke2fs", "-q", "-t", "ext4", "-F", "-L", disk.PartEphemeral, dev)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mke2fs %s: %w: %s", dev, err, out)
	}
	return nil
}

// trial runs on the new slot's first boot: arm the watchdog, run the health gates.
func (n *Node) trial(ctx context.Context, u upgrade.Upgrade) upgrade.Event {
	cfg := n.cfg.Upgrade
	wd, err := machine.ArmWatchdog("/dev/watchdog", time.Duration(cfg.WatchdogTimeout())*time.Second)
	if err != nil {
		n.warn("trial without a hardware watchdog: %v", err)
	} else {
		n.mu.Lock()
		n.watchdog = wd
		n.mu.Unlock()
		n.log.Info("upgrade: watchdog armed", "timeout_s", cfg.WatchdogTimeout())
	}
	if n.opts.Fault == FaultHangInTrial && wd != nil {
		n.log.Warn("fault injected: hanging in the trial boot")
		wd.Hang()
		select {} // the watchdog resets the machine
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(cfg.TrialTimeout())*time.Second)
	defer cancel()
	for _, g := range n.gates() {
		if err := g.check(ctx); err != nil {
			n.log.Error("upgrade: health gate failed", "gate", g.name, "err", err)
			return upgrade.Health{OK: false, Reason: fmt.Sprintf("%s: %v", g.name, err), Now: now()}
		}
		n.log.Info("upgrade: health gate passed", "gate", g.name)
	}
	return upgrade.Health{OK: true, Now: now()}
}

type gate struct {
	name  string
	check func(context.Context) error
}

// gates are the trial's health checks, in order. The cluster issues add theirs.
func (n *Node) gates() []gate {
	g := []gate{
		{"mounts", func(context.Context) error {
			for _, want := range []string{MountState, MountEphemeral} {
				found := false
				n.mu.Lock()
				for _, m := range n.mounts {
					found = found || m.target == want
				}
				n.mu.Unlock()
				if !found {
					return fmt.Errorf("%s is not mounted", want)
				}
			}
			return nil
		}},
	}
	if n.controlPlane() {
		// Before the services gate: a rejoining member is a learner until this gate promotes
		// it, and the services gate waits for etcd's health.
		g = append(g, gate{"etcd", n.etcdGate})
	}
	g = append(g, []gate{
		{"services", n.servicesGate},
		{"api", func(ctx context.Context) error {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", n.cfg.APIPort()))
			if err != nil {
				return err
			}
			return c.Close()
		}},
	}...)
	if n.opts.Fault == FaultSlowTrial {
		g = append(g, gate{"fault-slow", func(ctx context.Context) error {
			select {
			case <-time.After(15 * time.Second):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
	}
	if n.opts.Fault == FaultHealthFail {
		g = append(g, gate{"fault-injected", func(context.Context) error { return errors.New("this test image always fails its health gate") }})
	}
	return g
}

// StartUpgrade implements netapi.Node.
func (n *Node) StartUpgrade(r netapi.UpgradeRequest) (netapi.UpgradeAccepted, error) {
	var no netapi.UpgradeAccepted
	if _, err := installer.ParseReference(r.Image, false); err != nil {
		return no, fmt.Errorf("%w: %v", netapi.ErrBadRequest, err)
	}
	n.mu.Lock()
	booted, committed := n.booted, n.entries.Committed
	down := n.goingDown
	n.mu.Unlock()
	if down {
		return no, fmt.Errorf("%w: the node is shutting down", netapi.ErrConflict)
	}
	if booted != committed {
		return no, fmt.Errorf("%w: booted slot %s is not the committed slot %s; reboot first", netapi.ErrConflict, booted, committed)
	}
	id := make([]byte, 6)
	rand.Read(id)
	if r.DrainTimeoutS < 0 || r.DrainTimeoutS > 3600 {
		return no, fmt.Errorf("%w: drain_timeout_s must be 0-3600", netapi.ErrBadRequest)
	}
	n.mu.Lock()
	active := n.rec.Active()
	n.mu.Unlock()
	if active {
		return no, fmt.Errorf("%w: %s is %s", netapi.ErrConflict, n.rec.Current.ID, n.rec.Current.State)
	}
	// Control-plane nodes: refuse an upgrade that would cost the etcd cluster its quorum.
	note, outage, err := n.precheck(r.Preserve, r.Force)
	if err != nil {
		return no, err
	}
	acts, err := n.apply(upgrade.Request{ID: hex.EncodeToString(id), Image: r.Image, Preserve: r.Preserve, Force: r.Force, DrainTimeoutS: r.DrainTimeoutS,
		FromVersion: n.opts.Version, Booted: booted, ControlPlane: n.controlPlane(), Member: n.memberName(), Now: now()})
	if errors.Is(err, upgrade.ErrBusy) {
		return no, fmt.Errorf("%w: %v", netapi.ErrConflict, err)
	}
	if err != nil {
		return no, err
	}
	go n.runActions(context.Background(), acts)
	return netapi.UpgradeAccepted{ID: hex.EncodeToString(id), Status: "accepted", Etcd: note, Outage: outage}, nil
}

func (n *Node) memberName() string {
	if !n.controlPlane() {
		return ""
	}
	return n.cfg.MemberName()
}

// Rollback implements netapi.Node: make the other slot the committed one and reboot, once its
// content checks out against its own manifest.
func (n *Node) Rollback() error {
	n.mu.Lock()
	active := n.rec.Active()
	booted := n.booted
	n.mu.Unlock()
	if active {
		return fmt.Errorf("%w: an upgrade is in flight", netapi.ErrConflict)
	}
	other := booted.Other()
	m, err := n.readSlot(other, true)
	if err != nil {
		return fmt.Errorf("%w: slot %s holds no verified image: %v", netapi.ErrPrecondition, other, err)
	}
	if err := n.editGrubenv(setKeys(boot.KeySavedEntry, string(other), boot.KeyNextEntry, "")); err != nil {
		return err
	}
	n.execMu.Lock()
	rec := n.rec.Clone()
	rec.Rollbacks = append([]upgrade.Rollback{{From: booted, To: other, At: now()}}, rec.Rollbacks...)
	if len(rec.Rollbacks) > upgrade.HistoryLen {
		rec.Rollbacks = rec.Rollbacks[:upgrade.HistoryLen]
	}
	b, _ := rec.Encode()
	err = n.store.Write(b)
	if err == nil {
		n.mu.Lock()
		n.rec = rec
		n.mu.Unlock()
	}
	n.execMu.Unlock()
	if err != nil {
		n.warn("rollback record: %v", err)
	}
	n.log.Info("rollback: committed the other slot; rebooting", "slot", string(other), "version", m.Version)
	return n.request(machine.ActionReboot, "rollback to slot "+string(other))
}

// readSlot mounts a slot read-only for a moment and reads its manifest; with checkFiles it
// also checks every file's size and SHA-256 against it.
func (n *Node) readSlot(s boot.Slot, checkFiles bool) (disk.Manifest, error) {
	dir := filepath.Join(slotMountDir, string(s))
	dev := n.parts[s.Partition()].Dev
	if empty, err := zeroStart(dev); err == nil && empty {
		return disk.Manifest{}, errSlotEmpty
	}
	if err := (machine.Mount{Source: dev, Target: dir, FSType: "vfat", Flags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC}).Do(); err != nil {
		return disk.Manifest{}, err
	}
	defer machine.Unmount(dir, time.Second)
	b, err := os.ReadFile(filepath.Join(dir, disk.ManifestName))
	if err != nil {
		return disk.Manifest{}, err
	}
	m, err := disk.ParseManifest(b)
	if err != nil || !checkFiles {
		return m, err
	}
	for _, f := range m.Files {
		fh, err := os.Open(filepath.Join(dir, f.Name))
		if err != nil {
			return m, err
		}
		h := sha256.New()
		k, err := io.Copy(h, fh)
		fh.Close()
		if err != nil {
			return m, err
		}
		if k != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
			return m, fmt.Errorf("%s does not match the manifest", f.Name)
		}
	}
	return m, nil
}
