package meta

import (
	"errors"
	"fmt"
	"io"
)

// Device is the META partition (or a file standing for it).
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Store reads and writes the record on a Device. It is not safe for concurrent use; the
// init's executor is its only writer.
type Store struct {
	dev    Device
	gen    uint64 // generation of the current record (0: none)
	winner int    // copy holding it, -1 for none
}

// Open reads both copies. A device with no valid copy and a blank one opens with no record:
// writes alternate starting at copy 0, so a blank copy 1 means at most one write ever
// happened, and a torn first write leaves exactly that. Both copies invalid and neither blank
// is ErrNoValidCopy: the caller decides how to recover (it must not guess an upgrade state).
func Open(dev Device) (*Store, []byte, error) {
	s := &Store{dev: dev, winner: -1}
	var payload []byte
	blank := 0
	var errs []error
	for i := range 2 {
		b := make([]byte, CopySize)
		n, err := dev.ReadAt(b, CopyOffset(i))
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("meta: read copy %d: %w", i, err)
		}
		gen, p, err := decodeCopy(b[:n])
		switch {
		case errors.Is(err, ErrBlank):
			blank++
		case err != nil:
			errs = append(errs, fmt.Errorf("copy %d: %w", i, err))
		case s.winner < 0 || gen > s.gen:
			s.gen, s.winner, payload = gen, i, p
		}
	}
	if s.winner < 0 && blank == 0 {
		return s, nil, fmt.Errorf("%w: %w", ErrNoValidCopy, errors.Join(errs...))
	}
	return s, payload, nil
}

// Generation is the generation of the current record (0 for none).
func (s *Store) Generation() uint64 { return s.gen }

// Write stores payload as the next generation in the copy that does not hold the current
// record, and syncs before returning. A write torn at any byte therefore leaves the current
// record intact and readable; a later Write goes to the same (torn) copy again.
func (s *Store) Write(payload []byte) error {
	target := 0
	if s.winner == 0 {
		target = 1
	}
	b, err := encodeCopy(s.gen+1, payload)
	if err != nil {
		return err
	}
	if _, err := s.dev.WriteAt(b, CopyOffset(target)); err != nil {
		return fmt.Errorf("meta: write copy %d: %w", target, err)
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("meta: sync copy %d: %w", target, err)
	}
	s.gen++
	s.winner = target
	return nil
}

// Reset discards both copies (for a recovery from ErrNoValidCopy): the next Write starts at
// generation 1 in copy 0.
func (s *Store) Reset() error {
	zero := make([]byte, HeaderSize)
	for i := range 2 {
		if _, err := s.dev.WriteAt(zero, CopyOffset(i)); err != nil {
			return fmt.Errorf("meta: reset copy %d: %w", i, err)
		}
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("meta: reset: %w", err)
	}
	s.gen, s.winner = 0, -1
	return nil
}
