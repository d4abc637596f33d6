package nodeimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"keel/internal/testenv"
)

// TestInitramfsDeterministic builds the real initramfs (init, module closure of the cached
// Debian kernel, mke2fs with its libraries) twice: same inputs, same bytes.
func TestInitramfsDeterministic(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	k, err := FindKernel(filepath.Join(root, "build", "cache"))
	if err != nil {
		t.Skip(err) // make test runs make deps first
	}
	initPath := filepath.Join(t.TempDir(), "init")
	if err := BuildInit(context.Background(), root, "det-1", initPath); err != nil {
		t.Fatal(err)
	}
	o := InitramfsOptions{Init: initPath, Kernel: k, Binaries: DefaultBinaries()}
	a, err := BuildInitramfs(o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildInitramfs(o)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two builds from the same inputs differ")
	}
	// Rebuilding the init itself is reproducible too (-trimpath, no build id from paths).
	init2 := filepath.Join(t.TempDir(), "init")
	if err := BuildInit(context.Background(), root, "det-1", init2); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(initPath)
	b2, _ := os.ReadFile(init2)
	if !bytes.Equal(b1, b2) {
		t.Error("two builds of the init differ")
	}
	// The firmware tg3 declares rides along when make deps has unpacked it.
	if _, err := os.Stat(filepath.Join(k.Firmware[0], "tigon", "tg3.bin")); err == nil {
		zr, err := gzip.NewReader(bytes.NewReader(a))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"lib/firmware/tigon/tg3.bin", "lib/firmware/tigon/tg3_tso5.bin"} {
			if !bytes.Contains(raw, []byte(f+"\x00")) {
				t.Errorf("initramfs lacks %s", f)
			}
		}
	}
	t.Logf("initramfs: %d bytes", len(a))
}

func TestBuildInitRejectsBadVersion(t *testing.T) {
	if err := BuildInit(context.Background(), "..", "bad version", filepath.Join(t.TempDir(), "x")); err == nil {
		t.Error("version with a space accepted")
	}
}
