package disk

import (
	"fmt"

	"golang.org/x/sys/unix"

	"keel/machine"
)

// MountSystem loop-mounts the squashfs image read-only at dir; unmounting dir frees the loop
// device (see machine.MountLoop).
func MountSystem(image, dir string) error {
	if err := machine.MountLoop(image, dir, "squashfs", unix.MS_NODEV|unix.MS_NOSUID); err != nil {
		return fmt.Errorf("system image %s: %w", image, err)
	}
	return nil
}
