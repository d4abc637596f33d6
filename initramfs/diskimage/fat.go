package diskimage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

// FAT filesystems (the ESP and the slots) are made by dosfstools' mkfs.fat and filled by
// mtools, the standard tools: go-diskfs v1.9.4 sizes the FAT two entries short for some
// sizes (a 64 MiB ESP: "129024 clusters but only space for 129022 FAT entries"), which
// fsck.fat and mtools reject and firmware stricter than OVMF may too.
//
// Builds are reproducible: mkfs.fat --invariant fixes the volume id and boot sector, every
// file and directory gets the timestamp fatEpoch (mtools honours SOURCE_DATE_EPOCH for what
// it creates; mcopy -m keeps each source file's mtime, which we set), and files are copied
// in the order given.

// fatEpoch is the timestamp of everything in a FAT image we build (2024-01-01T00:00:00Z).
var fatEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// ErrTool marks a missing or failing mkfs.fat/mtools (make deps installs them).
var ErrTool = errors.New("diskimage: FAT tool")

func fatEnv() []string {
	return append(os.Environ(),
		"MTOOLSRC=/dev/null",  // no user configuration
		"MTOOLS_SKIP_CHECK=1", // images have no disk geometry worth checking
		"MTOOLS_NO_VFAT=0",    // keep long names (manifest.json, initramfs)
		"SOURCE_DATE_EPOCH="+strconv.FormatInt(fatEpoch.Unix(), 10),
		"TZ=UTC",
	)
}

func runTool(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = fatEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%w: %s %v: %w: %s", ErrTool, name, args, err, bytes.TrimSpace(out))
	}
	return out, nil
}

// drive is the mtools name of a FAT filesystem at byte offset off of file img.
func drive(img string, off int64) string {
	if off == 0 {
		return img
	}
	return img + "@@" + strconv.FormatInt(off, 10)
}

// MakeFAT makes a FAT32 filesystem of size bytes, labelled label, at byte offset off of file
// target (which must already be that large), and copies files into it. Clusters are one
// 512-byte sector, as before: a 48 MiB slot still has the 65525 clusters FAT32 needs.
func MakeFAT(target string, off, size int64, label string, files []Content) error {
	if off%512 != 0 || size%512 != 0 {
		return fmt.Errorf("diskimage: FAT at %d, %d bytes: not whole sectors", off, size)
	}
	args := []string{"-F", "32", "-s", "1", "-S", "512", "--invariant", "-n", label}
	if off != 0 {
		args = append(args, "--offset", strconv.FormatInt(off/512, 10))
	}
	args = append(args, target, strconv.FormatInt(size/1024, 10))
	if _, err := runTool("mkfs.fat", args...); err != nil {
		return err
	}
	return copyToFAT(drive(target, off), files)
}

// copyToFAT creates the directories files need (parents first) and copies each file.
func copyToFAT(drv string, files []Content) error {
	tmp, err := os.MkdirTemp("", "diskimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	made := map[string]bool{"/": true}
	for i, c := range files {
		if !path.IsAbs(c.Path) || path.Clean(c.Path) != c.Path {
			return fmt.Errorf("diskimage: FAT path %q is not absolute and clean", c.Path)
		}
		var dirs []string
		for d := path.Dir(c.Path); !made[d]; d = path.Dir(d) {
			dirs = append(dirs, d)
			made[d] = true
		}
		slices.Reverse(dirs)
		for _, d := range dirs {
			if _, err := runTool("mmd", "-i", drv, "::"+d); err != nil {
				return err
			}
		}
		src := filepath.Join(tmp, strconv.Itoa(i))
		if err := os.WriteFile(src, c.Data, 0o644); err != nil {
			return err
		}
		if err := os.Chtimes(src, fatEpoch, fatEpoch); err != nil {
			return err
		}
		if _, err := runTool("mcopy", "-m", "-i", drv, src, "::"+c.Path); err != nil {
			return err
		}
	}
	return nil
}

// partOffset is where partition number part starts on a GPT disk image (0 for part 0: the
// image is a bare filesystem).
func partOffset(imagePath string, part int) (int64, error) {
	if part == 0 {
		return 0, nil
	}
	d, err := diskfs.Open(imagePath, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return 0, err
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		return 0, err
	}
	t, ok := pt.(*gpt.Table)
	if !ok {
		return 0, fmt.Errorf("diskimage: %s has no GPT", imagePath)
	}
	for _, p := range t.Partitions {
		if p.Index == part {
			return int64(p.Start) * int64(t.LogicalSectorSize), nil
		}
	}
	return 0, fmt.Errorf("diskimage: %s has no partition %d", imagePath, part)
}

// ReadFATFile reads a file from the FAT filesystem of partition number part of a disk image
// (part 0: the image is a bare filesystem).
func ReadFATFile(imagePath string, part int, p string) ([]byte, error) {
	off, err := partOffset(imagePath, part)
	if err != nil {
		return nil, fmt.Errorf("read %s:%d%s: %w", imagePath, part, p, err)
	}
	out, err := runToolStdout("mcopy", "-n", "-i", drive(imagePath, off), "::"+p, "-")
	if err != nil {
		return nil, fmt.Errorf("read %s:%d%s: %w", imagePath, part, p, err)
	}
	return out, nil
}

func runToolStdout(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = fatEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s %v: %w: %s", ErrTool, name, args, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// OverwriteFATFile replaces an existing file with data of the same size (the grubenv case:
// GRUB's save_env rewrites the file's own blocks and cannot change its size).
func OverwriteFATFile(imagePath string, part int, p string, data []byte) error {
	old, err := ReadFATFile(imagePath, part, p)
	if err != nil {
		return fmt.Errorf("write %s:%d%s: %w", imagePath, part, p, err)
	}
	if len(old) != len(data) {
		return fmt.Errorf("write %s:%d%s: size %d, would change to %d", imagePath, part, p, len(old), len(data))
	}
	off, err := partOffset(imagePath, part)
	if err != nil {
		return fmt.Errorf("write %s:%d%s: %w", imagePath, part, p, err)
	}
	tmp, err := os.CreateTemp("", "diskimage-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	tmp.Close()
	if _, err := runTool("mcopy", "-o", "-n", "-i", drive(imagePath, off), tmp.Name(), "::"+p); err != nil {
		return fmt.Errorf("write %s:%d%s: %w", imagePath, part, p, err)
	}
	return nil
}
