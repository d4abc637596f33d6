package machine

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// AttachLoop attaches file to a free loop device and returns the device path. While attached,
// the filesystem holding file cannot be unmounted (EBUSY), whatever processes are killed.
func AttachLoop(file string) (string, error) {
	lf, dev, err := attachLoop(file, os.O_RDWR)
	if err != nil {
		return "", err
	}
	lf.Close()
	return dev, nil
}

// MountLoop mounts the filesystem image file read-only at target through a loop device that
// detaches itself when target is unmounted (autoclear), so a plain unmount frees the device
// and the filesystem holding file.
func MountLoop(file, target, fstype string, flags uintptr) error {
	return MountLoopRange(file, 0, 0, target, fstype, flags)
}

// MountLoopRange is MountLoop of the size bytes at byte offset off of file (0, 0: all of it),
// e.g. a partition of a disk whose table the kernel has not read.
func MountLoopRange(file string, off, size int64, target, fstype string, flags uintptr) error {
	lf, dev, err := attachLoop(file, os.O_RDONLY) // the device is as writable as the file
	if err != nil {
		return err
	}
	// Autoclear detaches at the device's last close: lf stays open until the mount holds it.
	defer lf.Close()
	info := unix.LoopInfo64{Flags: unix.LO_FLAGS_AUTOCLEAR, Offset: uint64(off), Sizelimit: uint64(size)}
	copy(info.File_name[:unix.LO_NAME_SIZE-1], file)
	if err := unix.IoctlLoopSetStatus64(int(lf.Fd()), &info); err != nil {
		_ = unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
		return fmt.Errorf("loop: %s: autoclear: %w", dev, err)
	}
	return Mount{Source: dev, Target: target, FSType: fstype, Flags: flags | unix.MS_RDONLY}.Do()
}

// attachLoop binds file to a free loop device opened with mode and returns it open.
func attachLoop(file string, mode int) (*os.File, string, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, "", fmt.Errorf("loop: %w", err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return nil, "", fmt.Errorf("loop: get free: %w", err)
	}
	dev := fmt.Sprintf("/dev/loop%d", n)
	lf, err := os.OpenFile(dev, mode, 0)
	if err != nil {
		return nil, "", fmt.Errorf("loop: %w", err)
	}
	bf, err := os.OpenFile(file, mode, 0)
	if err != nil {
		lf.Close()
		return nil, "", fmt.Errorf("loop: %w", err)
	}
	defer bf.Close()
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_FD, int(bf.Fd())); err != nil {
		lf.Close()
		return nil, "", fmt.Errorf("loop: attach %s to %s: %w", file, dev, err)
	}
	return lf, dev, nil
}
