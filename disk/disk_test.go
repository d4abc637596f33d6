package disk

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
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
}

// TestBuildImage builds a real image and reads it back with go-diskfs and e2fsck.
func TestBuildImage(t *testing.T) {
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs not installed")
	}
	dir := t.TempDir()
	kernel := bytes.Repeat([]byte("K"), 3*MiB+17)
	slot := filepath.Join(dir, "slot.img")
	m, err := BuildSlot(slot, SlotSize(int64(len(kernel))), Manifest{Version: "v1", Arch: "amd64"},
		[]Content{{Path: "/vmlinuz", Data: kernel}})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Files) != 1 || m.Files[0].Size != int64(len(kernel)) {
		t.Fatalf("manifest files = %+v", m.Files)
	}
	got, err := ReadFATFile(slot, 0, "/vmlinuz")
	if err != nil || !bytes.Equal(got, kernel) {
		t.Fatalf("read back vmlinuz: %d bytes, %v", len(got), err)
	}

	stateDir := filepath.Join(dir, "state")
	os.MkdirAll(filepath.Join(stateDir, "pki"), 0o755)
	os.WriteFile(filepath.Join(stateDir, "pki", "ca.crt"), []byte("cert"), 0o644)

	l, err := Plan(700*MiB, DefaultSpecs)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	err = BuildImage(img, ImageSpec{
		Layout: l,
		ESP:    []Content{{Path: "/grub/grubenv", Data: bytes.Repeat([]byte("#"), 1024)}},
		Slots:  map[string]string{PartBootA: slot},
		Ext4:   map[string]Ext4{PartState: {Label: PartState, From: stateDir}, PartEphemeral: {Label: PartEphemeral}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := d.GetPartitionTable()
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	parts := pt.(*gpt.Table).Partitions
	for i, p := range l.Parts {
		if parts[i].Name != p.Name || int64(parts[i].Start)*512 != p.Start {
			t.Errorf("GPT entry %d = %s at %d, want %s at %d", i, parts[i].Name, parts[i].Start*512, p.Name, p.Start)
		}
	}
	if got, err := ReadFATFile(img, 2, "/manifest.json"); err != nil || !bytes.Contains(got, []byte(`"version": "v1"`)) {
		t.Errorf("BOOT-A manifest: %q, %v", got, err)
	}
	// Overwrite in place and read back.
	env := bytes.Repeat([]byte("x"), 1024)
	if err := OverwriteFATFile(img, 1, "/grub/grubenv", env); err != nil {
		t.Fatal(err)
	}
	if got, _ := ReadFATFile(img, 1, "/grub/grubenv"); !bytes.Equal(got, env) {
		t.Error("grubenv not rewritten")
	}
	if err := OverwriteFATFile(img, 1, "/grub/grubenv", env[:10]); err == nil {
		t.Error("size-changing overwrite accepted")
	}
	// The ext4 partitions must be fsck-clean and STATE must hold what we put there.
	st, _ := l.Find(PartState)
	part := filepath.Join(dir, "state.ext4")
	f, _ := os.Open(img)
	buf := make([]byte, st.Size)
	f.ReadAt(buf, st.Start)
	f.Close()
	os.WriteFile(part, buf, 0o644)
	if out, err := exec.Command("e2fsck", "-fn", part).CombinedOutput(); err != nil {
		t.Errorf("e2fsck STATE: %v\n%s", err, out)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /pki/ca.crt", part).Output(); err != nil || string(out) != "cert" {
		t.Errorf("STATE /pki/ca.crt = %q, %v", out, err)
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
