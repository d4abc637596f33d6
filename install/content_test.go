package install

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"keel/disk"
)

const testDiskSize = 1 << 30

// memDisk is a disk in memory that records every write, so a test can cut the power after any
// of them. Sparse: only written MiB-blocks are kept.
type memDisk struct {
	size   int64
	blocks map[int64][]byte
	writes []write
	off    int64
}

type write struct {
	off  int64
	data []byte
	sync bool // a Sync, not a write: what was written before it is durable
}

func newMemDisk(size int64) *memDisk { return &memDisk{size: size, blocks: map[int64][]byte{}} }

func (d *memDisk) ReadAt(b []byte, off int64) (int, error) {
	if off >= d.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(b) && off+int64(n) < d.size {
		p := off + int64(n)
		blk, in := p/disk.MiB, p%disk.MiB
		k := min(len(b)-n, int(disk.MiB-in))
		if data, ok := d.blocks[blk]; ok {
			copy(b[n:n+k], data[in:])
		} else {
			clear(b[n : n+k])
		}
		n += k
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func (d *memDisk) WriteAt(b []byte, off int64) (int, error) {
	d.writes = append(d.writes, write{off: off, data: bytes.Clone(b)})
	d.apply(b, off)
	return len(b), nil
}

func (d *memDisk) apply(b []byte, off int64) {
	for n := 0; n < len(b); {
		p := off + int64(n)
		blk, in := p/disk.MiB, p%disk.MiB
		data, ok := d.blocks[blk]
		if !ok {
			data = make([]byte, disk.MiB)
			d.blocks[blk] = data
		}
		k := copy(data[in:], b[n:])
		n += k
	}
}

func (d *memDisk) clone() *memDisk {
	c := newMemDisk(d.size)
	for k, v := range d.blocks {
		c.blocks[k] = bytes.Clone(v)
	}
	return c
}

func (d *memDisk) Sync() error { d.writes = append(d.writes, write{sync: true}); return nil }
func (d *memDisk) Read(b []byte) (int, error) {
	n, err := d.ReadAt(b, d.off)
	d.off += int64(n)
	return n, err
}
func (d *memDisk) Close() error               { return nil }
func (d *memDisk) Stat() (fs.FileInfo, error) { return sizedInfo{d.size}, nil }
func (d *memDisk) Seek(off int64, whence int) (int64, error) {
	z := &sized{size: d.size, off: d.off}
	n, err := z.Seek(off, whence)
	d.off = n
	return n, err
}

func classify(t *testing.T, d io.ReaderAt, size int64) Content {
	t.Helper()
	c, err := Classify(d, size)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testLayout(t *testing.T) disk.Layout {
	l, err := disk.Plan(testDiskSize, disk.DefaultSpecs)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestClassifyKeel(t *testing.T) {
	l := testLayout(t)
	d := newMemDisk(testDiskSize)
	if c := classify(t, d, d.size); c.State != Blank {
		t.Fatalf("zeroed disk: %+v", c)
	}
	if err := writeGPT(d, l, d.size); err != nil {
		t.Fatal(err)
	}
	c := classify(t, d, d.size)
	esp, _ := l.Find(disk.PartEFI)
	if c.State != KeelIncomplete || c.ESP.Start != esp.Start || c.ESP.Size != esp.Size {
		t.Fatalf("keel GPT: %+v, want KeelIncomplete with the ESP at %d+%d", c, esp.Start, esp.Size)
	}
	// The primary copy lost: the backup still says keel.
	d.apply(make([]byte, disk.MiB), 0)
	if c := classify(t, d, d.size); c.State != KeelIncomplete {
		t.Fatalf("backup GPT only: %+v", c)
	}
	// Both copies damaged: someone's data.
	d2 := newMemDisk(testDiskSize)
	writeGPT(d2, l, d2.size)
	// Flip (not set: a byte already 0xff would leave the copy valid, one run in 256) a byte of
	// each header's CRC field.
	for _, off := range []int64{512 + 16, testDiskSize - 512 + 16} { // primary, backup
		b := make([]byte, 1)
		d2.ReadAt(b, off)
		d2.apply([]byte{^b[0]}, off)
	}
	if c := classify(t, d2, d2.size); c.State != Data || !strings.Contains(c.What, "damaged GPT") {
		t.Fatalf("damaged GPT: %+v", c)
	}
	// Another system's GPT.
	other := l
	other.Parts = append([]disk.Part(nil), l.Parts...)
	other.Parts[4].Name = "root"
	d3 := newMemDisk(testDiskSize)
	writeGPT(d3, other, d3.size)
	if c := classify(t, d3, d3.size); c.State != Data || !strings.Contains(c.What, "root") {
		t.Fatalf("other GPT: %+v", c)
	}
}

// TestInstallWritesCutAnywhere cuts the power at every point of the disk's preparation
// (clearing, the mark, the partition table), with every subset of the writes since the last
// sync made durable (a disk may persist unsynced writes in any order). From an interrupted
// install or a blank disk, every disk left behind must read as blank or as an interrupted
// install, which a rerun installs onto without wipe; never as data (the rerun would refuse).
// From a disk holding data (installed over with wipe) it may also still read as data: the
// rerun has the same wipe. The disk is 1 GiB and 4 KiB: not whole MiBs, as most real disks.
func TestInstallWritesCutAnywhere(t *testing.T) {
	const size = testDiskSize + 4096
	l := testLayout(t)
	esp, _ := l.Find(disk.PartEFI)
	interrupted := newMemDisk(size)
	if err := writeGPT(interrupted, l, size); err != nil {
		t.Fatal(err)
	}
	interrupted.apply([]byte("FAT32   "), esp.Start+0x52) // an earlier attempt's ESP, no loader yet
	data := newMemDisk(size)
	data.apply([]byte{0x53, 0xef}, 0x438)    // an ext4 filesystem
	data.apply([]byte("EFI PART"), size-512) // and a stray backup GPT header at the real end
	for _, c := range []struct {
		name  string
		start *memDisk
		also  State
	}{{"interrupted", interrupted, KeelIncomplete}, {"blank", newMemDisk(size), Blank}, {"data", data, Data}} {
		t.Run(c.name, func(t *testing.T) {
			run := c.start.clone()
			if err := clearDisk(run, l, size); err != nil {
				t.Fatal(err)
			}
			if err := writeGPT(run, l, size); err != nil {
				t.Fatal(err)
			}
			ops := run.writes
			states := 0
			for k := 0; k <= len(ops); k++ {
				last := 0 // writes before the last sync up to k are durable
				for i := k - 1; i >= 0; i-- {
					if ops[i].sync {
						last = i + 1
						break
					}
				}
				var pending []write
				for _, w := range ops[last:k] {
					if !w.sync {
						pending = append(pending, w)
					}
				}
				if len(pending) > 12 {
					t.Fatalf("%d unsynced writes at once", len(pending))
				}
				for mask := 0; mask < 1<<len(pending); mask++ {
					d := c.start.clone()
					for _, w := range ops[:last] {
						if !w.sync {
							d.apply(w.data, w.off)
						}
					}
					for i, w := range pending {
						if mask&(1<<i) != 0 {
							d.apply(w.data, w.off)
						}
					}
					got := classify(t, d, size)
					if got.State != Blank && got.State != KeelIncomplete && got.State != c.also {
						t.Fatalf("cut after op %d of %d (pending mask %b): %v (%s)", k, len(ops), mask, got.State, got.What)
					}
					states++
				}
			}
			final := run.clone()
			if got := classify(t, final, size); got.State != KeelIncomplete {
				t.Fatalf("after every write: %v", got.State)
			}
			// The backup table is on the disk's real last sector: it alone still reads.
			final.apply(make([]byte, disk.MiB), 0)
			if got := classify(t, final, size); got.State != KeelIncomplete || got.ESP.Start != esp.Start {
				t.Fatalf("backup table alone: %+v", got)
			}
			t.Logf("%d operations, %d disk states after a cut: each blank, an interrupted install or as it started", len(ops), states)
		})
	}
}

// TestGPTOnOddSizedDisk: the table written for a disk that is not whole MiBs passes sgdisk -v
// (the backup on the last sector).
func TestGPTOnOddSizedDisk(t *testing.T) {
	sgdisk, err := exec.LookPath("sgdisk")
	if err != nil {
		t.Skip("no sgdisk on this host (make deps installs gdisk)")
	}
	p := filepath.Join(t.TempDir(), "disk")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	const size = testDiskSize + 4096
	f.Truncate(size)
	if err := writeGPT(f, testLayout(t), size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command(sgdisk, "-v", p).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No problems found") {
		t.Fatalf("sgdisk -v: %v\n%s", err, out)
	}
}

// TestClassifyData: what other systems leave on a disk, made by the real tools where the host
// has them.
func TestClassifyData(t *testing.T) {
	const size = 64 << 20
	mk := func(t *testing.T, name string, args ...string) string {
		p := filepath.Join(t.TempDir(), "disk")
		if err := os.Truncate(p, 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		f.Close()
		if name != "" {
			bin, err := exec.LookPath(name)
			if err != nil {
				t.Skipf("%s not on this host", name)
			}
			if out, err := exec.Command(bin, append(args, p)...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", name, err, out)
			}
		}
		return p
	}
	check := func(t *testing.T, p, want string) {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		c := classify(t, f, size)
		if c.State != Data || !strings.Contains(c.What, want) {
			t.Fatalf("got %v (%s), want data: %s", c.State, c.What, want)
		}
	}
	t.Run("ext4", func(t *testing.T) { check(t, mk(t, "mke2fs", "-q", "-t", "ext4", "-F"), "an ext2/3/4 filesystem") })
	t.Run("fat32", func(t *testing.T) { check(t, mk(t, "mkfs.fat", "-F", "32"), "a FAT32 filesystem") })
	t.Run("mbr", func(t *testing.T) {
		p := mk(t, "")
		f, _ := os.OpenFile(p, os.O_RDWR, 0)
		f.WriteAt([]byte{0x80, 0, 0, 0, 0x83, 0, 0, 0, 0, 8, 0, 0, 0, 0, 1, 0}, 446)
		f.WriteAt([]byte{0x55, 0xaa}, 510)
		f.Close()
		check(t, p, "MBR partition table")
	})
	t.Run("unknown", func(t *testing.T) {
		p := mk(t, "")
		f, _ := os.OpenFile(p, os.O_RDWR, 0)
		f.WriteAt([]byte("some bytes"), size-4096)
		f.Close()
		check(t, p, "unknown content")
	})
	if _, err := Classify(bytes.NewReader(nil), disk.MiB); !errors.Is(err, ErrTooSmall) {
		t.Errorf("tiny disk: %v", err)
	}
}

func TestChoose(t *testing.T) {
	blank := Content{State: Blank}
	data := Content{State: Data, What: "an ext2/3/4 filesystem"}
	nvme := Disk{Dev: "/dev/nvme0n1", Size: 512 << 30, Model: "Samsung SSD 980", Serial: "S4EW", Content: blank}
	sata := Disk{Dev: "/dev/sda", Size: 4 << 40, Model: "ST4000NM", Content: data}
	usb := Disk{Dev: "/dev/sdb", Size: 16 << 30, Model: "Cruzer", Removable: true, Content: blank}
	interrupted := Disk{Dev: "/dev/sdc", Size: 256 << 30, Content: Content{State: KeelIncomplete}}
	complete := Disk{Dev: "/dev/sdd", Size: 256 << 30, Content: Content{State: KeelComplete}}
	all := []Disk{nvme, sata, usb}
	ok := []struct {
		name  string
		disks []Disk
		sel   Selector
		wipe  bool
		want  string
	}{
		{"the only empty disk (the stick is removable)", all, Selector{}, false, "/dev/nvme0n1"},
		{"named", all, Selector{Dev: "/dev/nvme0n1"}, false, "/dev/nvme0n1"},
		{"named removable", all, Selector{Dev: "/dev/sdb"}, false, "/dev/sdb"},
		{"model", all, Selector{Model: "ST4000*"}, true, "/dev/sda"},
		{"size", all, Selector{MinSize: 1 << 40}, true, "/dev/sda"},
		{"serial", all, Selector{Serial: "S4*"}, false, "/dev/nvme0n1"},
		{"an interrupted install needs no wipe", []Disk{interrupted, sata}, Selector{}, false, "/dev/sdc"},
		{"wipe a complete install", []Disk{complete}, Selector{}, true, "/dev/sdd"},
	}
	for _, c := range ok {
		d, err := Choose(c.disks, c.sel, c.wipe)
		if err != nil || d.Dev != c.want {
			t.Errorf("%s: got %s, %v; want %s", c.name, d.Dev, err, c.want)
		}
	}
	bad := []struct {
		name  string
		disks []Disk
		sel   Selector
		err   error
		msg   string
	}{
		{"data without wipe", all, Selector{Dev: "/dev/sda"}, ErrHoldsData, "holds an ext2/3/4 filesystem): refusing"},
		{"complete install without wipe", []Disk{complete}, Selector{}, ErrHoldsData, "a complete keel install"},
		{"two empty disks", []Disk{nvme, {Dev: "/dev/nvme1n1", Size: 1 << 40, Content: blank}}, Selector{}, ErrNoDisk, "2 disks match and 2 of them are empty"},
		{"only data disks", []Disk{sata, {Dev: "/dev/sdx", Size: 1 << 40, Content: data}}, Selector{}, ErrNoDisk, "0 of them are empty"},
		{"no match", all, Selector{Model: "Intel*"}, ErrNoDisk, "no disk matches"},
		{"absent device", all, Selector{Dev: "/dev/vda"}, ErrNoDisk, "/dev/nvme0n1 (524288 MiB, Samsung SSD 980, serial S4EW, blank)"},
		{"read-only", []Disk{{Dev: "/dev/sr0", Size: 1 << 30, ReadOnly: true}}, Selector{Dev: "/dev/sr0"}, ErrNoDisk, "read-only"},
		{"4K sectors", []Disk{{Dev: "/dev/sdq", Size: 1 << 40, SectorSize: 4096, Content: blank}}, Selector{}, ErrNoDisk, "4096-byte logical sectors"},
		{"too big", all, Selector{MaxSize: 100 << 30, Model: "Samsung*"}, ErrNoDisk, "no disk matches"},
	}
	for _, c := range bad {
		_, err := Choose(c.disks, c.sel, false)
		if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %v saying %q", c.name, err, c.err, c.msg)
		}
	}
}
