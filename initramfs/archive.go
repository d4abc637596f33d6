// Package initramfs builds the node's initramfs: a gzipped newc cpio archive holding the init,
// the kernel modules it needs (with their dependency closure and a trimmed modules.dep), the
// device nodes the kernel expects before devtmpfs, and any extra files or host binaries (with
// their shared-library closure).
//
// The output is deterministic: the same inputs give the same bytes (sorted paths, zero times
// and owners, a gzip header without name or time).
package initramfs

import (
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// Archive is an initramfs under construction. The zero value is not usable; call New.
type Archive struct {
	recs map[string]cpio.Record
}

// New returns an archive holding the skeleton every boot needs: the mount points the init
// uses and /dev/console, without which the init's output never reaches the console (the
// kernel opens it before devtmpfs is mounted).
func New() *Archive {
	a := &Archive{recs: map[string]cpio.Record{}}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "var", "etc", "boot"} {
		a.recs[d] = cpio.Directory(d, 0o755)
	}
	a.recs["dev/console"] = cpio.CharDev("dev/console", 0o600, 5, 1)
	a.recs["dev/null"] = cpio.CharDev("dev/null", 0o666, 1, 3)
	return a
}

func clean(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

// AddFile adds a regular file with the given permission bits.
func (a *Archive) AddFile(dst string, data []byte, perm uint64) error {
	dst = clean(dst)
	if dst == "" {
		return fmt.Errorf("initramfs: add file: empty path")
	}
	if r, ok := a.recs[dst]; ok && r.Mode&cpio.S_IFMT != cpio.S_IFREG {
		return fmt.Errorf("initramfs: add file %s: already a non-file entry", dst)
	}
	a.recs[dst] = cpio.StaticRecord(data, cpio.Info{Name: dst, Mode: cpio.S_IFREG | perm, NLink: 1})
	return nil
}

// AddHostFile copies a host file, keeping its permission bits.
func (a *Archive) AddHostFile(dst, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("initramfs: add %s: %w", src, err)
	}
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("initramfs: add %s: %w", src, err)
	}
	return a.AddFile(dst, b, uint64(fi.Mode().Perm()))
}

// AddDir adds an empty directory.
func (a *Archive) AddDir(dst string) {
	dst = clean(dst)
	a.recs[dst] = cpio.Directory(dst, 0o755)
}

// AddSymlink adds a symbolic link.
func (a *Archive) AddSymlink(dst, target string) {
	dst = clean(dst)
	a.recs[dst] = cpio.Symlink(dst, target)
}

// Has reports whether the archive has an entry at p.
func (a *Archive) Has(p string) bool {
	_, ok := a.recs[clean(p)]
	return ok
}

// Paths lists the archive's entries in write order.
func (a *Archive) Paths() []string {
	// Parents the caller did not add explicitly become 0755 directories.
	for p := range a.recs {
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := a.recs[d]; !ok {
				a.recs[d] = cpio.Directory(d, 0o755)
			}
		}
	}
	names := make([]string, 0, len(a.recs))
	for p := range a.recs {
		names = append(names, p)
	}
	// Lexical order puts every directory before its children ("a" < "a/b").
	sort.Strings(names)
	return names
}

// WriteTo writes the gzipped cpio archive.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	zw, err := gzip.NewWriterLevel(cw, gzip.BestCompression)
	if err != nil {
		return 0, err
	}
	rw := cpio.Newc.Writer(zw)
	for _, p := range a.Paths() {
		if err := rw.WriteRecord(cpio.MakeReproducible(a.recs[p])); err != nil {
			return cw.n, fmt.Errorf("initramfs: write %s: %w", p, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return cw.n, fmt.Errorf("initramfs: write trailer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return cw.n, fmt.Errorf("initramfs: gzip: %w", err)
	}
	return cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
