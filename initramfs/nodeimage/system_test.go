package nodeimage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"keel/machine"
)

func writeFile(t *testing.T, p, s string) string {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSystemImage packs a system image with mksquashfs twice (same inputs: the same cached
// file, and a fresh build of it is byte-identical), then, as root, mounts it the way a node
// does and checks that unmounting frees the loop device.
func TestSystemImage(t *testing.T) {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("mksquashfs missing (make deps installs squashfs-tools)")
	}
	dir := t.TempDir()
	s := System{
		Files: map[string]string{"/bin/tool": writeFile(t, filepath.Join(dir, "tool"), "#!/bin/sh\necho tool\n")},
		Links: map[string]string{"/bin/alias": "tool"},
	}
	cache := filepath.Join(dir, "cache")
	os.MkdirAll(cache, 0o755)
	p1, err := BuildSystemImage(context.Background(), s, cache)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := BuildSystemImage(context.Background(), s, cache)
	if err != nil || p2 != p1 {
		t.Fatalf("second build: %s, %v; want the cached %s", p2, err, p1)
	}
	b1, _ := os.ReadFile(p1)
	os.Remove(p1)
	p3, err := BuildSystemImage(context.Background(), s, cache)
	if err != nil {
		t.Fatal(err)
	}
	if b3, _ := os.ReadFile(p3); string(b3) != string(b1) {
		t.Fatal("two builds from the same inputs differ")
	}
	if os.Getuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		exec.Command("modprobe", "loop").Run()
	}
	mnt := filepath.Join(dir, "mnt")
	if err := machine.MountLoop(p3, mnt, "squashfs", unix.MS_NODEV); err != nil {
		t.Skipf("this host cannot loop-mount squashfs: %v", err)
	}
	var dev string
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 2 && f[1] == mnt {
				dev = f[0]
			}
		}
	}
	got, err := os.ReadFile(filepath.Join(mnt, "bin", "alias"))
	if err != nil || string(got) != "#!/bin/sh\necho tool\n" {
		t.Errorf("read through the link: %q, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "x"), nil, 0o644); err == nil {
		t.Error("the system image is writable")
	}
	if err := machine.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	backing := filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file")
	if _, err := os.Stat(backing); dev == "" || err == nil {
		t.Errorf("loop device %q still attached after the unmount", dev)
	}
}
