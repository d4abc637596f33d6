package diskimage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strconv"

	diskfs "github.com/diskfs/go-diskfs"

	"keel/disk"
)

// Content is a file to place in a FAT filesystem, at an absolute slash path.
type Content struct {
	Path string
	Data []byte
}

// Ext4 asks for an ext4 filesystem made by mke2fs on a partition, optionally populated
// from a host directory (mke2fs -d). go-diskfs's own ext4 writer is not fsck-clean.
type Ext4 struct {
	Label string
	From  string // host directory to copy in; empty for an empty filesystem
}

// ImageSpec is everything a disk image holds.
type ImageSpec struct {
	Layout disk.Layout
	ESP    []Content         // files of the EFI partition (FAT32)
	Slots  map[string]string // partition name → slot filesystem image file, copied raw
	Ext4   map[string]Ext4   // partition name → filesystem to make
}

// BuildImage writes a whole disk image at path (replacing it): GPT, ESP, slots, ext4
// filesystems. Partitions not named in spec are left zeroed (META starts empty).
func BuildImage(imagePath string, spec ImageSpec) error {
	if err := os.Remove(imagePath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("build image %s: %w", imagePath, err)
	}
	d, err := diskfs.Create(imagePath, spec.Layout.Size, diskfs.SectorSizeDefault)
	if err != nil {
		return fmt.Errorf("build image %s: create: %w", imagePath, err)
	}
	table := spec.Layout.GPT()
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("build image %s: partition: %w", imagePath, err)
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("build image %s: close: %w", imagePath, err)
	}
	f, err := os.OpenFile(imagePath, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("build image %s: %w", imagePath, err)
	}
	defer f.Close()
	for _, name := range sortedKeys(spec.Slots) {
		p, ok := spec.Layout.Find(name)
		if !ok {
			return fmt.Errorf("build image %s: no partition %q for slot", imagePath, name)
		}
		if err := copyInto(f, p, spec.Slots[name]); err != nil {
			return fmt.Errorf("build image %s: %s: %w", imagePath, name, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("build image %s: sync: %w", imagePath, err)
	}
	esp, ok := spec.Layout.Find(disk.PartEFI)
	if !ok {
		return fmt.Errorf("build image %s: layout has no %s partition", imagePath, disk.PartEFI)
	}
	if err := MakeFAT(imagePath, esp.Start, esp.Size, "EFI", spec.ESP); err != nil {
		return fmt.Errorf("build image %s: ESP: %w", imagePath, err)
	}
	for _, name := range sortedKeys(spec.Ext4) {
		p, ok := spec.Layout.Find(name)
		if !ok {
			return fmt.Errorf("build image %s: no partition %q for ext4", imagePath, name)
		}
		if err := Mke2fs(imagePath, p.Start, p.Size, spec.Ext4[name]); err != nil {
			return fmt.Errorf("build image %s: %s: %w", imagePath, name, err)
		}
	}
	return nil
}

// Mke2fs makes an ext4 filesystem of size bytes at byte offset off of file target (a disk
// image, or a block device with off 0).
func Mke2fs(target string, off, size int64, e Ext4) error {
	args := []string{"-q", "-t", "ext4", "-F", "-L", e.Label}
	if off != 0 {
		args = append(args, "-E", "offset="+strconv.FormatInt(off, 10))
	}
	if e.From != "" {
		args = append(args, "-d", e.From)
	}
	args = append(args, target, strconv.FormatInt(size/1024, 10)+"k")
	out, err := exec.Command("mke2fs", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mke2fs %v: %w: %s", args, err, out)
	}
	return nil
}

func copyInto(dst *os.File, p disk.Part, src string) error {
	s, err := os.Open(src)
	if err != nil {
		return err
	}
	defer s.Close()
	fi, err := s.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > p.Size {
		return fmt.Errorf("slot image %s (%d bytes) is larger than partition %s (%d bytes)", src, fi.Size(), p.Name, p.Size)
	}
	n, err := io.Copy(io.NewOffsetWriter(dst, p.Start), s)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if n != fi.Size() {
		return fmt.Errorf("copy %s: short copy %d of %d", src, n, fi.Size())
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// BuildSlot writes a slot filesystem image (FAT32, no partition table) of size bytes at
// imagePath holding files plus the manifest, which it completes with each file's size and
// SHA-256. The image is what gets streamed onto a BOOT-A/BOOT-B partition.
func BuildSlot(imagePath string, size int64, m disk.Manifest, files []Content) (disk.Manifest, error) {
	m.Files = nil
	for _, c := range files {
		m.Files = append(m.Files, disk.NewFile(path.Base(c.Path), c.Data))
	}
	mb, err := m.Encode()
	if err != nil {
		return disk.Manifest{}, fmt.Errorf("build slot %s: %w", imagePath, err)
	}
	if err := os.Remove(imagePath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return disk.Manifest{}, fmt.Errorf("build slot %s: %w", imagePath, err)
	}
	f, err := os.Create(imagePath)
	if err != nil {
		return disk.Manifest{}, fmt.Errorf("build slot %s: %w", imagePath, err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return disk.Manifest{}, fmt.Errorf("build slot %s: %w", imagePath, err)
	}
	all := append(append([]Content(nil), files...), Content{Path: "/" + disk.ManifestName, Data: mb})
	if err := MakeFAT(imagePath, 0, size, "KEELSLOT", all); err != nil {
		return disk.Manifest{}, fmt.Errorf("build slot %s: %w", imagePath, err)
	}
	return m, nil
}

// SlotSize is the filesystem size for content bytes of files: a quarter spare plus 8 MiB for
// FAT metadata, at least 48 MiB (FAT32 with 512-byte clusters needs more than 65525
// clusters), rounded up to 1 MiB.
func SlotSize(content int64) int64 {
	s := content + content/4 + 8*disk.MiB
	s = max(s, 48*disk.MiB)
	return (s + disk.MiB - 1) / disk.MiB * disk.MiB
}
