package meta

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// mem is a META partition in memory. limit, when >= 0, is how many more bytes a WriteAt may
// apply before the "power" goes: the rest of that write and every later one are lost.
type mem struct {
	b     []byte
	limit int
	syncs int
}

func newMem() *mem { return &mem{b: make([]byte, 2*CopySize), limit: -1} }

func (m *mem) ReadAt(p []byte, off int64) (int, error) {
	return copy(p, m.b[off:]), nil
}

func (m *mem) WriteAt(p []byte, off int64) (int, error) {
	n := len(p)
	if m.limit >= 0 {
		n = min(n, m.limit)
		m.limit -= n
	}
	copy(m.b[off:], p[:n])
	if n < len(p) {
		return n, errors.New("power lost")
	}
	return n, nil
}

func (m *mem) Sync() error { m.syncs++; return nil }

func (m *mem) clone() *mem { return &mem{b: bytes.Clone(m.b), limit: -1} }

func mustOpen(t *testing.T, d Device) (*Store, []byte) {
	t.Helper()
	s, p, err := Open(d)
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

func TestBlankThenWrites(t *testing.T) {
	d := newMem()
	s, p := mustOpen(t, d)
	if p != nil || s.Generation() != 0 {
		t.Fatalf("blank device: payload %q gen %d", p, s.Generation())
	}
	for i := 1; i <= 5; i++ {
		want := []byte(fmt.Sprintf(`{"n":%d}`, i))
		if err := s.Write(want); err != nil {
			t.Fatal(err)
		}
		_, got := mustOpen(t, d)
		if !bytes.Equal(got, want) {
			t.Fatalf("after write %d: read %q", i, got)
		}
	}
	if d.syncs != 5 {
		t.Errorf("syncs = %d, want one per write", d.syncs)
	}
	if s.Generation() != 5 {
		t.Errorf("generation = %d", s.Generation())
	}
}

// TestTornWriteAtEveryByte cuts the power after every possible number of bytes of a write,
// for a write into each of the two copies, and checks that a fresh Open always reads either
// the old record or the new one, never anything else.
func TestTornWriteAtEveryByte(t *testing.T) {
	for _, prior := range []int{1, 2} { // the next write goes to copy 1, then to copy 0
		base := newMem()
		s, _ := mustOpen(t, base)
		var old []byte
		for i := range prior {
			old = []byte(fmt.Sprintf(`{"state":"old-%d"}`, i))
			if err := s.Write(old); err != nil {
				t.Fatal(err)
			}
		}
		next := []byte(`{"state":"new","pad":"` + string(bytes.Repeat([]byte("x"), 100)) + `"}`)
		total := HeaderSize + len(next)
		for cut := 0; cut <= total; cut++ {
			d := base.clone()
			st, _ := mustOpen(t, d)
			d.limit = cut
			werr := st.Write(next)
			_, got, err := Open(d)
			if err != nil {
				t.Fatalf("prior %d, cut at %d: open: %v", prior, cut, err)
			}
			switch {
			case bytes.Equal(got, next):
				if cut < total {
					t.Fatalf("prior %d, cut at %d: new record read back from a torn write", prior, cut)
				}
			case bytes.Equal(got, old):
				if cut == total && werr == nil {
					t.Fatalf("prior %d: complete write not read back", prior)
				}
			default:
				t.Fatalf("prior %d, cut at %d: read %q, want old or new", prior, cut, got)
			}
		}
	}
}

// TestTornThenRetried: after a torn write, the next write must go to the same torn copy,
// not over the good one.
func TestTornThenRetried(t *testing.T) {
	d := newMem()
	s, _ := mustOpen(t, d)
	s.Write([]byte("a"))
	s.Write([]byte("b"))
	d.limit = HeaderSize + 1 // torn in the middle of the payload
	s.Write([]byte("cc"))
	d.limit = -1
	s2, got := mustOpen(t, d)
	if string(got) != "b" {
		t.Fatalf("after torn write: %q", got)
	}
	for _, p := range []string{"d", "e"} {
		if err := s2.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
		if _, got := mustOpen(t, d); string(got) != p {
			t.Fatalf("read %q, want %q", got, p)
		}
	}
}

// TestWritePrefixes replays a sequence of writes and cuts the power after every prefix of
// the sequence (each at a random-free fixed mid-point of the next write too).
func TestWritePrefixes(t *testing.T) {
	seq := [][]byte{[]byte("r1"), []byte("r2-longer"), []byte("r3"), []byte(""), []byte("r5")}
	for k := 0; k <= len(seq); k++ {
		for _, tear := range []int{-1, 0, 5, HeaderSize, HeaderSize + 1} {
			d := newMem()
			s, _ := mustOpen(t, d)
			for i := 0; i < k; i++ {
				s.Write(seq[i])
			}
			if k < len(seq) && tear >= 0 {
				d.limit = tear
				s.Write(seq[k])
			}
			_, got, err := Open(d)
			if err != nil {
				t.Fatalf("k=%d tear=%d: %v", k, tear, err)
			}
			want := []byte(nil)
			if k > 0 {
				want = seq[k-1]
			}
			if k < len(seq) && tear >= HeaderSize+len(seq[k]) {
				want = seq[k] // the "tear" came after the last byte: the write completed
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("k=%d tear=%d: read %q, want %q", k, tear, got, want)
			}
		}
	}
}

func TestCorruptBoth(t *testing.T) {
	d := newMem()
	s, _ := mustOpen(t, d)
	s.Write([]byte("a"))
	s.Write([]byte("b"))
	d.b[HeaderSize] ^= 0xff          // copy 0's payload
	d.b[CopySize+HeaderSize] ^= 0xff // copy 1's payload
	s2, _, err := Open(d)
	if !errors.Is(err, ErrNoValidCopy) {
		t.Fatalf("err = %v, want ErrNoValidCopy", err)
	}
	if err := s2.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := s2.Write([]byte("fresh")); err != nil {
		t.Fatal(err)
	}
	if _, got := mustOpen(t, d); string(got) != "fresh" {
		t.Errorf("after reset: %q", got)
	}
}

func TestTooLarge(t *testing.T) {
	s, _ := mustOpen(t, newMem())
	if err := s.Write(make([]byte, MaxPayload+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("err = %v", err)
	}
	if err := s.Write(make([]byte, MaxPayload)); err != nil {
		t.Errorf("max payload: %v", err)
	}
}

func FuzzDecodeCopy(f *testing.F) {
	good, _ := encodeCopy(7, []byte(`{"x":1}`))
	f.Add(good)
	f.Add(make([]byte, HeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		gen, p, err := decodeCopy(b)
		if !bytes.Equal(in, b) {
			t.Fatal("decode mutated its input")
		}
		if err != nil {
			return
		}
		enc, err := encodeCopy(gen, p)
		if err != nil {
			t.Fatal(err)
		}
		gen2, p2, err := decodeCopy(enc)
		if err != nil || gen2 != gen || !bytes.Equal(p, p2) {
			t.Fatalf("decode→encode→decode disagrees: %v", err)
		}
	})
}
