package diskimage

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"keel/disk"
)

// TestBuildImage builds a real image and reads it back with go-diskfs and e2fsck.
func TestBuildImage(t *testing.T) {
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs not installed")
	}
	dir := t.TempDir()
	kernel := bytes.Repeat([]byte("K"), 3*disk.MiB+17)
	slot := filepath.Join(dir, "slot.img")
	m, err := BuildSlot(slot, SlotSize(int64(len(kernel))), disk.Manifest{Version: "v1", Arch: "amd64"},
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

	l, err := disk.Plan(700*disk.MiB, disk.DefaultSpecs)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	err = BuildImage(img, ImageSpec{
		Layout: l,
		ESP:    []Content{{Path: "/grub/grubenv", Data: bytes.Repeat([]byte("#"), 1024)}},
		Slots:  map[string]string{disk.PartBootA: slot},
		Ext4:   map[string]Ext4{disk.PartState: {Label: disk.PartState, From: stateDir}, disk.PartEphemeral: {Label: disk.PartEphemeral}},
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
	part := extract(t, img, l, disk.PartState, filepath.Join(dir, "state.ext4"))
	if out, err := exec.Command("e2fsck", "-fn", part).CombinedOutput(); err != nil {
		t.Errorf("e2fsck STATE: %v\n%s", err, out)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /pki/ca.crt", part).Output(); err != nil || string(out) != "cert" {
		t.Errorf("STATE /pki/ca.crt = %q, %v", out, err)
	}
}

// TestFATPassesFsckAndMtools: the ESP of the default layout and slot images of many sizes are
// valid FAT32 to the standard tools (fsck.fat -n finds nothing; mtools lists them), not only
// to OVMF, GRUB and Linux: firmware stricter than OVMF reads them too.
func TestFATPassesFsckAndMtools(t *testing.T) {
	for _, tool := range []string{"fsck.fat", "mdir", "mke2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (make deps installs dosfstools and mtools)", tool)
		}
	}
	dir := t.TempDir()
	fsck := func(name, img string) {
		t.Helper()
		if out, err := exec.Command("fsck.fat", "-n", img).CombinedOutput(); err != nil {
			t.Errorf("fsck.fat -n %s: %v\n%s", name, err, out)
		}
		if out, err := exec.Command("mdir", "-i", img, "::/").CombinedOutput(); err != nil {
			t.Errorf("mdir %s: %v\n%s", name, err, out)
		}
	}
	// Slot sizes around the ones builds produce (48 MiB and up, whole MiB).
	for _, mib := range []int64{48, 49, 53, 64, 65, 100, 128, 200, 256} {
		slot := filepath.Join(dir, "slot.img")
		if _, err := BuildSlot(slot, mib*disk.MiB, disk.Manifest{Version: "v1", Arch: "amd64"},
			[]Content{{Path: "/vmlinuz", Data: bytes.Repeat([]byte("k"), 1<<20)}}); err != nil {
			t.Fatal(err)
		}
		fsck(fmt.Sprintf("slot of %d MiB", mib), slot)
	}
	l, err := disk.Plan(1024*disk.MiB, disk.DefaultSpecs)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	if err := BuildImage(img, ImageSpec{Layout: l, ESP: []Content{
		{Path: "/EFI/BOOT/BOOTX64.EFI", Data: bytes.Repeat([]byte("e"), 700<<10)},
		{Path: "/grub/grub.cfg", Data: []byte("set default=A\n")},
		{Path: "/grub/grubenv", Data: bytes.Repeat([]byte("#"), 1024)},
	}}); err != nil {
		t.Fatal(err)
	}
	espImg := extract(t, img, l, disk.PartEFI, filepath.Join(dir, "esp.img"))
	fsck("ESP", espImg)
	if out, err := exec.Command("mtype", "-i", espImg, "::/grub/grub.cfg").CombinedOutput(); err != nil || string(out) != "set default=A\n" {
		t.Errorf("mtype grub.cfg: %q %v", out, err)
	}
}

// TestSlotReproducible: the same content gives the same slot image, byte for byte.
func TestSlotReproducible(t *testing.T) {
	dir := t.TempDir()
	var sums [2][32]byte
	for i := range sums {
		p := filepath.Join(dir, fmt.Sprint(i))
		if _, err := BuildSlot(p, 48*disk.MiB, disk.Manifest{Version: "v1", Arch: "amd64"},
			[]Content{{Path: "/vmlinuz", Data: []byte("kernel")}, {Path: "/initramfs", Data: []byte("rd")}}); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(p)
		sums[i] = sha256.Sum256(b)
		time.Sleep(1100 * time.Millisecond) // a clock that leaks in shows as a new second
	}
	if sums[0] != sums[1] {
		t.Errorf("two builds differ: %x %x", sums[0], sums[1])
	}
}

// extract copies partition name of the disk image img (laid out as l) into the file dst.
func extract(t *testing.T, img string, l disk.Layout, name, dst string) string {
	t.Helper()
	p, ok := l.Find(name)
	if !ok {
		t.Fatalf("no partition %s", name)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, p.Size)
	if _, err := f.ReadAt(buf, p.Start); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}
