package machine

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCopyTree copies a small tree the way MoveRoot copies the initramfs: modes, symlinks and
// nested directories kept, the target itself skipped.
func TestCopyTree(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "bin"), 0o755)
	os.MkdirAll(filepath.Join(src, "lib/modules/x"), 0o700)
	os.WriteFile(filepath.Join(src, "init"), []byte("init"), 0o755)
	os.WriteFile(filepath.Join(src, "lib/modules/x/a.ko"), []byte("ko"), 0o600)
	os.Symlink("../init", filepath.Join(src, "bin/init"))
	os.MkdirAll(filepath.Join(src, "skip/me"), 0o755)
	if err := copyTree(src, dst, filepath.Join(src, "skip")); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{"init": 0o755, "lib/modules/x/a.ko": 0o600, "lib/modules/x": 0o700 | os.ModeDir} {
		fi, err := os.Lstat(filepath.Join(dst, p))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: %v %v, want %v", p, fi.Mode(), err, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(dst, "bin/init")); err != nil || l != "../init" {
		t.Errorf("symlink: %q %v", l, err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "bin/init")); err != nil || string(b) != "init" {
		t.Errorf("through the symlink: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "skip")); err == nil {
		t.Error("the skipped directory was copied")
	}
}
