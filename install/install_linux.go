package install

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"keel/boot"
	"keel/config"
	"keel/disk"
	"keel/installer"
	"keel/machine"
)

// Options are what an install needs from the init around it.
type Options struct {
	Args Args
	// Document is the install document if an admin pushed it (Maintenance); nil: fetched
	// from Args.Config.
	Document []byte
	// Run runs a command (PID 1's reaper: the child is the init's own).
	Run func(*exec.Cmd) error
	// Step hears each step as it starts and ends: the console and the event stream.
	Step func(step, msg string)
	// Warn hears what does not stop the install (a document server not up yet).
	Warn func(error)
	// SysRoot is /sys; WorkDir a directory for temporary mounts (/run/keel/install).
	SysRoot, WorkDir string
}

// Result is an install that completed.
type Result struct {
	Disk    Disk
	Version string // of slot A
	Digest  string // of the installer image
}

// BootloaderFile is the slot file the ESP's bootloader is copied from: it comes from the
// signed installer image, like the rest of the slot.
const BootloaderFile = "bootx64.efi"

// The tools install mode runs, carried in the initramfs (nodeimage.DefaultBinaries).
const (
	mke2fs  = "/sbin/mke2fs"
	mkfsFAT = "/sbin/mkfs.fat"
)

// Bootloader is where UEFI firmware looks for a removable-media loader; the install writes it
// last, so a disk without it boots nothing and is an interrupted install.
const Bootloader = "EFI/BOOT/BOOTX64.EFI"

// Run installs keel: fetches the document (unless pushed), picks the disk, verifies the
// installer image (signature included) before anything is written, then lays the disk out
// and fills it so that the firmware finds a bootloader only once everything else is on the
// disk and synced.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	b := o.Document
	if b == nil {
		o.Step("document", "fetching "+o.Args.Config)
		fctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		var err error
		b, err = Fetch(fctx, o.Args.Config, o.Args.CAHash, o.Warn)
		cancel()
		if err != nil {
			return res, err
		}
	}
	doc, cfg, err := ParseDocument(b)
	if err != nil {
		return res, err
	}
	o.Step("document", fmt.Sprintf("image %s, hostname %q", doc.Image, cfg.HostnameOrDefault()))

	disks, err := ListDisks(o.SysRoot, filepath.Join(o.WorkDir, "probe"))
	if err != nil {
		return res, err
	}
	d, err := Choose(disks, o.Args.Select, o.Args.Wipe)
	if err != nil {
		return res, err
	}
	res.Disk = d
	// Partitions on whole MiBs; the backup GPT at the disk's real last sector.
	layout, err := disk.Plan(d.Size/disk.MiB*disk.MiB, disk.DefaultSpecs)
	if err != nil {
		return res, fmt.Errorf("%s: %w", d.Dev, err)
	}
	o.Step("disk", "installing on "+d.String())

	slotA, _ := layout.Find(disk.PartBootA)
	policy, popts := cfg.Upgrade.PullPolicy(runtime.GOARCH, slotA.Size, o.Warn)
	o.Step("pull", "verifying "+doc.Image)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	pulled, err := installer.Pull(pctx, doc.Image, policy, popts)
	cancel()
	if err != nil {
		return res, err // nothing written yet
	}
	res.Version, res.Digest = pulled.Manifest.Version, pulled.Digest
	if !slices.ContainsFunc(pulled.Manifest.Slot.Files, func(f disk.File) bool { return f.Name == BootloaderFile }) {
		return res, fmt.Errorf("%s (version %s) carries no %s: an image built before install mode cannot install", doc.Image, pulled.Manifest.Version, BootloaderFile)
	}
	for _, tool := range []string{mke2fs, mkfsFAT} {
		if _, err := os.Stat(tool); err != nil {
			return res, fmt.Errorf("this initramfs lacks %s (the image was built on a host without it): %w", tool, err)
		}
	}
	o.Step("pull", fmt.Sprintf("%s is version %s (%s), signed by %s", doc.Image, pulled.Manifest.Version, pulled.Digest, signer(pulled.Signed)))

	// From here the disk changes. The order keeps it either bootless or complete.
	if err := clearDev(d.Dev, layout, d.Size); err != nil {
		return res, err
	}
	o.Step("partition", "writing the GPT")
	parts, err := partition(ctx, d.Dev, layout, d.Size, o.SysRoot)
	if err != nil {
		return res, err
	}
	o.Step("partition", "partitioned: "+partList(parts))

	if err := disk.Mkfs(o.Run, parts[disk.PartEphemeral].Dev, disk.PartEphemeral); err != nil {
		return res, err
	}
	if err := writeState(o, parts[disk.PartState].Dev, cfg, doc); err != nil {
		return res, err
	}
	o.Step("state", "STATE holds config.json and "+strconv.Itoa(len(doc.Files))+" files; EPHEMERAL made")

	o.Step("slot", "writing slot A from "+doc.Image)
	efi, err := writeSlot(ctx, o, parts[disk.PartBootA].Dev, doc.Image, policy, popts, pulled)
	if err != nil {
		return res, err
	}
	o.Step("slot", "slot A written and verified")

	args := doc.KernelArgs
	if args == "" {
		args = boot.DefaultKernelArgs
	}
	if err := writeESP(o, parts[disk.PartEFI].Dev, layout, args, efi); err != nil {
		return res, err
	}
	o.Step("bootloader", "bootloader written: the disk boots")
	return res, nil
}

