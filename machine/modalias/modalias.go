// Package modalias finds the kernel modules a machine's devices need, the way udev's coldplug
// does: each device in sysfs names itself with a modalias ("pci:v00008086d000010D3sv...");
// the kernel's modules.alias maps glob patterns of such strings to modules. Pure: it reads a
// file system given to it (the node's /sys, a test's fixture), the alias file's bytes and
// uevent messages; the loading is the caller's (machine.Drivers).
package modalias

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// Alias is one line of modules.alias: devices whose modalias matches Pattern need Module.
type Alias struct {
	Pattern, Module string
}

// Table is a parsed modules.alias, indexed by the pattern's bus prefix ("pci", "usb", ...)
// so that a lookup scans only its bus (a Debian kernel has ~26,000 aliases).
type Table struct {
	byBus map[string][]Alias
}

// Parse reads modules.alias ("alias PATTERN MODULE" lines; comments and blank lines skipped).
// A malformed line is an error naming it: a truncated file must not silently match less.
func Parse(b []byte) (*Table, error) {
	t := &Table{byBus: map[string][]Alias{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "alias" {
			return nil, fmt.Errorf("modules.alias line %d: %q: want \"alias PATTERN MODULE\"", n, line)
		}
		if _, err := path.Match(f[1], ""); err != nil {
			return nil, fmt.Errorf("modules.alias line %d: pattern %q: %w", n, f[1], err)
		}
		bus := busOf(f[1])
		t.byBus[bus] = append(t.byBus[bus], Alias{Pattern: f[1], Module: f[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.alias: %w", err)
	}
	return t, nil
}

// busOf is the part before the first ':' ("pci"), or "" when the pattern starts with a
// wildcard or has none (such aliases are checked for every bus).
func busOf(s string) string {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.ContainsAny(s[:i], "*?[") {
		return ""
	}
	return s[:i]
}

// Modules returns the modules whose patterns match modalias, sorted, without duplicates.
// Matching is fnmatch's, as modprobe's (`*`, `?`, `[...]`; a modalias holds no '/').
func (t *Table) Modules(modalias string) []string {
	seen := map[string]bool{}
	for _, bus := range []string{busOf(modalias), ""} {
		for _, a := range t.byBus[bus] {
			if ok, _ := path.Match(a.Pattern, modalias); ok {
				seen[a.Module] = true
			}
		}
		if busOf(modalias) == "" {
			break
		}
	}
	out := make([]string, 0, len(seen))
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// Need is a module a device needs, and why: the device's sysfs path and its modalias.
type Need struct {
	Module, Device, Modalias string
}

// Coldplug walks sysfs (rooted at its "devices" directory) for every device's modalias and
// returns the modules they need, in sysfs order, each module once (with the first device that
// needed it). Unreadable entries are skipped: sysfs has attributes that refuse reads.
func (t *Table) Coldplug(sysfs fs.FS) ([]Need, error) {
	var out []Need
	seen := map[string]bool{}
	err := fs.WalkDir(sysfs, "devices", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		// fs.WalkDir follows no symlinks: sysfs's links (subsystem, driver, ...), which lead
		// back into the tree, are not walked.
		if d.IsDir() || d.Name() != "modalias" {
			return nil
		}
		b, err := fs.ReadFile(sysfs, p)
		if err != nil {
			return nil
		}
		alias := strings.TrimSpace(string(b))
		if alias == "" {
			return nil
		}
		for _, m := range t.Modules(alias) {
			if !seen[m] {
				seen[m] = true
				out = append(out, Need{Module: m, Device: path.Dir(p), Modalias: alias})
			}
		}
		return nil
	})
	return out, err
}
