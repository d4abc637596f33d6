// Package meta is the node's crash-safe record on the raw META partition: two fixed copies,
// each with a generation and a checksum, so that a write torn at any byte leaves the previous
// record readable. The codec and the store logic are pure (they work on an io.ReaderAt /
// io.WriterAt); the caller hands in the partition.
package meta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// One copy of the record, at CopyOffset(i):
//
//	offset  size  field
//	0       8     magic "KEELMETA"
//	8       4     format version, little endian (1)
//	12      4     payload length n, little endian
//	16      8     generation, little endian; the higher valid copy wins
//	24      4     CRC-32C (Castagnoli) of bytes [0,24) and the payload
//	28      4     zero
//	32      n     payload (JSON of Record)
//
// The payload is at most CopySize-HeaderSize bytes.
const (
	Magic         = "KEELMETA"
	FormatVersion = 1
	HeaderSize    = 32
	// CopySize is the room of each copy; the partition is 1 MiB, holding two.
	CopySize = 512 << 10
	// MaxPayload is the largest payload a copy can hold.
	MaxPayload = CopySize - HeaderSize
)

var (
	// ErrBlank means the copy was never written (all zero header).
	ErrBlank = errors.New("meta: blank copy")
	// ErrCorrupt means the copy is torn or damaged.
	ErrCorrupt = errors.New("meta: corrupt copy")
	// ErrNoValidCopy means neither copy holds a record and at least one is not blank.
	ErrNoValidCopy = errors.New("meta: no valid copy")
	// ErrTooLarge means the payload does not fit a copy.
	ErrTooLarge = errors.New("meta: payload too large")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CopyOffset is where copy i (0 or 1) starts.
func CopyOffset(i int) int64 { return int64(i) * CopySize }

// encodeCopy returns header+payload for generation gen. It never touches the caller's payload.
func encodeCopy(gen uint64, payload []byte) ([]byte, error) {
	if uint64(len(payload)) > MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes, room for %d", ErrTooLarge, len(payload), MaxPayload)
	}
	b := make([]byte, HeaderSize+len(payload))
	copy(b[0:8], Magic)
	binary.LittleEndian.PutUint32(b[8:], FormatVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(payload)))
	binary.LittleEndian.PutUint64(b[16:], gen)
	copy(b[HeaderSize:], payload)
	binary.LittleEndian.PutUint32(b[24:], checksum(b[:24], payload))
	return b, nil
}

func checksum(head, payload []byte) uint32 {
	c := crc32.Update(0, castagnoli, head)
	return crc32.Update(c, castagnoli, payload)
}

// decodeCopy validates one copy read from its offset (b holds at least the header; the
// payload is read from b as far as the length says).
func decodeCopy(b []byte) (gen uint64, payload []byte, err error) {
	if len(b) < HeaderSize {
		return 0, nil, fmt.Errorf("%w: short read", ErrCorrupt)
	}
	if bytes.Equal(b[:HeaderSize], make([]byte, HeaderSize)) {
		return 0, nil, ErrBlank
	}
	if string(b[0:8]) != Magic {
		return 0, nil, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != FormatVersion {
		return 0, nil, fmt.Errorf("%w: format version %d", ErrCorrupt, v)
	}
	n := uint64(binary.LittleEndian.Uint32(b[12:]))
	if n > MaxPayload || uint64(HeaderSize)+n > uint64(len(b)) {
		return 0, nil, fmt.Errorf("%w: payload length %d", ErrCorrupt, n)
	}
	payload = b[HeaderSize : HeaderSize+n]
	if binary.LittleEndian.Uint32(b[24:]) != checksum(b[:24], payload) {
		return 0, nil, fmt.Errorf("%w: checksum", ErrCorrupt)
	}
	return binary.LittleEndian.Uint64(b[16:]), append([]byte(nil), payload...), nil
}