func signer(s installer.SignedBy) string {
	if s.Key == "" {
		return "nobody (unsigned images allowed)"
	}
	return s.Key
}

func partList(parts map[string]disk.Device) string {
	var s []string
	for _, sp := range disk.DefaultSpecs {
		p := parts[sp.Name]
		s = append(s, fmt.Sprintf("%s=%s", sp.Name, p.Dev))
	}
	return strings.Join(s, " ")
}

// clearDev zeroes the disk's old life (clearDisk).
func clearDev(dev string, l disk.Layout, size int64) error {
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	if err := clearDisk(f, l, size); err != nil {
		return fmt.Errorf("clear %s: %w", dev, err)
	}
	return nil
}

// partition writes the layout's GPT (writeGPT), has the kernel read it and waits for the
// partitions.
func partition(ctx context.Context, dev string, l disk.Layout, size int64, sysRoot string) (map[string]disk.Device, error) {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_EXCL, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	if err := writeGPT(f, l, size); err != nil {
		return nil, fmt.Errorf("%s: %w", dev, err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("%s: %w", dev, err)
	}
	// The kernel re-reads the table; EBUSY can follow a partition scan still in flight.
	for i := 0; ; i++ {
		err = unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0)
		if err == nil || !errors.Is(err, unix.EBUSY) || i == 20 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: re-read partition table: %w", dev, err)
	}
	var names []string
	for _, p := range l.Parts {
		names = append(names, p.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return disk.WaitDisk(ctx, sysRoot, dev, names...)
}

// writeState makes STATE: config.json and the document's files (private: 0600 in 0700 dirs).
func writeState(o Options, dev string, cfg config.Config, doc Document) error {
	if err := disk.Mkfs(o.Run, dev, disk.PartState); err != nil {
		return err
	}
	mnt := filepath.Join(o.WorkDir, "state")
	if err := (machine.Mount{Source: dev, Target: mnt, FSType: "ext4", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC}).Do(); err != nil {
		return err
	}
	err := func() error {
		cb, err := json.MarshalIndent(cfg, "", "  ")
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(mnt, config.FileName), append(cb, '\n'), 0o644); err != nil {
			return err
		}
		for name, content := range doc.Files {
			p := filepath.Join(mnt, name) // ParseDocument: local, clean
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return err
			}
			if err := writeFile(p, []byte(content), 0o600); err != nil {
				return err
			}
		}
		return nil
	}()
	if uerr := machine.Unmount(mnt, 5*time.Second); err == nil && uerr != nil {
		err = uerr
	}
	if err != nil {
		return fmt.Errorf("STATE %s: %w", dev, err)
	}
	return nil
}

