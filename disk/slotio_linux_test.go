package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// partition is a file standing for a slot partition (O_DIRECT works on the build host's
// filesystem; BLKFLSBUF does not apply to a file).
func partition(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "part")
	if err := os.WriteFile(p, bytes.Repeat([]byte{0xee}, int(size)), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDONLY|0o40000, 0) // O_DIRECT
	if err != nil {
		t.Skipf("O_DIRECT not supported on %s: %v", p, err)
	}
	f.Close()
	return p
}

func slotBytes(n int) ([]byte, string) {
	b := make([]byte, n)
	rand.Read(b)
	s := sha256.Sum256(b)
	return b, hex.EncodeToString(s[:])
}

// TestWriteSlot: a slot of several chunks and a tail that is not a whole sector is written and
// read back; what lies beyond it on the partition is untouched; progress ends at the total.
func TestWriteSlot(t *testing.T) {
	const psize = 24 << 20
	dev := partition(t, psize)
	b, sum := slotBytes(3*slotChunk + 4096 + 1000)
	var last int64
	st, err := WriteSlot(context.Background(), dev, bytes.NewReader(b), int64(len(b)), sum, func(w, total int64) { last = w })
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dev)
	if !bytes.Equal(got[:len(b)], b) || got[len(b)] != 0xee || got[psize-1] != 0xee {
		t.Error("partition does not hold the slot, or more was written")
	}
	if last != int64(len(b)) || st.Bytes != int64(len(b)) || st.Write <= 0 || st.Verify <= 0 {
		t.Errorf("progress %d, stats %+v", last, st)
	}
}

// TestWriteSlotRefusesOtherBytes: a source with other bytes, fewer or more than declared, or
// one that fails, is an error (nothing verified: the caller never arms it); a cancelled write
// stops.
func TestWriteSlotRefusesOtherBytes(t *testing.T) {
	b, sum := slotBytes(slotChunk + 512*3)
	dev := partition(t, 16<<20)
	other := bytes.Clone(b)
	other[100] ^= 1
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		src  io.Reader
		want string
	}{
		{"other bytes", context.Background(), bytes.NewReader(other), "sha256"},
		{"short", context.Background(), bytes.NewReader(b[:len(b)-1]), "held"},
		{"long", context.Background(), io.MultiReader(bytes.NewReader(b), strings.NewReader("x")), "more than"},
		{"failing", context.Background(), io.MultiReader(bytes.NewReader(b[:100]), iotestErr{}), "boom"},
		{"cancelled", cancelled, bytes.NewReader(b), "canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := WriteSlot(tc.ctx, dev, tc.src, int64(len(b)), sum, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := WriteSlot(context.Background(), dev, bytes.NewReader(other), int64(len(b)), sum, nil); !errors.Is(err, ErrVerify) {
		t.Errorf("other bytes: %v, want ErrVerify", err)
	}
}

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, errors.New("boom") }
