package machine

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// AttachLoop attaches file to a free loop device and returns the device path. While attached,
// the filesystem holding file cannot be unmounted (EBUSY), whatever processes are killed.
func AttachLoop(file string) (string, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("loop: %w", err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return "", fmt.Errorf("loop: get free: %w", err)
	}
	dev := fmt.Sprintf("/dev/loop%d", n)
	lf, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("loop: %w", err)
	}
	defer lf.Close()
	bf, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("loop: %w", err)
	}
	defer bf.Close()
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_FD, int(bf.Fd())); err != nil {
		return "", fmt.Errorf("loop: attach %s to %s: %w", file, dev, err)
	}
	return dev, nil
}
