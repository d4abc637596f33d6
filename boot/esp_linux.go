package boot

import (
	"fmt"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// ESP is grubenv on the node's mounted EFI system partition: the bootloader state the upgrade
// edits (upgrade.Bootloader). The ESP stays mounted read-only; an edit remounts it read-write,
// rewrites grubenv in place (GRUB's save_env needs its blocks where they are), syncs, and
// remounts it read-only, so a power cut finds it clean.
type ESP struct {
	dev, mount string

	mu      sync.Mutex
	entries Entries
}

// OpenESP reads grubenv from the ESP dev mounted at mount.
func OpenESP(dev, mount string) (*ESP, error) {
	e := &ESP{dev: dev, mount: mount}
	env, err := ReadEnvFile(e.envPath())
	if err != nil {
		return e, err
	}
	e.entries, err = EntriesOf(env)
	return e, err
}

func (e *ESP) envPath() string { return filepath.Join(e.mount, "grub", "grubenv") }

// Entries is grubenv's boot entries as last read or written.
func (e *ESP) Entries() Entries {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.entries
}

// Committed is the slot grubenv commits (saved_entry; A when unset).
func (e *ESP) Committed() Slot { return e.Entries().Committed }

// Arm puts s under trial: GRUB boots it up to TrialTries times, spending a try before each.
func (e *ESP) Arm(s Slot) error {
	return e.edit(KeyNextEntry, string(s), KeyTrialTries, strconv.Itoa(TrialTries))
}

// Disarm ends a trial: GRUB boots the committed slot.
func (e *ESP) Disarm() error { return e.edit(KeyNextEntry, "", KeyTrialTries, "") }

// Commit makes s the default and ends any trial.
func (e *ESP) Commit(s Slot) error {
	return e.edit(KeySavedEntry, string(s), KeyNextEntry, "", KeyTrialTries, "")
}

func (e *ESP) edit(kv ...string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount(e.dev, e.mount, "vfat", unix.MS_REMOUNT|flags, ""); err != nil {
		return fmt.Errorf("remount %s read-write: %w", e.mount, err)
	}
	defer unix.Mount(e.dev, e.mount, "vfat", unix.MS_REMOUNT|unix.MS_RDONLY|flags, "")
	env, err := ReadEnvFile(e.envPath())
	if err != nil {
		return err
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if env, err = env.Set(kv[i], kv[i+1]); err != nil {
			return err
		}
	}
	if err := WriteEnvFile(e.envPath(), env); err != nil {
		return err
	}
	unix.Sync()
	ent, err := EntriesOf(env)
	if err != nil {
		return err
	}
	e.entries = ent
	return nil
}
