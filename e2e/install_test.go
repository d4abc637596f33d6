package e2e

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"keel/boot"
	"keel/config"
	"keel/disk"
	"keel/initramfs/diskimage"
	"keel/initramfs/nodeimage"
	"keel/install"
	"keel/internal/testenv/vmtest"
	"keel/upgrade"
)

const installTimeout = 3 * time.Minute

// TestInstall: a machine with a blank NVMe disk boots keel's kernel and initramfs alone (as
// PXE or a USB stick would; QEMU's -kernel here) with install arguments, fetches its install
// document from a provisioning server over HTTPS pinned to that server's CA, pulls and
// verifies the signed installer image from a TLS registry, installs, and reboots; from then
// on it boots from its disk under OVMF and GRUB and upgrades like any node.
//
// On the way: a disk holding a filesystem is refused and left as it was; power cuts during the
// install (after partitioning, in the middle of the slot write, right after it) leave a disk
// that boots nothing and that the next install boot installs onto; the finished disk passes
// sgdisk -v, fsck.fat, e2fsck and grub-editenv; and install mode refuses to install over the
// installed node unless told to wipe.
func TestInstall(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"sgdisk", "fsck.fat", "e2fsck", "grub-editenv", "mke2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v (make deps installs it)", tool, err)
		}
	}
	reg := vmtest.NewTLSRegistry(t)
	v1 := reg.PushInstaller(t, "keel:v1.0.0-e2e", vmtest.InstallerOptions{Version: "v1.0.0-e2e"})
	v2 := reg.PushInstaller(t, "keel:v2.0.0-e2e", vmtest.InstallerOptions{Version: "v2.0.0-e2e"})
	img := image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e"})
	cfg, err := vmtest.HarnessConfig(config.Config{Hostname: "installed-node", Upgrade: config.Upgrade{RegistryCA: []string{string(reg.CAPEM)}}}, true)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := nodeimage.InstallDocument(img.PKIDir, cfg, nil, v1, "")
	if err != nil {
		t.Fatal(err)
	}
	srv := vmtest.ServeInstall(t, map[string][]byte{"/node.json": doc})

	vm := vmtest.NewBlank(t, img, 1024)
	vm.DiskBus = "nvme"
	// Two consoles, as a server's screen and serial line: the init's progress goes to both
	// (a virtio console, hvc0, stands for the screen: like tty0 it is not /dev/console).
	consoles := "console=hvc0 console=ttyS0,115200 panic=1 "
	vm.Direct = img.Direct(t, consoles+srv.Args("/node.json", "/dev/nvme0n1"))
	vm.NoReboot = true
	vm.VirtConsole = filepath.Join(t.TempDir(), "hvc0.log")

	// A disk holding a filesystem: refused, not a byte changed.
	if out, err := exec.Command("mke2fs", "-q", "-t", "ext4", "-F", vm.Disk).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	before := fileSum(t, vm.Disk)
	vm.Start()
	m := vm.Expect(`keel-install: failed: (.*)`, installTimeout)
	if !strings.Contains(m[1], "holds an ext2/3/4 filesystem") || !strings.Contains(m[1], "add wipe") {
		t.Errorf("refusal = %q, want it to name the filesystem and the way out", m[1])
	}
	vm.PowerCut()
	if fileSum(t, vm.Disk) != before {
		t.Fatal("the refused disk changed")
	}
	t.Logf("refused: %s", m[1])
	zeroDisk(t, vm.Disk)

	// Power cuts: each leaves a disk the firmware boots nothing from; the next boot of install
	// mode installs onto it without wipe.
	for i, cut := range []struct {
		after string
		wait  time.Duration
	}{
		{`keel-install: partition: partitioned`, 0},
		{`keel-install: slot: writing slot A`, 1500 * time.Millisecond},
		{`keel-install: slot: slot A written and verified`, 0},
	} {
		vm.Start()
		if i > 0 {
			vm.Expect(`keel-install: disk: installing on /dev/nvme0n1 .*an interrupted keel install`, installTimeout)
		}
		vm.Expect(cut.after, installTimeout)
		time.Sleep(cut.wait)
		vm.PowerCut()
		if con := vm.Console(); strings.Contains(con, "keel-install: failed") || strings.Contains(con, "keel-install: done") {
			t.Fatalf("power cut %d came after the install ended: the cut point tests nothing\n%s", i+1, con)
		}
		c, loader := diskState(t, vm.Disk)
		if c.State != install.KeelIncomplete || loader {
			t.Fatalf("power cut %d (after %q): disk is %v, bootloader %v; want an interrupted install that boots nothing", i+1, cut.after, c.State, loader)
		}
		t.Logf("power cut %d after %q: the disk is an interrupted install, no bootloader", i+1, cut.after)
	}

	// The install that completes, then reboots (QEMU exits: -no-reboot).
	t0 := time.Now()
	vm.Start()
	vm.Expect(`keel-install: disk: installing on /dev/nvme0n1 .*an interrupted keel install`, installTimeout)
	m = vm.Expect(`keel-install: done version=(\S+) disk=(\S+)`, installTimeout)
	if m[1] != "v1.0.0-e2e" || m[2] != "/dev/nvme0n1" {
		t.Errorf("done line: %q", m[0])
	}
	vm.WaitExit(time.Minute)
	t.Logf("install (boot to reboot): %.1fs", time.Since(t0).Seconds())
	if b, err := os.ReadFile(vm.VirtConsole); err != nil || !bytes.Contains(b, []byte(m[0])) || !bytes.Contains(b, []byte("keel-install: pull: ")) {
		t.Errorf("the second console (hvc0) did not show the install's progress: %v\n%s", err, b)
	}
	checkInstalledDisk(t, vm.Disk, img)

	// Boot from the disk: OVMF → GRUB → slot A.
	vm.Direct, vm.NoReboot = nil, false
	vm.Start()
	vm.Expect(`keel: booting slot A`, bootTimeout)
	r := vm.WaitReady(bootTimeout)
	st := vm.Status()
	// The endpoint answers with the document's key material; the upgrade below reaches the
	// TLS registry only through the document's registry_ca and trusts the harness key only
	// through its trusted_keys.
	if r.Version != "v1.0.0-e2e" || r.Slot != "A" || !strings.HasPrefix(partition(st, disk.PartState).Device, "/dev/nvme0n1p") {
		t.Fatalf("installed node: version %s slot %s STATE %+v", r.Version, r.Slot, partition(st, disk.PartState))
	}
	// What a person at either console reads: the node's endpoint.
	vm.Expect(`keel: v1.0.0-e2e ready \(slot A\); endpoint https://10\.0\.2\.15:50000 \(mTLS\)`, 10*time.Second)
	id := vm.Upgrade(v2, true)
	st = vm.WaitUpgrade(id, upgradeTimeout)
	mustState(t, st, upgrade.Done, "v2.0.0-e2e", boot.SlotB)
	t.Logf("installed node upgraded to %s", st.Upgrade.ToVersion)
	if code, b, err := vm.Call("admin", "POST", "/v1/shutdown", nil); err != nil || code != 202 {
		t.Fatalf("shutdown: %d %v %s", code, err, b)
	}
	vm.WaitExit(time.Minute)

	// Install mode again over the installed node: refused without wipe.
	before = fileSum(t, vm.Disk)
	vm.Direct, vm.NoReboot = img.Direct(t, consoles+srv.Args("/node.json", "")), true
	vm.Start()
	m = vm.Expect(`keel-install: failed: (.*)`, installTimeout)
	if !strings.Contains(m[1], "a complete keel install") || !strings.Contains(m[1], "add wipe") {
		t.Errorf("reinstall refusal = %q", m[1])
	}
	vm.PowerCut()
	if fileSum(t, vm.Disk) != before {
		t.Fatal("the refused reinstall changed the disk")
	}
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func zeroDisk(t *testing.T, p string) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, fi.Size()); err != nil {
		t.Fatal(err)
	}
}

