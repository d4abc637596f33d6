package sequence

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestOpenFilesClosedAtStop: a file being sent is closed when the services stop (its reader
// gets an error, the filesystem can be unmounted), nothing opens after that, and a file closed
// by its reader is forgotten.
func TestOpenFilesClosedAtStop(t *testing.T) {
	p := filepath.Join(t.TempDir(), "snap.db")
	os.WriteFile(p, []byte("bolt"), 0o600)
	var o openFiles
	done, err := o.open(p)
	if err != nil {
		t.Fatal(err)
	}
	done.Close()
	sending, err := o.open(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.files) != 1 {
		t.Errorf("%d files tracked, want the one still open", len(o.files))
	}
	o.closeAll()
	if _, err := sending.Read(make([]byte, 1)); err == nil {
		t.Error("a file being sent was not closed by closeAll")
	}
	if _, err := o.open(p); !errors.Is(err, errStopping) {
		t.Errorf("open after closeAll: %v", err)
	}
	sending.Close() // its reader's own close still works
}
