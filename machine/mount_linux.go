// Package machine performs the node-level system calls of PID 1: the early mounts, loading
// kernel modules, reaping orphans, killing processes, unmounting and rebooting. Each function
// is a thin shell; the decisions live in the sequence package.
package machine

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is one mount to make.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// EarlyMounts are what the init needs before anything else: the kernel does not mount
// devtmpfs for an initramfs, and nothing else can find a disk without /sys and /dev.
var EarlyMounts = []Mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// Do mounts m, creating the target directory. A target that is already a mount of the same
// kind (EBUSY) is not an error: the kernel may have mounted devtmpfs itself.
func (m Mount) Do() error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
	}
	err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	if errors.Is(err, unix.EBUSY) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", m.Source, m.FSType, m.Target, err)
	}
	return nil
}

// Unmount unmounts target, retrying while it is busy until timeout. It does not detach lazily:
// a lazy unmount reports success while the filesystem stays dirty, which is the very thing
// a clean shutdown must not hide.
func Unmount(target string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Unmount(target, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // unmounted, or was not a mount point
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("unmount %s: %w", target, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Sync flushes every filesystem.
func Sync() { unix.Sync() }
