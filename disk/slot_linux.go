package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"keel/machine"
)

// ErrSlotEmpty marks a slot partition that was never written (a fresh node's BOOT-B).
var ErrSlotEmpty = errors.New("empty: no filesystem")

// ReadSlot mounts the slot filesystem on dev read-only at dir for a moment and reads its
// manifest; with checkFiles it also checks every file's size and SHA-256 against it (a
// rollback's check that the slot holds a whole image).
func ReadSlot(ctx context.Context, dev, dir string, checkFiles bool) (Manifest, error) {
	if empty, err := zeroStart(dev); err == nil && empty {
		return Manifest{}, ErrSlotEmpty
	}
	if err := (machine.Mount{Source: dev, Target: dir, FSType: "vfat", Flags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC}).Do(); err != nil {
		return Manifest{}, err
	}
	defer machine.Unmount(dir, time.Second)
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return Manifest{}, err
	}
	m, err := ParseManifest(b)
	if err != nil || !checkFiles {
		return m, err
	}
	for _, f := range m.Files {
		if err := ctx.Err(); err != nil {
			return m, err
		}
		fh, err := os.Open(filepath.Join(dir, f.Name))
		if err != nil {
			return m, err
		}
		h := sha256.New()
		k, err := io.Copy(h, fh)
		fh.Close()
		if err != nil {
			return m, err
		}
		if k != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
			return m, fmt.Errorf("%s does not match the manifest", f.Name)
		}
	}
	return m, nil
}

// zeroStart reports whether the first sector of dev is all zeros (no boot sector).
func zeroStart(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b := make([]byte, 512)
	if _, err := io.ReadFull(f, b); err != nil {
		return false, err
	}
	for _, c := range b {
		if c != 0 {
			return false, nil
		}
	}
	return true, nil
}

// Mkfs re-creates an ext4 filesystem labelled label on dev (unmounted), with the node's
// mke2fs. run runs the command: on a node, PID 1's reaper, which must know the child is the
// init's own or it may reap it before os/exec's Wait does.
func Mkfs(run func(*exec.Cmd) error, dev, label string) error {
	cmd := exec.Command("/sbin/mke2fs", "-q", "-t", "ext4", "-F", "-L", label, dev)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := run(cmd); err != nil {
		return fmt.Errorf("mke2fs %s: %w: %s", dev, err, out.Bytes())
	}
	return nil
}