// diskState is what install mode would see on the disk image, and whether its ESP holds the
// loader the firmware boots.
func diskState(t *testing.T, p string) (install.Content, bool) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	c, err := install.Classify(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	_, lerr := diskimage.ReadFATFile(p, 1, "/"+install.Bootloader)
	return c, c.State == install.KeelIncomplete && lerr == nil
}

// checkInstalledDisk runs the standard tools over the installed disk: the partition table,
// each filesystem, GRUB's environment; and the ESP's loader is the one the signed slot carries.
func checkInstalledDisk(t *testing.T, p string, img *vmtest.Image) {
	t.Helper()
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	if out := run("sgdisk", "-v", p); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v: %s", out)
	}
	l, err := disk.Plan(1024*disk.MiB, disk.DefaultSpecs)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, c := range []struct {
		part string
		tool []string
	}{
		{disk.PartEFI, []string{"fsck.fat", "-n", "-v"}},
		{disk.PartState, []string{"e2fsck", "-f", "-n"}},
		{disk.PartEphemeral, []string{"e2fsck", "-f", "-n"}},
	} {
		part, _ := l.Find(c.part)
		out := filepath.Join(dir, c.part+".img")
		extract(t, p, part, out)
		run(c.tool[0], append(c.tool[1:], out)...)
	}
	env, err := diskimage.ReadFATFile(p, 1, "/grub/grubenv")
	if err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(dir, "grubenv")
	os.WriteFile(envFile, env, 0o644)
	run("grub-editenv", envFile, "list")
	if len(env) != 1024 {
		t.Errorf("grubenv is %d bytes, want 1024", len(env))
	}
	loader, err := diskimage.ReadFATFile(p, 1, "/"+install.Bootloader)
	if err != nil {
		t.Fatal(err)
	}
	slotLoader, err := diskimage.ReadFATFile(img.SlotA.Path, 0, "/"+install.BootloaderFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(loader, slotLoader) {
		t.Errorf("the ESP's loader (%d bytes) is not the slot's (%d bytes)", len(loader), len(slotLoader))
	}
	cfgText, err := diskimage.ReadFATFile(p, 1, "/grub/grub.cfg")
	if err != nil || !strings.Contains(string(cfgText), "linux /vmlinuz slot=A panic=1 "+boot.DefaultKernelArgs) {
		t.Errorf("grub.cfg: %v\n%s", err, cfgText)
	}
	t.Logf("installed disk: sgdisk -v, fsck.fat, e2fsck (STATE, EPHEMERAL), grub-editenv clean")
}

