// Package nodeimage assembles a bootable node image on the build host: it builds the static
// init for a version, packs the initramfs, makes the slot filesystem with its manifest, builds
// GRUB, and lays everything out on a GPT disk image. `make image` (through initramfs/mkimage)
// and the QEMU test harness both use it, so tests boot exactly what users boot.
package nodeimage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"keel/boot"
	"keel/config"
	"keel/disk"
	"keel/host"
	"keel/initramfs"
	"keel/initramfs/diskimage"
	"keel/install"
	"keel/machine"
	"keel/pki"
)

// GrubModules are built into BOOTX64.EFI; the prefix has no device, so GRUB reads grub.cfg
// and grubenv from the ESP it was loaded from.
var GrubModules = []string{"part_gpt", "fat", "normal", "configfile", "linux", "echo", "test",
	"loadenv", "search", "ls", "cat", "reboot", "halt", "sleep", "efi_gop", "all_video", "gzio", "regexp"}

// Kernel is an unpacked Debian kernel package.
type Kernel struct {
	Root    string // holds boot/vmlinuz-VER and lib/modules/VER
	Release string
	// Firmware are the directories the drivers' firmware is carried from, first match wins.
	Firmware []string
}

// FindKernel reads the kernel unpacked by scripts/deps.sh under cacheDir/kernel.
func FindKernel(cacheDir string) (Kernel, error) {
	dir := filepath.Join(cacheDir, "kernel")
	b, err := os.ReadFile(filepath.Join(dir, ".done"))
	if err != nil {
		return Kernel{}, fmt.Errorf("no kernel in %s (run `make deps`): %w", dir, err)
	}
	k := Kernel{Root: filepath.Join(dir, "root"), Release: strings.TrimSpace(string(b))}
	// The firmware scripts/deps.sh unpacks beside it, then the host's own.
	k.Firmware = []string{filepath.Join(cacheDir, "firmware", "root", "lib", "firmware"), "/lib/firmware"}
	return k, nil
}

// Vmlinuz is the kernel image path.
func (k Kernel) Vmlinuz() string { return filepath.Join(k.Root, "boot", "vmlinuz-"+k.Release) }

// BuildInit compiles the init for version into out: static (CGO_ENABLED=0), stripped,
// reproducible paths. fault is empty except for test images (see keel/internal/fault).
func BuildInit(ctx context.Context, repoRoot, version, out string, fault ...string) error {
	if err := disk.ValidVersion(version); err != nil {
		return err
	}
	ldflags := "-s -w -X main.version=" + version
	if len(fault) > 0 && fault[0] != "" {
		ldflags += " -X main.faultName=" + fault[0]
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, "./init")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build init %s: %w\n%s", version, err, b)
	}
	return nil
}

