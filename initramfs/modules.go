package initramfs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ModDep is a parsed modules.dep: module path (relative to the module tree) → the paths it
// depends on.
type ModDep map[string][]string

// ParseModDep parses modules.dep text ("kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko ...").
func ParseModDep(text string) (ModDep, error) {
	d := ModDep{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d: no colon: %q", n, line)
		}
		d[strings.TrimSpace(mod)] = strings.Fields(deps)
	}
	return d, sc.Err()
}

// ModuleName is a module's canonical name from its path ("kernel/fs/fat/vfat.ko" → "vfat"):
// the kernel treats '-' and '_' in module names as the same, so both normalize to '_'.
func ModuleName(p string) string {
	b := path.Base(p)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(b, ext) {
			b = strings.TrimSuffix(b, ext)
			break
		}
	}
	return strings.ReplaceAll(b, "-", "_")
}

// Closure returns the module paths needed to load names (each module and everything it
// depends on), sorted. builtin lists modules compiled into the kernel: asking for one of those
// is not an error and adds nothing.
func (d ModDep) Closure(names []string, builtin map[string]bool) ([]string, error) {
	byName := map[string]string{}
	for p := range d {
		byName[ModuleName(p)] = p
	}
	need := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		if need[p] {
			return
		}
		need[p] = true
		for _, dep := range d[p] {
			visit(dep)
		}
	}
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		p, ok := byName[n]
		if !ok {
			if builtin[n] {
				continue
			}
			return nil, fmt.Errorf("module %q is in neither modules.dep nor modules.builtin", n)
		}
		visit(p)
	}
	out := make([]string, 0, len(need))
	for p := range need {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// Render writes modules.dep for just the given paths, in sorted order.
func (d ModDep) Render(paths []string) string {
	var b strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&b, "%s:", p)
		for _, dep := range d[p] {
			b.WriteString(" " + dep)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// AddModules copies the closure of names from an unpacked kernel tree (root holds
// lib/modules/KVER with a modules.dep made by depmod) into the archive, with a modules.dep
// trimmed to what is included. It returns the included module paths.
func (a *Archive) AddModules(root, kver string, names []string) ([]string, error) {
	modDir := filepath.Join(root, "lib", "modules", kver)
	depText, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("initramfs: modules for %s: %w (did depmod -b run?)", kver, err)
	}
	dep, err := ParseModDep(string(depText))
	if err != nil {
		return nil, fmt.Errorf("initramfs: modules for %s: %w", kver, err)
	}
	builtinText, err := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return nil, fmt.Errorf("initramfs: modules for %s: %w", kver, err)
	}
	builtin := map[string]bool{}
	for _, l := range strings.Fields(string(builtinText)) {
		builtin[ModuleName(l)] = true
	}
	paths, err := dep.Closure(names, builtin)
	if err != nil {
		return nil, fmt.Errorf("initramfs: modules for %s: %w", kver, err)
	}
	dst := path.Join("lib/modules", kver)
	for _, p := range paths {
		if err := a.AddHostFile(path.Join(dst, p), filepath.Join(modDir, p)); err != nil {
			return nil, err
		}
	}
	if err := a.AddFile(path.Join(dst, "modules.dep"), []byte(dep.Render(paths)), 0o644); err != nil {
		return nil, err
	}
	if err := a.AddFile(path.Join(dst, "modules.builtin"), builtinText, 0o644); err != nil {
		return nil, err
	}
	aliasText, err := os.ReadFile(filepath.Join(modDir, "modules.alias"))
	if err != nil {
		return nil, fmt.Errorf("initramfs: modules for %s: %w (did depmod -b run?)", kver, err)
	}
	carried := map[string]bool{}
	for _, p := range paths {
		carried[ModuleName(p)] = true
	}
	if err := a.AddFile(path.Join(dst, "modules.alias"), CarriedAliases(aliasText, carried), 0o644); err != nil {
		return nil, err
	}
	return paths, nil
}

// CarriedAliases is modules.alias trimmed to the lines of carried modules: the node's
// coldplug then matches only drivers it can load, and does not scan a Debian kernel's 26,000
// aliases at every boot.
func CarriedAliases(text []byte, carried map[string]bool) []byte {
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(text), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" && carried[strings.ReplaceAll(f[2], "-", "_")] {
			out.WriteString(strings.TrimRight(line, "\n") + "\n")
		}
	}
	return out.Bytes()
}