// extract copies one partition of the disk image into a file of its own, sparse.
func extract(t *testing.T, img string, p disk.Part, out string) {
	t.Helper()
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Truncate(p.Size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	for off := int64(0); off < p.Size; off += int64(len(buf)) {
		n, err := src.ReadAt(buf, p.Start+off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], zero[:n]) {
			if _, err := dst.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestInstallPushed: with keel.install.token instead of a document URL, install mode serves
// its maintenance endpoint and waits: a SATA disk, an e1000e NIC, no disk named (the only empty
// disk). Without the token nothing is answered; a bad document is refused with its reason and
// nothing written; the good one installs and the node reboots.
func TestInstallPushed(t *testing.T) {
	t.Parallel()
	reg := vmtest.NewRegistry(t)
	v1 := reg.PushInstaller(t, "keel:v1.0.0-e2e", vmtest.InstallerOptions{Version: "v1.0.0-e2e"})
	img := image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e"})
	cfg, err := vmtest.HarnessConfig(config.Config{}, false)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := nodeimage.InstallDocument(img.PKIDir, cfg, nil, v1, "")
	if err != nil {
		t.Fatal(err)
	}
	token := "e2e-install-token"
	th := sha256.Sum256([]byte(token))
	vm := vmtest.NewBlank(t, img, 1024)
	vm.DiskBus, vm.NIC, vm.NoReboot = "ahci", "e1000e", true
	vm.Direct = img.Direct(t, "console=ttyS0,115200 panic=1 keel.install= keel.install.token=sha256:"+hex.EncodeToString(th[:]))
	vm.Start()
	m := vm.Expect(`keel-install: maintenance: waiting for the install document: .*public key sha256:([0-9a-f]{64})`, installTimeout)
	pin := m[1]
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if hex.EncodeToString(install.PinHash(cs.PeerCertificates[0])) != pin {
				return errors.New("not the key the console printed")
			}
			return nil
		}}}}
	call := func(method, tok string, body []byte) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, fmt.Sprintf("https://127.0.0.1:%d/v1/install", vm.Port), bytes.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := call("GET", "", nil); code != http.StatusUnauthorized {
		t.Errorf("no token: %d", code)
	}
	if code, b := call("GET", token, nil); code != 200 || !strings.Contains(b, `"waiting"`) || !strings.Contains(b, "/dev/sda (1024 MiB") {
		t.Errorf("status: %d %s", code, b)
	}
	if code, b := call("POST", token, []byte(`{"image": "x", "config": {}, "files": {}}`)); code != 400 || !strings.Contains(b, "no pki/ca.crt") {
		t.Errorf("bad document: %d %s", code, b)
	}
	if c, _ := diskState(t, vm.Disk); c.State != install.Blank {
		t.Fatalf("a refused document changed the disk: %v", c.State)
	}
	if code, b := call("POST", token, doc); code != http.StatusAccepted {
		t.Fatalf("push: %d %s", code, b)
	}
	vm.Expect(`keel-install: disk: installing on /dev/sda`, installTimeout)
	vm.Expect(`keel-install: done version=v1.0.0-e2e disk=/dev/sda`, installTimeout)
	vm.WaitExit(time.Minute)
	if c, loader := diskState(t, vm.Disk); c.State != install.KeelIncomplete || !loader {
		t.Fatalf("pushed install: disk %v, loader %v", c.State, loader)
	}
}
