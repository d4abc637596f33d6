package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"keel/disk"
)

// State is what a disk holds, as far as install mode cares.
type State int

// Disk states. Only Blank and KeelIncomplete are installed onto without wipe.
const (
	Blank State = iota
	// KeelIncomplete: keel's partition table, but no bootloader on the ESP: an install cut
	// short. The firmware boots nothing from it; install starts it over.
	KeelIncomplete
	// KeelComplete: a keel install the firmware boots.
	KeelComplete
	// Data: anything else (a partition table, a filesystem, unknown bytes).
	Data
)

func (s State) String() string {
	switch s {
	case Blank:
		return "blank"
	case KeelIncomplete:
		return "an interrupted keel install"
	case KeelComplete:
		return "a complete keel install"
	}
	return "data"
}

// Content is what Classify found on a disk.
type Content struct {
	State State
	What  string    // for Data: what was recognised, for people
	ESP   disk.Part // for a keel disk: where its EFI partition is
}

// A filesystem or volume signature at a fixed byte offset of a disk (or of a partition).
type signature struct {
	name  string
	off   int64
	magic string
}

// What blkid/wipefs would find on a disk formatted as a whole, without a partition table.
var signatures = []signature{
	{"an ext2/3/4 filesystem", 0x438, "\x53\xef"},
	{"a FAT32 filesystem", 0x52, "FAT32   "},
	{"a FAT12/16 filesystem", 0x36, "FAT1"},
	{"an XFS filesystem", 0, "XFSB"},
	{"a btrfs filesystem", 0x10040, "_BHRfS_M"},
	{"an LVM2 physical volume", 0x218, "LVM2 001"},
	{"a LUKS volume", 0, "LUKS\xba\xbe"},
	{"a Linux swap area", 0xff6, "SWAPSPACE2"},
	{"an ISO 9660 filesystem", 0x8001, "CD001"},
	{"a Linux RAID member (md 1.1)", 0, "\xfc\x4e\x2b\xa9"},
	{"a Linux RAID member (md 1.2)", 0x1000, "\xfc\x4e\x2b\xa9"},
}

// scanSize is how much of each end of the disk Classify reads: the GPT areas, and room for
// every signature above.
const scanSize = disk.MiB

// ErrTooSmall is a disk keel's layout does not fit on.
var ErrTooSmall = errors.New("disk too small")

// Classify reads what the disk of size bytes holds: keel's partition table (valid in its
// primary or backup copy) or keel's Mark without a table, another partition table, a filesystem signature, any non-zero
// byte in its first or last MiB (data of some kind), or nothing at all (blank).
func Classify(r io.ReaderAt, size int64) (Content, error) {
	if size < 2*scanSize {
		return Content{}, fmt.Errorf("%w: %d bytes", ErrTooSmall, size)
	}
	head := make([]byte, scanSize)
	if _, err := r.ReadAt(head, 0); err != nil {
		return Content{}, fmt.Errorf("read the disk's first MiB: %w", err)
	}
	tail := make([]byte, scanSize)
	if _, err := r.ReadAt(tail, size-scanSize); err != nil {
		return Content{}, fmt.Errorf("read the disk's last MiB: %w", err)
	}
	if t, err := gpt.Read(&sized{r: r, size: size}, 512, 512); err == nil {
		var names []string
		for _, p := range t.Partitions {
			if p.Type != gpt.Unused {
				names = append(names, p.Name)
			}
		}
		var want []string
		for _, s := range disk.DefaultSpecs {
			want = append(want, s.Name)
		}
		if !slices.Equal(names, want) {
			return Content{State: Data, What: fmt.Sprintf("a GPT partition table (partitions %s)", strings.Join(names, ", "))}, nil
		}
		esp := t.Partitions[0]
		return Content{State: KeelIncomplete, ESP: disk.Part{Number: 1, Name: esp.Name, Kind: disk.KindESP,
			Start: int64(esp.Start) * 512, Size: int64(esp.End-esp.Start+1) * 512}}, nil
	}
	if string(head[MarkOff:MarkOff+len(Mark)]) == Mark {
		return Content{State: KeelIncomplete}, nil // the table's header never made it
	}
	if bytes.Contains(head[512:1024], []byte("EFI PART")) || bytes.Contains(tail[len(tail)-512:], []byte("EFI PART")) {
		return Content{State: Data, What: "a damaged GPT partition table"}, nil
	}
	if head[510] == 0x55 && head[511] == 0xaa && !allZero(head[446:510]) {
		return Content{State: Data, What: "an MBR partition table"}, nil
	}
	for _, s := range signatures {
		if s.off+int64(len(s.magic)) <= int64(len(head)) && string(head[s.off:s.off+int64(len(s.magic))]) == s.magic {
			return Content{State: Data, What: s.name}, nil
		}
	}
	if !allZero(head) || !allZero(tail) {
		return Content{State: Data, What: "non-zero bytes in its first or last MiB (unknown content)"}, nil
	}
	return Content{State: Blank}, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// sized is a ReaderAt of known size as the backend.File gpt.Read wants (it seeks to the end
// for the backup table's place).
type sized struct {
	r    io.ReaderAt
	size int64
	off  int64
}

func (s *sized) ReadAt(b []byte, off int64) (int, error) { return s.r.ReadAt(b, off) }
func (s *sized) Read(b []byte) (int, error) {
	n, err := s.r.ReadAt(b, s.off)
	s.off += int64(n)
	return n, err
}
func (s *sized) Close() error               { return nil }
func (s *sized) Stat() (fs.FileInfo, error) { return sizedInfo{s.size}, nil }
func (s *sized) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		s.off = off
	case io.SeekCurrent:
		s.off += off
	case io.SeekEnd:
		s.off = s.size + off
	}
	return s.off, nil
}

