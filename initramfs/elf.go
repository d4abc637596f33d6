package initramfs

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// libDirs is where the dynamic loader of a Debian amd64 system looks, in its order.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// ErrNotDynamic is returned by Interpreter for a static executable.
var ErrNotDynamic = errors.New("not dynamically linked")

// Interpreter returns the ELF's program interpreter (PT_INTERP).
func Interpreter(f *elf.File) (string, error) {
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return "", err
			}
			return strings.TrimRight(string(b), "\x00"), nil
		}
	}
	return "", ErrNotDynamic
}

// LibClosure returns the shared objects a host binary needs at run time: its interpreter and
// the transitive DT_NEEDED libraries, each as the path the loader will open (which may be a
// symlink on the host). A static binary has an empty closure.
func LibClosure(bin string) ([]string, error) {
	seen := map[string]bool{}
	var walk func(file string, isMain bool) error
	walk = func(file string, isMain bool) error {
		f, err := elf.Open(file)
		if err != nil {
			return fmt.Errorf("elf %s: %w", file, err)
		}
		defer f.Close()
		if isMain {
			interp, err := Interpreter(f)
			if errors.Is(err, ErrNotDynamic) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("elf %s: interpreter: %w", file, err)
			}
			seen[interp] = true
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("elf %s: needed: %w", file, err)
		}
		var runpath []string
		for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
			if v, err := f.DynString(tag); err == nil {
				for _, s := range v {
					for _, d := range strings.Split(s, ":") {
						runpath = append(runpath, strings.ReplaceAll(d, "$ORIGIN", filepath.Dir(file)))
					}
				}
			}
		}
		for _, lib := range needed {
			p, err := findLib(lib, runpath)
			if err != nil {
				return fmt.Errorf("elf %s: %w", file, err)
			}
			if seen[p] {
				continue
			}
			seen[p] = true
			if err := walk(p, false); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(bin, true); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

func findLib(name string, runpath []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range append(runpath, libDirs...) {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("shared library %s not found in %v", name, libDirs)
}

// AddBinary copies a host executable to dst with every shared object it needs, each at the
// path the loader opens (symlinks resolved to their content), so it runs in the initramfs.
func (a *Archive) AddBinary(dst, src string) error {
	libs, err := LibClosure(src)
	if err != nil {
		return fmt.Errorf("initramfs: add binary %s: %w", src, err)
	}
	if err := a.AddHostFile(dst, src); err != nil {
		return err
	}
	for _, l := range libs {
		if a.Has(l) {
			continue
		}
		if err := a.AddHostFile(l, l); err != nil {
			return fmt.Errorf("initramfs: add binary %s: %w", src, err)
		}
	}
	return nil
}
