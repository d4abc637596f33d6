package sequence

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"time"

	"keel/boot"
	"keel/disk"
	"keel/installer"
	"keel/internal/fault"
	"keel/machine"
	"keel/upgrade"
)

// slotIO is the node's slots as the upgrade executor sees them (upgrade.Slots): installer
// images from their registry, verified, streamed onto the inactive partition, read back.
type slotIO struct{ n *Node }

// policy is what this node accepts of an installer image headed for slot.
func (s slotIO) policy(image string, slot boot.Slot) (installer.Policy, installer.PullOptions) {
	return s.n.config().Upgrade.PullPolicy(runtime.GOARCH, s.n.partition(slot.Partition()).Size,
		func(err error) { s.n.log.Warn("upgrade: policy", "err", err) })
}

// Pull implements upgrade.Slots: the whole image is checked, nothing is written.
func (s slotIO) Pull(ctx context.Context, a upgrade.ActPull) (upgrade.PullResult, error) {
	image := a.Image
	p, o := s.policy(image, a.Slot)
	o.Version = func(v string) error { return a.Versions.Check(image, v) }
	last := time.Now()
	o.Progress = func(done, total int64) {
		if time.Since(last) > time.Second || done == total {
			last = time.Now()
			s.n.log.Info("upgrade: pulling", "bytes", done, "total", total)
		}
	}
	if s.n.opts.Fault == fault.BenchWrite {
		startMemWatch()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	r, err := installer.Pull(ctx, image, p, o)
	if err != nil {
		return upgrade.PullResult{}, err
	}
	return upgrade.PullResult{Digest: r.Digest, Version: r.Manifest.Version, SlotSHA256: r.Manifest.SlotSHA256, SlotSize: r.Manifest.SlotSize, SignedBy: r.Signed.Key, SignerKey: r.Signed.KeyID}, nil
}

// Write implements upgrade.Slots: the image (by digest) streams from the registry onto the
// partition, hashed on the way and read back.
func (s slotIO) Write(ctx context.Context, a upgrade.ActWriteSlot, progress func(int64, int64)) error {
	if a.Slot == s.n.bootedSlot() || s.n.esp == nil || a.Slot == s.n.esp.Committed() {
		return fmt.Errorf("refusing to write slot %s: it is the booted or committed slot", a.Slot)
	}
	p, o := s.policy(a.Image, a.Slot)
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	src, err := installer.Open(ctx, a.Image, p, o)
	if err != nil {
		return err
	}
	defer src.Close()
	if src.Manifest.SlotSHA256 != a.SHA256 || src.Manifest.SlotSize != a.Size {
		return fmt.Errorf("%s is no longer the image pulled: slot %d bytes sha256 %s, pulled %d bytes %s", a.Image, src.Manifest.SlotSize, src.Manifest.SlotSHA256, a.Size, a.SHA256)
	}
	dev := s.n.partition(a.Slot.Partition()).Dev
	st, err := disk.WriteSlot(ctx, dev, src, a.Size, a.SHA256, progress)
	if err != nil {
		return err
	}
	s.n.log.Info("upgrade: slot written and verified", "slot", string(a.Slot), "bytes", st.Bytes,
		"write_s", st.Write.Seconds(), "source_wait_s", st.SourceWait.Seconds(), "verify_s", st.Verify.Seconds(),
		"mib_per_s", float64(st.Bytes)/(1<<20)/(st.Write+st.Verify).Seconds())
	if s.n.opts.Fault == fault.BenchWrite {
		benchFloor(s.n, dev, a, st)
	}
	return nil
}

// Verify implements upgrade.Slots: a rollback's check of the other slot.
func (s slotIO) Verify(ctx context.Context, slot boot.Slot) (string, error) {
	m, err := disk.ReadSlot(ctx, s.n.partition(slot.Partition()).Dev, filepath.Join(slotMountDir, string(slot)), true)
	if err != nil {
		return "", err
	}
	return m.Version, nil
}

// WipeEphemeral implements upgrade.Slots: EPHEMERAL is made anew (unmounted first if a boot
// mounted it; at boot, the executor runs this before it is mounted).
func (s slotIO) WipeEphemeral(context.Context) error {
	if s.n.mounts.has(MountEphemeral) {
		s.n.closeJournal()
		if err := machine.Unmount(MountEphemeral, 5*time.Second); err != nil {
			return err
		}
		s.n.mounts.drop(MountEphemeral)
	}
	return disk.Mkfs(s.n.Reaper.Run, s.n.partition(disk.PartEphemeral).Dev, disk.PartEphemeral)
}