// writeFile writes and fsyncs a file.
func writeFile(p string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeSlot streams the image pulled onto dev through the upgrade's path (hashed on the way,
// read back), checks every file against the manifest, and returns the slot's bootloader.
func writeSlot(ctx context.Context, o Options, dev, image string, p installer.Policy, po installer.PullOptions, pulled installer.Pulled) ([]byte, error) {
	wctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	r, err := installer.ParseReference(image, po.Insecure)
	if err != nil {
		return nil, fmt.Errorf("slot A: %w", err)
	}
	// The write fetches exactly the image verified: by its digest.
	src, err := installer.Open(wctx, r.Context().Digest(pulled.Digest).String(), p, po)
	if err != nil {
		return nil, fmt.Errorf("slot A: %w", err)
	}
	defer src.Close()
	if src.Manifest.SlotSHA256 != pulled.Manifest.SlotSHA256 || src.Manifest.SlotSize != pulled.Manifest.SlotSize {
		return nil, fmt.Errorf("%s changed between its check and its download: slot sha256 %s, checked %s", image, src.Manifest.SlotSHA256, pulled.Manifest.SlotSHA256)
	}
	last := time.Now()
	if _, err := disk.WriteSlot(wctx, dev, src, pulled.Manifest.SlotSize, pulled.Manifest.SlotSHA256, func(done, total int64) {
		if time.Since(last) > 2*time.Second {
			last = time.Now()
			o.Step("slot", fmt.Sprintf("%d of %d MiB", done>>20, total>>20))
		}
	}); err != nil {
		return nil, fmt.Errorf("slot A: %w", err)
	}
	dir := filepath.Join(o.WorkDir, "slot")
	m, err := disk.ReadSlot(wctx, dev, dir, true)
	if err != nil {
		return nil, fmt.Errorf("slot A: %w", err)
	}
	var want *disk.File
	for i := range m.Files {
		if m.Files[i].Name == BootloaderFile {
			want = &m.Files[i]
		}
	}
	if want == nil {
		return nil, fmt.Errorf("%s (version %s) carries no %s: an image built before install mode cannot install", image, m.Version, BootloaderFile)
	}
	if err := (machine.Mount{Source: dev, Target: dir, FSType: "vfat", Flags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC}).Do(); err != nil {
		return nil, err
	}
	defer machine.Unmount(dir, time.Second)
	efi, err := os.ReadFile(filepath.Join(dir, BootloaderFile))
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(efi); hex.EncodeToString(sum[:]) != want.SHA256 {
		return nil, fmt.Errorf("slot A: %s does not match the manifest", BootloaderFile)
	}
	return efi, nil
}

// writeESP makes the EFI partition last: GRUB's config and environment first, synced, then
// the loader under a temporary name, synced, then renamed into place. Before the rename the
// firmware finds nothing to boot on this disk.
func writeESP(o Options, dev string, l disk.Layout, kernelArgs string, efi []byte) error {
	parts := map[boot.Slot]int{}
	for _, s := range []boot.Slot{boot.SlotA, boot.SlotB} {
		p, _ := l.Find(s.Partition())
		parts[s] = p.Number
	}
	cfg, err := boot.GrubConfig{SlotPartitions: parts, KernelArgs: kernelArgs}.Render()
	if err != nil {
		return err
	}
	env, err := boot.Env{}.Encode()
	if err != nil {
		return err
	}
	cmd := exec.Command(mkfsFAT, "-F", "32", "-s", "1", "-S", "512", "-n", "EFI", dev)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := o.Run(cmd); err != nil {
		return fmt.Errorf("mkfs.fat %s: %w: %s", dev, err, out.String())
	}
	mnt := filepath.Join(o.WorkDir, "esp")
	if err := (machine.Mount{Source: dev, Target: mnt, FSType: "vfat", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC}).Do(); err != nil {
		return err
	}
	err = func() error {
		for _, d := range []string{"grub", "EFI/BOOT"} {
			if err := os.MkdirAll(filepath.Join(mnt, d), 0o755); err != nil {
				return err
			}
		}
		if err := writeFile(filepath.Join(mnt, "grub", "grub.cfg"), []byte(cfg), 0o644); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(mnt, "grub", "grubenv"), env, 0o644); err != nil {
			return err
		}
		tmp := filepath.Join(mnt, Bootloader+".new")
		if err := writeFile(tmp, efi, 0o644); err != nil {
			return err
		}
		machine.Sync()
		if err := os.Rename(tmp, filepath.Join(mnt, Bootloader)); err != nil {
			return err
		}
		return syncDir(filepath.Join(mnt, "EFI", "BOOT"))
	}()
	if uerr := machine.Unmount(mnt, 5*time.Second); err == nil && uerr != nil {
		err = uerr
	}
	machine.Sync()
	if err != nil {
		return fmt.Errorf("ESP %s: %w", dev, err)
	}
	return nil
}

