package disk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Writing a slot: the bytes stream from their source (the registry, decompressed) straight
// onto the inactive partition, hashed on the way, then the partition is read back and hashed
// again before anything may arm it. It is safe to write a partition in place because it is
// neither booted nor committed and is armed only once verified.
//
// Two stages overlap I/O with hashing: the caller's goroutine reads and hashes chunk n+1 while
// a writer writes chunk n with O_DIRECT (the bytes go to the disk as they are written, not
// into a page cache that fsync then has to flush: 5x slower under QEMU); the read-back reads
// chunk n+1 while chunk n is hashed. Memory is slotBuffers chunks, whatever the slot's size.

const (
	slotChunk   = 4 << 20
	slotBuffers = 3
	alignment   = 4096 // O_DIRECT buffers
)

// WriteStats says where a slot write spent its time.
type WriteStats struct {
	Bytes int64
	// Write is the streaming write to the end of its fsync; Verify the read-back check.
	Write, Verify time.Duration
	// SourceWait is the part of Write spent waiting for the source (network, decompression).
	SourceWait time.Duration
	// Hash is the time spent hashing, both passes.
	Hash time.Duration
}

// ErrVerify marks a slot whose bytes, as read back or as streamed, are not the expected ones.
var ErrVerify = errors.New("disk: slot verification failed")

// WriteSlot streams size bytes from src onto the partition dev, checks that src held exactly
// those bytes with SHA-256 sum (hex), syncs, and reads the partition back to check them
// again. progress is called as bytes are written. ctx is checked between chunks.
func WriteSlot(ctx context.Context, dev string, src io.Reader, size int64, sum string, progress func(written, total int64)) (WriteStats, error) {
	var st WriteStats
	dst, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return st, fmt.Errorf("write slot %s: %w", dev, err)
	}
	defer dst.Close()
	sector := logicalSector(dst)
	// A failed write stops the reading of the source (it may be a download).
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	pool := make(chan []byte, slotBuffers)
	for range slotBuffers {
		pool <- alignedBuffer(slotChunk, alignment)
	}
	type chunk struct {
		b   []byte
		n   int
		off int64
	}
	work := make(chan chunk, slotBuffers)
	werr := make(chan error, 1)
	go func() {
		var err error
		for c := range work {
			if err == nil {
				if err = writeChunk(dst, dev, c.b[:c.n], c.off, sector); err != nil {
					stop()
				}
			}
			pool <- c.b
		}
		werr <- err
	}()

	t0 := time.Now()
	h := sha256.New()
	var off int64
	var last time.Time
	var rerr error
	for rerr == nil {
		if err := ctx.Err(); err != nil {
			rerr = err
			break
		}
		b := <-pool
		ts := time.Now()
		n, err := io.ReadFull(src, b)
		st.SourceWait += time.Since(ts)
		if n > 0 {
			th := time.Now()
			h.Write(b[:n])
			st.Hash += time.Since(th)
			if off+int64(n) > size {
				rerr = fmt.Errorf("%w: the source holds more than the %d bytes declared", ErrVerify, size)
				pool <- b
				break
			}
			work <- chunk{b: b, n: n, off: off}
			off += int64(n)
			if progress != nil && time.Since(last) > 250*time.Millisecond {
				last = time.Now()
				progress(off, size)
			}
		} else {
			pool <- b
		}
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			rerr = io.EOF // the source's end (a short last chunk is queued above)
		case err != nil:
			rerr = fmt.Errorf("read the slot's source after %d bytes: %w", off, err)
		}
	}
	close(work)
	if err := <-werr; err != nil {
		return st, err // first: a cancel it caused is not the story
	}
	if rerr != io.EOF {
		return st, rerr
	}
	// A source that ended short, or with other bytes: nothing verified is armed, but say so.
	if got := hex.EncodeToString(h.Sum(nil)); off != size || got != sum {
		return st, fmt.Errorf("%w: the source held %d bytes with sha256 %s, want %d with %s", ErrVerify, off, got, size, sum)
	}
	if err := dst.Sync(); err != nil {
		return st, fmt.Errorf("sync %s: %w", dev, err)
	}
	st.Write, st.Bytes = time.Since(t0), off
	if progress != nil {
		progress(off, size)
	}
	// Read back from the device, not from a cache.
	if err := unix.IoctlSetInt(int(dst.Fd()), unix.BLKFLSBUF, 0); err != nil && !errors.Is(err, unix.ENOTTY) {
		return st, fmt.Errorf("flush %s: %w", dev, err)
	}
	t1 := time.Now()
	got, hashT, err := hashDevice(ctx, dev, size, sector, pool)
	st.Verify, st.Hash = time.Since(t1), st.Hash+hashT
	if err != nil {
		return st, err
	}
	if got != sum {
		return st, fmt.Errorf("%w: read back %s: sha256 %s, wrote %s", ErrVerify, dev, got, sum)
	}
	return st, nil
}

