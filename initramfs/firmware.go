package initramfs

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Firmware is a firmware file a carried module declares (modinfo's firmware=): the kernel
// loads it from /lib/firmware when the driver asks, e.g. tg3's tigon/tg3_tso5.bin for some
// Broadcom chips.
type Firmware struct {
	Module string
	Name   string
	Found  string // the host file carried; empty: not found on the build host
}

// ModuleFirmware reads the firmware= entries of a module file's .modinfo section.
func ModuleFirmware(ko string) ([]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %s: %w", ko, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, nil
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("initramfs: %s: .modinfo: %w", ko, err)
	}
	var out []string
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := strings.CutPrefix(string(kv), "firmware="); ok && v != "" {
			out = append(out, v)
		}
	}
	return out, nil
}

// AddFirmware carries the firmware the modules at paths (relative to root's
// lib/modules/KVER, as AddModules returns them) declare, from the first of dirs that has each
// file (Debian's firmware packages install into /lib/firmware), at lib/firmware/NAME. It
// returns every declared file, Found empty for those no dir has: the image still boots, and
// that driver's device may not work.
func (a *Archive) AddFirmware(root, kver string, paths, dirs []string) ([]Firmware, error) {
	var out []Firmware
	for _, p := range paths {
		if !strings.HasSuffix(p, ".ko") {
			continue // compressed modules: not in the kernels we build from
		}
		names, err := ModuleFirmware(filepath.Join(root, "lib", "modules", kver, p))
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			fw := Firmware{Module: ModuleName(p), Name: n}
			if !filepath.IsLocal(n) {
				return nil, fmt.Errorf("initramfs: %s declares firmware %q outside /lib/firmware", p, n)
			}
			for _, d := range dirs {
				if fi, err := os.Stat(filepath.Join(d, n)); err == nil && fi.Mode().IsRegular() {
					fw.Found = filepath.Join(d, n)
					break
				}
			}
			if fw.Found != "" && !a.Has(path.Join("lib/firmware", n)) {
				if err := a.AddHostFile(path.Join("lib/firmware", n), fw.Found); err != nil {
					return nil, err
				}
			}
			out = append(out, fw)
		}
	}
	return out, nil
}
