package sequence

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"keel/boot"
	"keel/disk"
)

// editGrubenv changes grubenv on the ESP: remount read-write, rewrite in place, sync,
// remount read-only. The ESP stays read-only otherwise, so a power cut finds it clean.
func (n *Node) editGrubenv(edit func(boot.Env) (boot.Env, error)) error {
	n.grubMu.Lock()
	defer n.grubMu.Unlock()
	dev := n.parts[disk.PartEFI].Dev
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount(dev, MountESP, "vfat", unix.MS_REMOUNT|flags, ""); err != nil {
		return fmt.Errorf("remount %s read-write: %w", MountESP, err)
	}
	defer unix.Mount(dev, MountESP, "vfat", unix.MS_REMOUNT|unix.MS_RDONLY|flags, "")
	path := filepath.Join(MountESP, "grub", "grubenv")
	env, err := boot.ReadEnvFile(path)
	if err != nil {
		return err
	}
	env, err = edit(env)
	if err != nil {
		return err
	}
	if err := boot.WriteEnvFile(path, env); err != nil {
		return err
	}
	unix.Sync()
	ent, err := boot.EntriesOf(env)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.entries = ent
	n.mu.Unlock()
	return nil
}

func setKeys(kv ...string) func(boot.Env) (boot.Env, error) {
	return func(e boot.Env) (boot.Env, error) {
		var err error
		for i := 0; i+1 < len(kv); i += 2 {
			if e, err = e.Set(kv[i], kv[i+1]); err != nil {
				return e, err
			}
		}
		return e, nil
	}
}