type sizedInfo struct{ size int64 }

func (i sizedInfo) Name() string       { return "disk" }
func (i sizedInfo) Size() int64        { return i.size }
func (i sizedInfo) Mode() fs.FileMode  { return 0 }
func (i sizedInfo) ModTime() time.Time { return time.Time{} }
func (i sizedInfo) IsDir() bool        { return false }
func (i sizedInfo) Sys() any           { return nil }

// Disk is one of the machine's disks as install mode sees it.
type Disk struct {
	Dev       string // /dev/NAME
	Size      int64
	Model     string
	Serial    string
	Removable bool // USB sticks and the like: never chosen unless named
	ReadOnly  bool
	// SectorSize is the logical sector size (0: unknown, taken as 512). keel's layout is
	// written for 512-byte sectors.
	SectorSize int64
	Content    Content
}

func (d Disk) String() string {
	s := fmt.Sprintf("%s (%d MiB", d.Dev, d.Size/disk.MiB)
	if d.Model != "" {
		s += ", " + d.Model
	}
	if d.Serial != "" {
		s += ", serial " + d.Serial
	}
	if d.Removable {
		s += ", removable"
	}
	return s + ", " + d.Content.describe() + ")"
}

func (c Content) describe() string {
	if c.State == Data {
		return "holds " + c.What
	}
	return c.State.String()
}

// ErrNoDisk: the selector matches no disk, or several with nothing to tell them apart.
var ErrNoDisk = errors.New("no target disk")

// ErrHoldsData: the chosen disk holds data and wipe was not given.
var ErrHoldsData = errors.New("disk holds data")

// Choose picks the target among disks. A named device is taken as is (unless read-only);
// otherwise removable and read-only disks are left out and the selector filters the rest.
// Several matches narrow to the blank (or interrupted) ones, which must then be exactly one:
// with no selector at all, that is "the only empty disk". The target must be blank or an
// interrupted install, unless wipe.
func Choose(disks []Disk, s Selector, wipe bool) (Disk, error) {
	var match []Disk
	for _, d := range disks {
		if s.Dev != "" && d.Dev != s.Dev ||
			s.Dev == "" && (d.Removable || d.ReadOnly) ||
			s.Model != "" && !globMatch(s.Model, d.Model) ||
			s.Serial != "" && !globMatch(s.Serial, d.Serial) ||
			d.Size < s.MinSize || s.MaxSize != 0 && d.Size > s.MaxSize {
			continue
		}
		match = append(match, d)
	}
	list := func(ds []Disk) string {
		if len(ds) == 0 {
			return "none"
		}
		var s []string
		for _, d := range ds {
			s = append(s, d.String())
		}
		return strings.Join(s, "; ")
	}
	if len(match) > 1 {
		var free []Disk
		for _, d := range match {
			if d.Content.State == Blank || d.Content.State == KeelIncomplete {
				free = append(free, d)
			}
		}
		if len(free) != 1 {
			return Disk{}, fmt.Errorf("%w: %d disks match and %d of them are empty; name one (keel.install=/dev/NAME or a model=, serial=, size selector): %s",
				ErrNoDisk, len(match), len(free), list(match))
		}
		match = free
	}
	if len(match) == 0 {
		return Disk{}, fmt.Errorf("%w: no disk matches the selector; disks: %s", ErrNoDisk, list(disks))
	}
	d := match[0]
	if d.ReadOnly {
		return Disk{}, fmt.Errorf("%w: %s is read-only", ErrNoDisk, d)
	}
	if d.SectorSize != 0 && d.SectorSize != 512 {
		return Disk{}, fmt.Errorf("%w: %s has %d-byte logical sectors; keel's partition table is laid out for 512", ErrNoDisk, d, d.SectorSize)
	}
	if (d.Content.State == Data || d.Content.State == KeelComplete) && !wipe {
		return Disk{}, fmt.Errorf("%w: %s: refusing to install over it; add wipe to keel.install to erase it", ErrHoldsData, d)
	}
	return d, nil
}

func globMatch(pattern, s string) bool {
	ok, _ := path.Match(pattern, strings.TrimSpace(s))
	return ok
}