// logicalSector is the device's logical block size, the unit of O_DIRECT transfers (512 for a
// file standing in for a partition).
func logicalSector(f *os.File) int {
	if n, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET); err == nil && n > 0 {
		return n
	}
	return 512
}

// writeChunk writes b at off: with O_DIRECT for whole sectors, the tail of the slot (not a
// whole sector) through the page cache, synced.
func writeChunk(dst *os.File, dev string, b []byte, off int64, sector int) error {
	whole := len(b) / sector * sector
	if whole > 0 {
		if _, err := dst.WriteAt(b[:whole], off); err != nil {
			return fmt.Errorf("write %s at %d: %w", dev, off, err)
		}
	}
	if whole == len(b) {
		return nil
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(b[whole:], off+int64(whole)); err != nil {
		return fmt.Errorf("write %s at %d: %w", dev, off+int64(whole), err)
	}
	return f.Sync()
}

// hashDevice reads size bytes from the start of dev with O_DIRECT (a reader goroutine one
// chunk ahead of the hashing) and returns their SHA-256.
func hashDevice(ctx context.Context, dev string, size int64, sector int, pool chan []byte) (string, time.Duration, error) {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return "", 0, fmt.Errorf("re-read %s: %w", dev, err)
	}
	defer f.Close()
	type chunk struct {
		b   []byte
		n   int
		err error
	}
	read := make(chan chunk, slotBuffers)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(read)
		for off := int64(0); off < size; {
			var b []byte
			select {
			case b = <-pool:
			case <-stop:
				return
			}
			want := min(int64(len(b)), size-off)
			sec := int64(sector)
			n, err := f.ReadAt(b[:(want+sec-1)/sec*sec], off) // O_DIRECT: whole sectors
			if int64(n) > want {
				n = int(want)
			}
			if err == io.EOF && int64(n) == want {
				err = nil
			}
			if err == nil && ctx.Err() != nil {
				err = ctx.Err()
			}
			select {
			case read <- chunk{b: b, n: n, err: err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
			off += int64(n)
		}
	}()
	h := sha256.New()
	var hashT time.Duration
	var total int64
	for c := range read {
		if c.err != nil {
			return "", hashT, fmt.Errorf("re-read %s at %d: %w", dev, total, c.err)
		}
		t := time.Now()
		h.Write(c.b[:c.n])
		hashT += time.Since(t)
		total += int64(c.n)
		pool <- c.b
	}
	if total != size {
		return "", hashT, fmt.Errorf("re-read %s: %d of %d bytes", dev, total, size)
	}
	return hex.EncodeToString(h.Sum(nil)), hashT, nil
}

// alignedBuffer returns size bytes starting at an align boundary (O_DIRECT needs it).
func alignedBuffer(size, align int) []byte {
	b := make([]byte, size+align)
	off := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) & uintptr(align-1)); r != 0 {
		off = align - r
	}
	return b[off : off+size]
}
