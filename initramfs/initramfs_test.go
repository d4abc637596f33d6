package initramfs

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"keel/machine"
)

func readArchive(t *testing.T, b []byte) []cpio.Record {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestArchiveDeterministicAndOrdered(t *testing.T) {
	build := func(order []string) []byte {
		a := New()
		for _, p := range order {
			if err := a.AddFile(p, []byte(p), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		var buf bytes.Buffer
		if _, err := a.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	one := build([]string{"/a/b/c", "/init", "/a-b"})
	two := build([]string{"/a-b", "/init", "/a/b/c"})
	if !bytes.Equal(one, two) {
		t.Fatal("same inputs in another order gave different bytes")
	}
	seen := map[string]bool{}
	var names []string
	for _, r := range readArchive(t, one) {
		names = append(names, r.Name)
		if r.MTime != 0 || r.UID != 0 {
			t.Errorf("%s: mtime %d uid %d, want 0", r.Name, r.MTime, r.UID)
		}
		if d := filepathDir(r.Name); d != "." && !seen[d] {
			t.Errorf("%s comes before its directory %s", r.Name, d)
		}
		seen[r.Name] = true
	}
	for _, want := range []string{"dev/console", "a/b", "a/b/c", "init"} {
		if !seen[want] {
			t.Errorf("archive lacks %s: %v", want, names)
		}
	}
}

func filepathDir(p string) string { return filepath.Dir(p) }

func TestModDepClosure(t *testing.T) {
	d, err := ParseModDep(`kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/fs/fat/fat.ko:
kernel/drivers/virtio/virtio-pci.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.Closure([]string{"ext4", "virtio_pci", "unix"}, map[string]bool{"unix": true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/virtio/virtio-pci.ko", "kernel/drivers/virtio/virtio.ko",
		"kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("closure (-want +got):\n%v\n%v", want, got)
	}
	if _, err := d.Closure([]string{"nosuch"}, nil); err == nil {
		t.Error("unknown module: no error")
	}
	if r := d.Render([]string{"kernel/fs/fat/vfat.ko"}); r != "kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n" {
		t.Errorf("render = %q", r)
	}
	if _, err := ParseModDep("no colon here\n"); err == nil {
		t.Error("malformed line: no error")
	}
}

// kernelTree finds the kernel unpacked by scripts/deps.sh, or skips.
func kernelTree(t *testing.T) (root, kver string) {
	t.Helper()
	root = filepath.Join("..", "build", "cache", "kernel", "root")
	b, err := os.ReadFile(filepath.Join(root, "..", ".done"))
	if err != nil {
		t.Skip("no kernel in build/cache (run make deps)")
	}
	return root, strings.TrimSpace(string(b))
}

func TestAddModulesRealKernel(t *testing.T) {
	root, kver := kernelTree(t)
	a := New()
	paths, err := a.AddModules(root, kver, append(append([]string(nil), machine.BaseModules...), machine.HardwareModules...))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, p := range paths {
		names[ModuleName(p)] = true
	}
	// Dependencies nobody asked for by name, which only modules.dep knows about.
	for _, want := range []string{"jbd2", "mbcache", "crc16", "fat", "virtio_ring", "virtio_pci_modern_dev", "watchdog"} {
		if !names[want] {
			t.Errorf("closure lacks %s: %v", want, paths)
		}
	}
	if len(paths) > 80 {
		t.Errorf("closure has %d modules, expected a small set: %v", len(paths), paths)
	}
	if !a.Has("lib/modules/" + kver + "/modules.dep") {
		t.Error("no modules.dep")
	}
	// The alias file carries the carried drivers' aliases and nothing else.
	aliases, err := os.ReadFile(filepath.Join(root, "lib", "modules", kver, "modules.alias"))
	if err != nil {
		t.Fatal(err)
	}
	kept := string(CarriedAliases(aliases, names))
	for _, want := range []string{"pci:v*d*sv*sd*bc01sc08i02* nvme", "pci:v*d*sv*sd*bc01sc06i01* ahci", " e1000e\n", "virtio:d00000002v* virtio_blk"} {
		if !strings.Contains(kept, want) {
			t.Errorf("carried aliases lack %q", want)
		}
	}
	for _, not := range []string{" snd_hda_intel\n", " nouveau\n"} {
		if strings.Contains(kept, not) {
			t.Errorf("carried aliases have %q, a module not carried", not)
		}
	}
	if !a.Has("lib/modules/" + kver + "/modules.alias") {
		t.Error("no modules.alias")
	}
	t.Logf("%d modules carried; modules.alias %d → %d bytes", len(paths), len(aliases), len(kept))
}

// TestAddBinaryRuns packs mke2fs with its library closure, unpacks it into an empty directory
// and runs it there under chroot: proof that nothing it needs was left behind.
func TestAddBinaryRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	bin, err := exec.LookPath("mke2fs")
	if err != nil {
		t.Skip("mke2fs not installed")
	}
	a := New()
	if err := a.AddBinary("/sbin/mke2fs", bin); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, r := range readArchive(t, buf.Bytes()) {
		p := filepath.Join(dir, r.Name)
		switch r.Mode & cpio.S_IFMT {
		case cpio.S_IFDIR:
			os.MkdirAll(p, 0o755)
		case cpio.S_IFREG:
			b, _ := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, b, os.FileMode(r.Mode&0o777)); err != nil {
				t.Fatal(err)
			}
		}
	}
	out, err := exec.Command("chroot", dir, "/sbin/mke2fs", "-V").CombinedOutput()
	if err != nil {
		t.Fatalf("mke2fs in the unpacked archive: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "mke2fs") {
		t.Errorf("unexpected output: %s", out)
	}
}

// TestAddFirmwareRealKernel: tg3 (Broadcom NICs) declares firmware; a file in the firmware
// directory is carried at lib/firmware/NAME, one that is missing is reported, not fatal.
func TestAddFirmwareRealKernel(t *testing.T) {
	root, kver := kernelTree(t)
	a := New()
	paths, err := a.AddModules(root, kver, []string{"tg3", "e1000e"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tigon"), 0o755)
	os.WriteFile(filepath.Join(dir, "tigon", "tg3_tso5.bin"), []byte("firmware"), 0o644)
	fws, err := a.AddFirmware(root, kver, paths, []string{filepath.Join(dir, "absent"), dir})
	if err != nil {
		t.Fatal(err)
	}
	found, missing := 0, 0
	for _, f := range fws {
		if f.Module != "tg3" {
			t.Errorf("firmware of %s: %+v (only tg3 declares any)", f.Module, f)
		}
		if f.Found != "" {
			found++
		} else {
			missing++
		}
	}
	if found != 1 || missing < 2 || !a.Has("lib/firmware/tigon/tg3_tso5.bin") || a.Has("lib/firmware/tigon/tg3.bin") {
		t.Errorf("firmware: %+v", fws)
	}
}
