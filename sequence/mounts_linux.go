package sequence

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"keel/disk"
	"keel/machine"
)

// mountTable is what the boot mounted, in order: status shows it, the shutdown unmounts it
// newest first, the upgrade's stop takes STATE and EPHEMERAL out of it.
type mountTable struct {
	mu  sync.Mutex
	all []mounted
}

type mounted struct {
	part, target string
	clean        *bool // ext4 health before mounting, nil for other filesystems
	uuid         string
}

func (t *mountTable) add(m mounted) {
	t.mu.Lock()
	t.all = append(t.all, m)
	t.mu.Unlock()
}

func (t *mountTable) drop(target string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, m := range t.all {
		if m.target == target {
			t.all = append(t.all[:i], t.all[i+1:]...)
			return
		}
	}
}

func (t *mountTable) has(target string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.all {
		if m.target == target {
			return true
		}
	}
	return false
}

func (t *mountTable) list() []mounted {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]mounted(nil), t.all...)
}

// mountExt4 records the filesystem's health before mounting it (mounting changes it).
func (n *Node) mountExt4(part, target string) error {
	d := n.partition(part)
	m := mounted{part: part, target: target}
	if f, err := os.Open(d.Dev); err == nil {
		h, herr := disk.ReadExt4Health(f)
		f.Close()
		if herr != nil {
			return fmt.Errorf("%s (%s): %w", part, d.Dev, herr)
		}
		c := h.Clean()
		m.clean, m.uuid = &c, h.UUID
		if !c {
			n.log.Warn("filesystem was not cleanly unmounted; the kernel replays its journal", "partition", part, "needs_recovery", h.NeedsRecovery, "errors", h.Errors)
		}
	}
	if err := (machine.Mount{Source: d.Dev, Target: target, FSType: "ext4", Flags: unix.MS_NOSUID | unix.MS_NODEV}).Do(); err != nil {
		return err
	}
	n.mounts.add(m)
	return nil
}
