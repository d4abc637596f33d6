package install

import (
	"fmt"
	"io"

	"github.com/diskfs/go-diskfs/backend"

	"keel/disk"
)

// syncWriter is a disk being written: every write is followed by a sync where order matters.
type syncWriter interface {
	io.WriterAt
	Sync() error
}

// Mark is written into the unused gap between the partition entries and the first partition
// (LBA 40) before anything else that is not a zero: a disk that holds it and no valid
// partition table is an interrupted install (a cut came after the mark, before the table's
// header), not data. It stays on an installed disk.
const (
	Mark    = "keel: installed, or being installed, here\n"
	MarkOff = 40 * 512
)

// clearDisk zeroes what an earlier life of the disk could be mistaken for: the first MiB of
// every planned partition (old boot sectors and superblocks: an old ESP's loader must not
// become bootable under the new table), all of META (1 MiB), then the disk's last MiB and its
// first (the old partition tables, the primary last: until then the disk reads as it was
// classified, and after, as blank), then writes the Mark.
func clearDisk(f syncWriter, l disk.Layout, size int64) error {
	zero := make([]byte, disk.MiB)
	for _, p := range l.Parts {
		if _, err := f.WriteAt(zero, p.Start); err != nil {
			return fmt.Errorf("zero %s: %w", p.Name, err)
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	// The disk's real end: its size need not be whole MiBs, and the old backup table is at
	// its last sector, beyond the layout's end.
	for _, off := range []int64{size - disk.MiB, 0} {
		if _, err := f.WriteAt(zero, off); err != nil {
			return fmt.Errorf("zero the partition table at %d: %w", off, err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if _, err := f.WriteAt([]byte(Mark), MarkOff); err != nil {
		return fmt.Errorf("write the install mark: %w", err)
	}
	return f.Sync()
}

// writeGPT writes the layout's partition table. go-diskfs writes the backup copy, then the
// primary, each synced; a first pass leaves the protective MBR out and a second (identical
// tables, same GUIDs) writes it first, so that whatever a cut leaves reads as no table at all
// or as keel's whole table (from the primary or the backup copy): never as a bare MBR or a
// damaged GPT, which a rerun would take for another system's data.
//
// size is the disk's: the backup copy goes on its last sector, which lies past the layout's
// end when the size is not whole MiBs.
func writeGPT(f backend.WritableFile, l disk.Layout, size int64) error {
	t := l.GPT()
	t.ProtectiveMBR = false
	if err := t.Write(f, size); err != nil {
		return fmt.Errorf("write GPT: %w", err)
	}
	t.ProtectiveMBR = true
	if err := t.Write(f, size); err != nil {
		return fmt.Errorf("write GPT: %w", err)
	}
	return nil
}
