package host

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The effects: thin shells around the plans of host.go.

// CgroupRoot is where cgroup v2 is mounted.
const CgroupRoot = "/sys/fs/cgroup"

// MountCgroups mounts cgroup v2 at CgroupRoot (a kernel that mounted it already is fine) and
// delegates the kubelet's controllers to the root's children. It returns the controllers
// delegated and those the kernel lacks.
func MountCgroups() (enabled, missing []string, err error) {
	if err := os.MkdirAll(CgroupRoot, 0o755); err != nil {
		return nil, nil, err
	}
	err = unix.Mount("cgroup2", CgroupRoot, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RELATIME, "nsdelegate")
	if err != nil && !errors.Is(err, unix.EBUSY) {
		return nil, nil, fmt.Errorf("mount cgroup2 on %s: %w", CgroupRoot, err)
	}
	avail, err := os.ReadFile(filepath.Join(CgroupRoot, "cgroup.controllers"))
	if err != nil {
		return nil, nil, err
	}
	line, missing := SubtreeControl(string(avail), KubeletControllers)
	if line != "" {
		if err := os.WriteFile(filepath.Join(CgroupRoot, "cgroup.subtree_control"), []byte(line), 0); err != nil {
			return nil, missing, fmt.Errorf("delegate %q: %w", line, err)
		}
	}
	on, err := os.ReadFile(filepath.Join(CgroupRoot, "cgroup.subtree_control"))
	return strings.Fields(string(on)), missing, err
}

// ApplySysctls writes each setting; it returns the ones that failed (a key a module not loaded
// would provide, a value the kernel refuses) as one error, having applied the others.
func ApplySysctls(s []Sysctl) error {
	var errs []error
	for _, c := range s {
		if err := os.WriteFile(SysctlPath(c.Name), []byte(c.Value), 0); err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s=%s: %w", c.Name, c.Value, err))
		}
	}
	return errors.Join(errs...)
}

// ReadSysctl reads a setting back (status shows what the kernel holds).
func ReadSysctl(name string) (string, error) {
	b, err := os.ReadFile(SysctlPath(name))
	return strings.TrimSpace(string(b)), err
}

// EnsureMachineID makes the machine id persistent: kept at keep (on STATE), created there once,
// and written to /etc/machine-id (in RAM) at every boot. It returns the id and whether it was
// created now.
func EnsureMachineID(keep, etc string) (string, bool, error) {
	prev, err := os.ReadFile(keep)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", false, err
	}
	random := make([]byte, 16)
	if _, err := rand.Read(random); err != nil {
		return "", false, err
	}
	id, created, err := MachineID(string(prev), random)
	if err != nil {
		return "", false, err
	}
	if created {
		if err := writeSynced(keep, []byte(id+"\n"), 0o444); err != nil {
			return "", false, err
		}
	}
	return id, created, WriteFile(etc, []byte(id+"\n"), 0o444)
}

// WriteFile writes a file of the node's root (in RAM), making its directory.
func WriteFile(path string, b []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".keel-tmp"
	if err := os.WriteFile(tmp, b, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writeSynced writes a file on a persistent filesystem: whole, synced, then renamed over.
func writeSynced(path string, b []byte, perm os.FileMode) error {
	tmp := path + ".keel-tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