func syncDir(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// ListDisks lists the machine's whole disks (not loop, RAM, optical or device-mapper devices)
// with what each holds. A keel disk's ESP is mounted read-only under probeDir to tell a
// complete install (the loader is there) from an interrupted one.
func ListDisks(sysRoot, probeDir string) ([]Disk, error) {
	ents, err := os.ReadDir(filepath.Join(sysRoot, "block"))
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	var out []Disk
	for _, e := range ents {
		name := e.Name()
		if skipDisk(name) {
			continue
		}
		dir := filepath.Join(sysRoot, "block", name)
		d := Disk{Dev: "/dev/" + name, Size: readInt(filepath.Join(dir, "size")) * 512,
			Removable: readInt(filepath.Join(dir, "removable")) == 1, ReadOnly: readInt(filepath.Join(dir, "ro")) == 1,
			Model: readText(filepath.Join(dir, "device", "model")), Serial: readText(filepath.Join(dir, "device", "serial"))}
		if d.Serial == "" {
			d.Serial = readText(filepath.Join(dir, "serial")) // virtio-blk
		}
		if d.Size == 0 {
			continue // an empty card reader
		}
		d.SectorSize = readInt(filepath.Join(dir, "queue", "logical_block_size"))
		c, err := classifyDev(d.Dev, d.Size)
		if err != nil {
			c = Content{State: Data, What: "unreadable content (" + err.Error() + ")"}
		}
		if c.State == KeelIncomplete {
			c = espState(d.Dev, c, probeDir)
		}
		d.Content = c
		out = append(out, d)
	}
	return out, nil
}

func skipDisk(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func readText(p string) string {
	b, _ := os.ReadFile(p)
	return strings.TrimSpace(string(b))
}

func readInt(p string) int64 {
	n, _ := strconv.ParseInt(readText(p), 10, 64)
	return n
}

func classifyDev(dev string, size int64) (Content, error) {
	f, err := os.Open(dev)
	if err != nil {
		return Content{}, err
	}
	defer f.Close()
	return Classify(f, size)
}

// espState tells a complete keel install from an interrupted one by its ESP, which install
// mode makes last: no FAT boot sector (zeroed by the clearing) or no loader in it is
// interrupted, the loader there is complete, and an ESP that has a FAT but cannot be read is
// data (install mode cannot tell, so it is not overwritten without wipe).
func espState(dev string, c Content, dir string) Content {
	if c.ESP.Size == 0 {
		return c // only the Mark: the table never made it
	}
	f, err := os.Open(dev)
	if err != nil {
		return Content{State: Data, What: "an unreadable disk (" + err.Error() + ")"}
	}
	bs := make([]byte, 512)
	_, err = f.ReadAt(bs, c.ESP.Start)
	f.Close()
	if err != nil {
		return Content{State: Data, What: "an unreadable ESP (" + err.Error() + ")"}
	}
	if string(bs[0x52:0x5a]) != "FAT32   " {
		return c // not made yet
	}
	// Through a loop device over the ESP's byte range: the kernel may not know the partitions.
	if err := machine.MountLoopRange(dev, c.ESP.Start, c.ESP.Size, dir, "vfat", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
		return Content{State: Data, What: "a keel disk whose ESP cannot be mounted (" + err.Error() + ")"}
	}
	fi, serr := os.Stat(filepath.Join(dir, Bootloader))
	if err := machine.Unmount(dir, 5*time.Second); err != nil {
		// The loop device would keep the disk open under the install.
		return Content{State: Data, What: "a keel disk whose ESP stays mounted (" + err.Error() + ")"}
	}
	if serr == nil && fi.Size() > 0 {
		c.State = KeelComplete
	}
	return c
}
