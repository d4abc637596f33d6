package machine

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/mount"
	"golang.org/x/sys/unix"
)

// The init starts on the kernel's rootfs (the unpacked initramfs), which cannot be moved or
// unmounted: pivot_root(2) refuses it, so container runtimes could only chroot into a
// container's root (from which a privileged process climbs out). MoveRoot gives the init a
// real root as switch_root(8) does: it copies the initramfs into a tmpfs, moves that over /,
// frees the old root's files and re-executes the init from the new root.

// rootMark exists only in the tmpfs copy: an init that finds it has moved already.
const rootMark = "/.keel-root"

// MoveRoot makes a tmpfs copy of the root the root and execs initPath in it: on success it
// does not return. In the re-executed init it returns at once, with the kernel uptime at which
// the first one started (the move's cost belongs to the init's time); on failure it returns
// the error and the init goes on where it is.
func MoveRoot(initPath string) (firstStart time.Duration, err error) {
	if b, err := os.ReadFile(rootMark); err == nil {
		d, _ := time.ParseDuration(strings.TrimSpace(string(b)))
		return d, nil
	}
	start := Uptime()
	const dir = "/.newroot"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID, "mode=0755"); err != nil {
		return 0, fmt.Errorf("root: tmpfs: %w", err)
	}
	if err := copyTree("/", dir, dir); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		return 0, fmt.Errorf("root: copy: %w", err)
	}
	if err := os.WriteFile(dir+rootMark, []byte(start.String()), 0o444); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		return 0, err
	}
	// Moves the root, deletes the old one's files (their RAM comes back), execs: returns
	// only on failure, when there is no good way back.
	return 0, mount.SwitchRoot(dir, initPath)
}

// copyTree copies the filesystem at src into dst (regular files, directories, symlinks and
// device nodes, with their modes), skipping skip and other filesystems.
func copyTree(src, dst, skip string) error {
	var rootDev uint64
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return err
	}
	rootDev = st.Dev
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if d.IsDir() && st.Dev != rootDev {
			return filepath.SkipDir
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		mode := os.FileMode(st.Mode & 0o7777)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if rel == "." {
				return nil
			}
			if err := os.Mkdir(to, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			return os.Chmod(to, mode)
		case unix.S_IFLNK:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(t, to)
		case unix.S_IFREG:
			return copyRegular(p, to, mode)
		case unix.S_IFCHR, unix.S_IFBLK:
			return unix.Mknod(to, st.Mode, int(st.Rdev))
		}
		return nil // sockets, fifos: none in an initramfs
	})
}

func copyRegular(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode) // the umask does not get a say
}
