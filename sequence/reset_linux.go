package sequence

import (
	"errors"
	"fmt"

	"keel/disk"
)

// A reset (POST /v1/reset) re-makes partitions during the ordered shutdown, after the services
// stop and the filesystems unmount, then the node reboots. The partitions to wipe are part of
// the power request that starts the shutdown (power_linux.go): a reset refused because the node
// is already going down arms nothing.

// wipe re-makes the named partitions (a reset's; unmounted by then).
func (n *Node) wipe(names []string) error {
	var errs []error
	for _, name := range names {
		if name != disk.PartEphemeral && name != disk.PartState {
			errs = append(errs, fmt.Errorf("wipe %s: not a wipeable partition", name))
			continue
		}
		d := n.partition(name)
		if err := disk.Mkfs(n.Reaper.Run, d.Dev, name); err != nil {
			errs = append(errs, fmt.Errorf("wipe %s: %w", name, err))
			continue
		}
		n.log.Info("reset: partition wiped", "partition", name, "device", d.Dev)
		n.publish("shutdown", "reset", "wiped "+name, nil)
	}
	return errors.Join(errs...)
}
