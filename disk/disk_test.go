package disk

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPlan(t *testing.T) {
	l, err := Plan(1024*MiB, DefaultSpecs)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name        string
		start, size int64
	}{
		{PartEFI, 1, 64}, {PartBootA, 65, 256}, {PartBootB, 321, 256},
		{PartMeta, 577, 1}, {PartState, 578, 64}, {PartEphemeral, 642, 1024 - 642 - 1},
	}
	for i, w := range want {
		p := l.Parts[i]
		if p.Name != w.name || p.Start != w.start*MiB || p.Size != w.size*MiB || p.Number != i+1 {
			t.Errorf("part %d = %+v, want %s at %d MiB, %d MiB", i, p, w.name, w.start, w.size)
		}
	}

	bad := []struct {
		name  string
		size  int64
		specs []Spec
	}{
		{"unaligned disk", 1024*MiB + 1, DefaultSpecs},
		{"too small", 600 * MiB, DefaultSpecs},
		{"rest not last", 1024 * MiB, []Spec{{"A", 0, KindLinux}, {"B", MiB, KindLinux}}},
		{"duplicate", 1024 * MiB, []Spec{{"A", MiB, KindLinux}, {"A", MiB, KindLinux}}},
		{"unaligned part", 1024 * MiB, []Spec{{"A", MiB + 512, KindLinux}}},
		{"no name", 1024 * MiB, []Spec{{"", MiB, KindLinux}}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Plan(tc.size, tc.specs); !errors.Is(err, ErrLayout) {
				t.Errorf("err = %v, want ErrLayout", err)
			}
		})
	}
}

func TestManifest(t *testing.T) {
	m := Manifest{Version: "1.2.3", Arch: "amd64", Files: []File{NewFile("vmlinuz", []byte("k"))}}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseManifest(b)
	if err != nil || got.Files[0] != m.Files[0] || got.Version != "1.2.3" {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, v := range []string{"", "-x", "a b", "a/b", strings.Repeat("x", 65)} {
		if err := ValidVersion(v); !errors.Is(err, ErrManifest) {
			t.Errorf("ValidVersion(%q) = %v", v, err)
		}
	}
	bad := m
	bad.Files = []File{{Name: "x", SHA256: "zz"}}
	if err := bad.Validate(); !errors.Is(err, ErrManifest) {
		t.Errorf("bad sha: %v", err)
	}
	if _, err := ParseManifest([]byte("{")); !errors.Is(err, ErrManifest) {
		t.Errorf("bad json: %v", err)
	}
	// File names are joined to the slot's mount point: nothing may leave it.
	for _, name := range []string{"", "../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "./a", "a/", "..", ".", ManifestName, "a b", "a\\b", strings.Repeat("x", 256)} {
		bad := m
		bad.Files = []File{NewFile(name, nil)}
		if err := bad.Validate(); !errors.Is(err, ErrManifest) {
			t.Errorf("file name %q: %v, want refused", name, err)
		}
	}
	for _, name := range []string{"vmlinuz", "initramfs.cpio.gz", "system/etc.squashfs", "a..b", ".hidden"} {
		good := m
		good.Files = []File{NewFile(name, nil)}
		if err := good.Validate(); err != nil {
			t.Errorf("file name %q: %v", name, err)
		}
	}
}

func TestScanPartitions(t *testing.T) {
	// A sysfs-shaped tree: the layout /sys/class/block has, with symlinks into a device dir.
	// The real thing is exercised by every QEMU boot; this covers the duplicate-name refusal
	// that a real machine cannot produce on demand.
	root := t.TempDir()
	mk := func(disk, part, name string, n int) {
		dev := filepath.Join(root, "devices", disk, part)
		os.MkdirAll(dev, 0o755)
		os.WriteFile(filepath.Join(dev, "uevent"), []byte("MAJOR=254\nDEVNAME="+part+"\nDEVTYPE=partition\nPARTN=1\nPARTNAME="+name+"\n"), 0o644)
		os.WriteFile(filepath.Join(dev, "size"), []byte("2048\n"), 0o644)
		os.WriteFile(filepath.Join(dev, "start"), []byte("2048\n"), 0o644)
		os.MkdirAll(filepath.Join(root, "class", "block"), 0o755)
		os.Symlink(dev, filepath.Join(root, "class", "block", part))
	}
	mk("vda", "vda1", PartEFI, 1)
	mk("vda", "vda6", PartEphemeral, 6)
	got, err := ScanPartitions(root)
	if err != nil {
		t.Fatal(err)
	}
	if d := got[PartEFI]; d.Dev != "/dev/vda1" || d.Disk != "/dev/vda" || d.Size != MiB || d.ByteOff != MiB {
		t.Errorf("EFI = %+v", d)
	}
	mk("vdb", "vdb1", PartEFI, 1)
	if _, err := ScanPartitions(root); err == nil {
		t.Error("duplicate EFI on two disks: no error")
	}
}
