package machine

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The init starts on the kernel's rootfs (the unpacked initramfs), the one mount that has no
// parent: pivot_root(2) refuses it as the old root, so container runtimes could only chroot
// into a container's root (from which a privileged process climbs out). MoveRoot gives the
// init a root that is an ordinary mount, as switch_root(8) does, without copying anything: it
// bind-mounts the rootfs onto a directory of itself, moves that mount over /, chroots into it
// and re-executes the init there.

// rootEnv carries the first init's start (kernel uptime) to the re-executed one.
const rootEnv = "KEEL_ROOT_MOVED_AT"

// MoveRoot re-executes initPath on a bind mount of the root: on success it does not return.
// In the re-executed init it returns at once, with the kernel uptime at which the first one
// started (the move belongs to the init's time); on failure it returns the error and the
// init goes on where it is.
func MoveRoot(initPath string) (firstStart time.Duration, err error) {
	if v := os.Getenv(rootEnv); v != "" {
		os.Unsetenv(rootEnv) // not for the services
		d, _ := time.ParseDuration(v)
		return d, nil
	}
	start := Uptime()
	const dir = "/.root"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	if err := unix.Mount("/", dir, "", unix.MS_BIND, ""); err != nil {
		return 0, fmt.Errorf("root: bind: %w", err)
	}
	if err := unix.Chdir(dir); err != nil {
		return 0, err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		unix.Chdir("/")
		unix.Unmount(dir, unix.MNT_DETACH)
		return 0, fmt.Errorf("root: move: %w", err)
	}
	// From here there is no way back: the bind mount is /, whatever happens next.
	if err := unix.Chroot("."); err != nil {
		return 0, fmt.Errorf("root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return 0, err
	}
	env := append(os.Environ(), rootEnv+"="+start.String())
	err = unix.Exec(initPath, os.Args, env)
	return 0, fmt.Errorf("root: exec %s: %w", initPath, err)
}