// BuildStatic builds a Go package of this module as a static, stripped linux/amd64 binary.
func BuildStatic(ctx context.Context, repoRoot, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// InitramfsOptions are the contents of an initramfs.
type InitramfsOptions struct {
	Init    string // path of the built init
	Kernel  Kernel
	Modules []string          // default: machine.BaseModules, HardwareModules and host.ContainerModules
	Files   map[string]string // archive path → host file
	// Binaries are host executables to include with their shared-library closure
	// (archive path → host path).
	Binaries map[string]string
}

var warned sync.Map

// warnOnce prints a build warning once per process.
func warnOnce(msg string) {
	if _, dup := warned.LoadOrStore(msg, true); !dup {
		fmt.Fprintln(os.Stderr, msg)
	}
}

// BuildInitramfs returns the gzipped cpio archive.
func BuildInitramfs(o InitramfsOptions) ([]byte, error) {
	a := initramfs.New()
	if err := a.AddHostFile("/init", o.Init); err != nil {
		return nil, err
	}
	mods := o.Modules
	if mods == nil {
		mods = append(append(append([]string(nil), machine.BaseModules...), machine.HardwareModules...), host.ContainerModules...)
	}
	paths, err := a.AddModules(o.Kernel.Root, o.Kernel.Release, mods)
	if err != nil {
		return nil, err
	}
	// Firmware the carried drivers declare (Debian's firmware packages: make deps unpacks
	// firmware-misc-nonfree into the build cache).
	fws, err := a.AddFirmware(o.Kernel.Root, o.Kernel.Release, paths, o.Kernel.Firmware)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, f := range fws {
		if f.Found == "" {
			missing = append(missing, f.Module+":"+f.Name)
		}
	}
	if len(missing) > 0 {
		warnOnce("initramfs: firmware not on this host (left out; those devices may not work without it): " + strings.Join(missing, " "))
	}
	for _, dst := range sortedKeys(o.Files) {
		if err := a.AddHostFile(dst, o.Files[dst]); err != nil {
			return nil, err
		}
	}
	for _, dst := range sortedKeys(o.Binaries) {
		if err := a.AddBinary(dst, o.Binaries[dst]); err != nil {
			return nil, err
		}
	}
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// SystemCABundle is the build host's CA bundle (Debian's ca-certificates), carried by every
// initramfs where the node's Go programs look for it: registries over HTTPS are checked
// against it (the node's config may add a private CA).
const SystemCABundle = "/etc/ssl/certs/ca-certificates.crt"

// DefaultBinaries ride in every initramfs: mke2fs re-creates EPHEMERAL on the node, and
// install mode makes STATE with it and the ESP with mkfs.fat.
func DefaultBinaries() map[string]string {
	m := map[string]string{}
	for _, b := range []string{"mke2fs", "mkfs.fat"} {
		if p, err := exec.LookPath(b); err == nil {
			m["/sbin/"+b] = p
		}
	}
	return m
}

// Slot is a built slot image.
type Slot struct {
	Path     string
	Manifest disk.Manifest
}

// SlotOptions build one slot image.
type SlotOptions struct {
	RepoRoot string
	Version  string
	Kernel   Kernel
	OutDir   string // gets init-VERSION, initramfs-VERSION, slot-VERSION.img
	Binaries map[string]string
	// GoBinaries are Go packages of this module to build statically and include
	// (archive path → package path, e.g. "/bin/testsvc": "./vmtest/testsvc").
	GoBinaries map[string]string
	Fault      string // test images only
	// System is the slot's system image (see NodeSystem); empty: the slot has none.
	System System
}

// BuildSlot builds the init, initramfs and slot filesystem image for one version.
func BuildSlot(ctx context.Context, o SlotOptions) (Slot, error) {
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return Slot{}, err
	}
	initPath := filepath.Join(o.OutDir, "init-"+o.Version)
	if err := BuildInit(ctx, o.RepoRoot, o.Version, initPath, o.Fault); err != nil {
		return Slot{}, err
	}
	bins := map[string]string{}
	if o.Binaries == nil {
		bins = DefaultBinaries()
	}
	for k, v := range o.Binaries {
		bins[k] = v
	}
	if o.Fault == "bench-write" {
		// The benchmark's floor: dd oflag=direct and sha256sum over the slot's bytes.
		for _, b := range []string{"dd", "sha256sum"} {
			if p, err := exec.LookPath(b); err == nil {
				bins["/bin/"+b] = p
			}
		}
	}
	// Without the bundle a node could reach no public HTTPS registry: refuse to build one.
	if _, err := os.Stat(SystemCABundle); err != nil {
		return Slot{}, fmt.Errorf("nodeimage: the CA bundle every node carries: %w (make deps installs ca-certificates)", err)
	}
	files := map[string]string{SystemCABundle: SystemCABundle}
	for _, dst := range sortedKeys(o.GoBinaries) {
		out := filepath.Join(o.OutDir, filepath.Base(dst)+"-"+o.Version)
		if err := BuildStatic(ctx, o.RepoRoot, o.GoBinaries[dst], out); err != nil {
			return Slot{}, err
		}
		files[dst] = out
	}
	rd, err := BuildInitramfs(InitramfsOptions{Init: initPath, Kernel: o.Kernel, Binaries: bins, Files: files})
	if err != nil {
		return Slot{}, fmt.Errorf("initramfs %s: %w", o.Version, err)
	}
	if err := os.WriteFile(filepath.Join(o.OutDir, "initramfs-"+o.Version), rd, 0o644); err != nil {
		return Slot{}, err
	}
	kernel, err := os.ReadFile(o.Kernel.Vmlinuz())
	if err != nil {
		return Slot{}, err
	}
	// The bootloader rides in the slot, covered by its manifest and the image's signature:
	// install mode copies it onto the ESP it makes.
	efiPath := filepath.Join(o.OutDir, "BOOTX64.EFI-"+o.Version)
	if err := BuildGrubEFI(ctx, efiPath); err != nil {
		return Slot{}, err
	}
	efi, err := os.ReadFile(efiPath)
	if err != nil {
		return Slot{}, err
	}
	content := []diskimage.Content{{Path: "/vmlinuz", Data: kernel}, {Path: "/initramfs", Data: rd}, {Path: "/" + install.BootloaderFile, Data: efi}}
	if !o.System.Empty() {
		sys, err := BuildSystemImage(ctx, o.System, o.OutDir)
		if err != nil {
			return Slot{}, fmt.Errorf("system image %s: %w", o.Version, err)
		}
		b, err := os.ReadFile(sys)
		if err != nil {
			return Slot{}, err
		}
		content = append(content, diskimage.Content{Path: "/" + disk.SystemImageName, Data: b})
	}
	size := int64(0)
	for _, c := range content {
		size += int64(len(c.Data))
	}
	path := filepath.Join(o.OutDir, "slot-"+o.Version+".img")
	m, err := diskimage.BuildSlot(path, diskimage.SlotSize(size),
		disk.Manifest{Version: o.Version, Arch: "amd64", KernelRelease: o.Kernel.Release}, content)
	if err != nil {
		return Slot{}, err
	}
	return Slot{Path: path, Manifest: m}, nil
}

// BuildGrubEFI makes BOOTX64.EFI with grub-mkimage.
func BuildGrubEFI(ctx context.Context, out string) error {
	args := append([]string{"-O", "x86_64-efi", "-p", "/grub", "-o", out}, GrubModules...)
	if b, err := exec.CommandContext(ctx, "grub-mkimage", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("grub-mkimage: %w\n%s", err, b)
	}
	return nil
}

// DiskOptions describe a whole node disk.
type DiskOptions struct {
	Path       string
	Size       int64 // default 1 GiB
	SlotA      Slot
	SlotB      *Slot // nil: BOOT-B left empty, as on a freshly installed node
	KernelArgs string
	PKIDir     string // CA and server certificate to install on STATE (ca.crt, server.crt, server.key)
	Config     config.Config
	// StateFiles are extra files for STATE (path relative to its root → content), such as a
	// kubeconfig.
	StateFiles map[string][]byte
	WorkDir    string
}

// BuildDisk lays out the disk image.
func BuildDisk(ctx context.Context, o DiskOptions) error {
	if o.Size == 0 {
		o.Size = 1024 * disk.MiB
	}
	if o.KernelArgs == "" {
		o.KernelArgs = boot.DefaultKernelArgs
	}
	layout, err := disk.Plan(o.Size, disk.DefaultSpecs)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(o.WorkDir, "disk-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	efi := filepath.Join(work, "BOOTX64.EFI")
	if err := BuildGrubEFI(ctx, efi); err != nil {
		return err
	}
	efiBytes, err := os.ReadFile(efi)
	if err != nil {
		return err
	}
	parts := map[boot.Slot]int{}
	for _, s := range []boot.Slot{boot.SlotA, boot.SlotB} {
		p, _ := layout.Find(s.Partition())
		parts[s] = p.Number
	}
	cfg, err := boot.GrubConfig{SlotPartitions: parts, KernelArgs: o.KernelArgs}.Render()
	if err != nil {
		return err
	}
	env, err := boot.Env{}.Encode()
	if err != nil {
		return err
	}

	// STATE: machine config and the endpoint's key material.
	state := filepath.Join(work, "state")
	files, err := StateFiles(o.PKIDir, o.Config, o.StateFiles)
	if err != nil {
		return err
	}
	for name, b := range files {
		p := filepath.Join(state, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return err
		}
	}
	cb, err := json.MarshalIndent(o.Config, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(state, config.FileName), append(cb, '\n'), 0o644); err != nil {
		return err
	}

	slots := map[string]string{disk.PartBootA: o.SlotA.Path}
	if o.SlotB != nil {
		slots[disk.PartBootB] = o.SlotB.Path
	}
	return diskimage.BuildImage(o.Path, diskimage.ImageSpec{
		Layout: layout,
		ESP: []diskimage.Content{
			{Path: "/EFI/BOOT/BOOTX64.EFI", Data: efiBytes},
			{Path: "/grub/grub.cfg", Data: []byte(cfg)},
			{Path: "/grub/grubenv", Data: env},
		},
		Slots: slots,
		Ext4: map[string]diskimage.Ext4{
			disk.PartState:     {Label: disk.PartState, From: state},
			disk.PartEphemeral: {Label: disk.PartEphemeral},
		},
	})
}

// StateFiles are the files a node's STATE holds beside config.json (paths relative to it):
// the endpoint's CA and server key pair from pkiDir, a control-plane node's etcd certificates
// issued from the etcd CA there, and extra.
func StateFiles(pkiDir string, cfg config.Config, extra map[string][]byte) (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, f := range []string{pki.FileCA, pki.FileServer, pki.FileServerKey} {
		b, err := os.ReadFile(filepath.Join(pkiDir, f))
		if err != nil {
			return nil, fmt.Errorf("state: %w (run `make pki`)", err)
		}
		files[filepath.Join("pki", f)] = b
	}
	if e := cfg.Etcd; e != nil && e.TLS() {
		member, err := etcdMemberFiles(pkiDir, cfg)
		if err != nil {
			return nil, err
		}
		for name, b := range member {
			files[filepath.Join("pki", name)] = b
		}
	}
	for name, b := range extra {
		files[strings.TrimPrefix(filepath.Clean("/"+name), "/")] = b
	}
	return files, nil
}

// InstallDocument is what install mode fetches to install a node with cfg from image:
// StateFiles as text, the config, the image and kernel arguments ("" for the default).
func InstallDocument(pkiDir string, cfg config.Config, extra map[string][]byte, image, kernelArgs string) ([]byte, error) {
	files, err := StateFiles(pkiDir, cfg, extra)
	if err != nil {
		return nil, err
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	d := install.Document{Image: image, Config: cb, Files: map[string]string{}, KernelArgs: kernelArgs}
	for name, b := range files {
		d.Files[filepath.ToSlash(name)] = string(b)
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	if _, _, err := install.ParseDocument(b); err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

// etcdMemberFiles issues a control-plane node's etcd certificates (package pki's names) from
// the etcd CA in pkiDir: for the hosts of its client and peer URLs, named after its member.
func etcdMemberFiles(pkiDir string, c config.Config) (map[string][]byte, error) {
	ca, err := pki.LoadEtcdCA(pkiDir)
	if err != nil {
		return nil, err
	}
	host := func(u string) []string {
		p, err := url.Parse(u)
		if err != nil {
			return nil
		}
		return []string{p.Hostname()}
	}
	return pki.EtcdMember(ca, c.MemberName(), host(c.Etcd.ClientURL), host(c.Etcd.PeerURL), time.Now())
}
