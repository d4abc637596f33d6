// Package e2e holds the end-to-end tests: real disk images booted by real GRUB under QEMU.
// They need `make deps` (QEMU, OVMF, GRUB, the Debian kernel); `make test` runs them.
package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"keel/boot"
	"keel/disk"
	"keel/initramfs/diskimage"
	"keel/internal/testenv/vmtest"
	"keel/netapi"
	"keel/sequence"
)

// Timeouts sized for TCG on a busy 2-core machine; a boot takes 7-10 s there.
const (
	bootTimeout = 90 * time.Second
	downTimeout = 60 * time.Second
)

func image(t testing.TB, o vmtest.ImageOptions) *vmtest.Image {
	t.Helper()
	img, err := vmtest.BuildImage(context.Background(), o)
	if err != nil {
		t.Fatalf("build image: %v", err)
	}
	return img
}

func partition(st netapi.Status, name string) netapi.Partition {
	for _, p := range st.Partitions {
		if p.Name == name {
			return p
		}
	}
	return netapi.Partition{}
}

func cleanAtMount(t *testing.T, st netapi.Status, name string) bool {
	t.Helper()
	p := partition(st, name)
	if p.CleanAtMount == nil {
		t.Fatalf("%s: no clean_at_mount in status: %+v", name, p)
	}
	return *p.CleanAtMount
}

// TestBootStatusShutdown boots the image through OVMF and GRUB, reads status over mTLS, is
// refused without a client certificate, shuts down through the init's own path, and boots
// again to find /var intact and cleanly unmounted. Then a power cut, to show the clean check
// can fail.
func TestBootStatusShutdown(t *testing.T) {
	t.Parallel()
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e"}))
	vm.Start()
	vm.Expect(`keel: booting slot A`, bootTimeout)
	r := vm.WaitReady(bootTimeout)
	if r.Version != "v1.0.0-e2e" || r.Slot != "A" || r.KernelAtReadyS <= r.KernelAtInitS {
		t.Fatalf("ready line = %+v", r)
	}
	t.Logf("boot 1: kernel at init %.2fs, ready %.2fs (init→ready %.2fs)", r.KernelAtInitS, r.KernelAtReadyS, r.KernelAtReadyS-r.KernelAtInitS)

	st := vm.Status()
	if st.Version != "v1.0.0-e2e" || st.BootedSlot != "A" || st.CommittedSlot != "A" || st.NextSlot != "" {
		t.Errorf("status = version %q booted %q committed %q next %q", st.Version, st.BootedSlot, st.CommittedSlot, st.NextSlot)
	}
	if st.BootCount != 0 || st.BootID != r.BootID {
		t.Errorf("first boot: boot_count %d boot_id %q (ready said %q)", st.BootCount, st.BootID, r.BootID)
	}
	for _, want := range []struct{ name, mount string }{
		{disk.PartEFI, "/boot"}, {disk.PartState, "/state"}, {disk.PartEphemeral, "/var"}, {disk.PartMeta, ""},
	} {
		if p := partition(st, want.name); p.Device == "" || p.Mountpoint != want.mount {
			t.Errorf("partition %s = %+v, want mounted at %q", want.name, p, want.mount)
		}
	}
	if !cleanAtMount(t, st, disk.PartEphemeral) {
		t.Error("fresh EPHEMERAL not clean at first mount")
	}
	if len(st.Addresses) == 0 || !strings.HasPrefix(st.Addresses[0], "10.0.2.15/") {
		t.Errorf("addresses = %v, want the DHCP lease 10.0.2.15", st.Addresses)
	}
	if len(st.Slots) != 2 || st.Slots[0].Version != "v1.0.0-e2e" {
		t.Errorf("slots = %+v", st.Slots)
	}
	checkHostPrepared(t, st)
	checkDrivers(t, st, "virtio_pci", "virtio_blk", "virtio_net", "i6300esb")
	machineID := st.Host.MachineID

	// No client certificate: refused in the TLS handshake, before any HTTP.
	if code, _, err := vm.Call("", "GET", "/v1/status", nil); err == nil {
		t.Errorf("no client certificate: got HTTP %d, want a refused handshake", code)
	}
	// A reader may look but not power off.
	if code, b, err := vm.Call("reader", "POST", "/v1/shutdown", nil); err != nil || code != http.StatusForbidden {
		t.Errorf("reader shutdown: %d %v %s, want 403", code, err, b)
	}
	var v netapi.Version
	if code, b, err := vm.Call("reader", "GET", "/v1/version", nil); err != nil || code != 200 || json.Unmarshal(b, &v) != nil || v.Version != "v1.0.0-e2e" {
		t.Errorf("version: %d %v %s", code, err, b)
	}

	// Clean shutdown through the init: API → kill → unmount → poweroff.
	if code, b, err := vm.Call("admin", "POST", "/v1/shutdown", nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("shutdown: %d %v %s", code, err, b)
	}
	vm.Expect(`unmount /var`, downTimeout)
	vm.Expect(`keel-shutdown-done action=poweroff errors=0`, downTimeout)
	vm.WaitExit(downTimeout)

	// Boot 2 on the same disk: /var kept what boot 1 wrote, and was unmounted cleanly.
	vm.Start()
	r2 := vm.WaitReady(bootTimeout)
	st = vm.Status()
	if st.BootCount != 1 {
		t.Errorf("boot 2: boot_count = %d, want 1 (boot 1's record in /var lost?)", st.BootCount)
	}
	if r2.BootID == r.BootID {
		t.Error("boot 2 has boot 1's boot id")
	}
	if !cleanAtMount(t, st, disk.PartEphemeral) || !cleanAtMount(t, st, disk.PartState) {
		t.Errorf("after a clean shutdown: EPHEMERAL clean %v, STATE clean %v", cleanAtMount(t, st, disk.PartEphemeral), cleanAtMount(t, st, disk.PartState))
	}
	if st.Host == nil || st.Host.MachineID != machineID {
		t.Errorf("boot 2: machine id %+v, boot 1 had %s (it must be kept on STATE)", st.Host, machineID)
	}

	// Power cut: the journal needs recovery, and status says so. This is the control that
	// shows the clean check above can fail.
	vm.PowerCut()
	vm.Start()
	vm.WaitReady(bootTimeout)
	st = vm.Status()
	if cleanAtMount(t, st, disk.PartEphemeral) {
		t.Error("after a power cut: EPHEMERAL reported clean")
	}
	if st.BootCount != 2 {
		t.Errorf("boot 3: boot_count = %d, want 2", st.BootCount)
	}
}

// checkHostPrepared: the node prepared its system for containers (package host): cgroup v2
// with the kubelet's controllers delegated, the container modules loaded (the bridge-nf sysctls
// exist only then), the sysctls applied, a machine id, DHCP's name server in resolv.conf, a CA
// bundle.
func checkHostPrepared(t *testing.T, st netapi.Status) {
	t.Helper()
	h := st.Host
	if h == nil {
		t.Fatal("no host section in status")
	}
	for _, c := range []string{"cpu", "memory", "pids", "cpuset", "io"} {
		if !slices.Contains(h.CgroupControllers, c) {
			t.Errorf("cgroup controller %s not delegated: %v (missing %v)", c, h.CgroupControllers, h.CgroupMissing)
		}
	}
	for k, v := range map[string]string{"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1", "fs.inotify.max_user_watches": "524288"} {
		if h.Sysctls[k] != v {
			t.Errorf("sysctl %s = %q, want %q", k, h.Sysctls[k], v)
		}
	}
	if len(h.MachineID) != 32 || !slices.Contains(h.Nameservers, "10.0.2.3") || h.CACertificates < 100 {
		t.Errorf("machine id %q, nameservers %v, CA certificates %d", h.MachineID, h.Nameservers, h.CACertificates)
	}
	took := map[string]float64{}
	for _, p := range st.Boot.Phases {
		switch p.Name {
		case "machine-id", "ca-certificates", "cgroups", "container-modules", "sysctls", "names":
			took[p.Name] = p.DurationS
			if p.Error != "" {
				t.Errorf("phase %s: %s", p.Name, p.Error)
			}
		}
	}
	t.Logf("host: cgroup controllers %v, %d sysctls, %d CA certificates, nameservers %v; phases (s) %v",
		h.CgroupControllers, len(h.Sysctls), h.CACertificates, h.Nameservers, took)
}

// TestBootOnce is the bootloader contract every upgrade relies on: next_entry=B boots B once
// (GRUB clears it before booting), and the following boot is the committed slot A again.
func TestBootOnce(t *testing.T) {
	t.Parallel()
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e", VersionB: "v2.0.0-e2e"}))
	vm.SetGrubenv(boot.KeyNextEntry, "B")
	vm.Start()
	vm.Expect(`keel: booting slot B`, bootTimeout)
	r := vm.WaitReady(bootTimeout)
	if r.Slot != "B" || r.Version != "v2.0.0-e2e" {
		t.Fatalf("one-shot boot: ready = %+v, want slot B version v2.0.0-e2e", r)
	}
	st := vm.Status()
	if st.BootedSlot != "B" || st.CommittedSlot != "A" || st.NextSlot != "" {
		t.Errorf("one-shot status: booted %q committed %q next %q, want B, A, none (GRUB clears next_entry)", st.BootedSlot, st.CommittedSlot, st.NextSlot)
	}
	if len(st.Slots) != 2 || st.Slots[0].Version != "v1.0.0-e2e" || st.Slots[1].Version != "v2.0.0-e2e" {
		t.Errorf("slots = %+v", st.Slots)
	}

	// Ctrl-Alt-Del: the kernel signals PID 1 (SIGINT), which shuts down in order and reboots.
	vm.CtrlAltDel()
	vm.Expect(`keel-shutdown-done action=reboot errors=0`, downTimeout)
	vm.Expect(`keel: booting slot A`, bootTimeout)
	r = vm.WaitReady(bootTimeout)
	if r.Slot != "A" || r.Version != "v1.0.0-e2e" {
		t.Fatalf("after the one-shot: ready = %+v, want slot A version v1.0.0-e2e", r)
	}

	// GRUB left next_entry empty on disk.
	if code, b, err := vm.Call("admin", "POST", "/v1/shutdown", nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("shutdown: %d %v %s", code, err, b)
	}
	vm.WaitExit(downTimeout)
	if v, ok := vm.Grubenv().Get(boot.KeyNextEntry); ok {
		t.Errorf("next_entry = %q after the one-shot, want empty", v)
	}
}

// TestBootTries is the trial contract, booted: next_entry=B with trial_tries=2 boots B twice
// (GRUB spends a try before each, and clears next_entry itself before the last), then the
// committed slot A; grubenv stays GRUB's 1024-byte block throughout.
func TestBootTries(t *testing.T) {
	t.Parallel()
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e", VersionB: "v2.0.0-e2e"}))
	vm.SetGrubenv(boot.KeyNextEntry, "B")
	vm.SetGrubenv(boot.KeyTrialTries, "2")
	vm.Start()
	for i, want := range []struct {
		slot, next string
		tries      int
	}{{"B", "B", 1}, {"B", "", 0}, {"A", "", 0}} {
		vm.Expect(`keel: booting slot `+want.slot, bootTimeout)
		r := vm.WaitReady(bootTimeout)
		st := vm.Status()
		if r.Slot != want.slot || st.CommittedSlot != "A" || st.NextSlot != want.next || st.TrialTries != want.tries {
			t.Fatalf("boot %d: slot %s, committed %s, next %q with %d tries; want slot %s, next %q with %d", i+1, r.Slot, st.CommittedSlot, st.NextSlot, st.TrialTries, want.slot, want.next, want.tries)
		}
		if i < 2 {
			vm.CtrlAltDel()
			vm.Expect(`keel-shutdown-done action=reboot errors=0`, downTimeout)
		}
	}
	if code, b, err := vm.Call("admin", "POST", "/v1/shutdown", nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("shutdown: %d %v %s", code, err, b)
	}
	vm.WaitExit(downTimeout)
	env := vm.Grubenv()
	for _, k := range []string{boot.KeyNextEntry, boot.KeyTrialTries} {
		if v, ok := env.Get(k); ok {
			t.Errorf("%s = %q after the tries, want empty", k, v)
		}
	}
	// GRUB's save_env rewrote the block in place: still its size, still its format.
	raw, err := diskimage.ReadFATFile(vm.Disk, 1, "/grub/grubenv")
	if err != nil || len(raw) != boot.EnvSize {
		t.Fatalf("grubenv: %d bytes, %v; want %d", len(raw), err, boot.EnvSize)
	}
	// And GRUB's own tool reads what GRUB's save_env left.
	f := filepath.Join(t.TempDir(), "grubenv")
	if err := os.WriteFile(f, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("grub-editenv", f, "list").CombinedOutput(); err != nil || !strings.Contains(string(out), "next_entry=\n") || !strings.Contains(string(out), "trial_tries=\n") {
		t.Errorf("grub-editenv list: %v\n%s", err, out)
	}
}

// TestFatalBootPanicsAndReboots breaks STATE (without it the node has no keys): the init must
// exit, the kernel panic, and panic=1 reboot the machine, rather than hang.
func TestFatalBootPanicsAndReboots(t *testing.T) {
	t.Parallel()
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e"}))
	vm.WritePartition(disk.PartState, make([]byte, 4096)) // no superblock
	vm.Start()
	vm.Expect(`boot failed; exiting so the kernel panics`, bootTimeout)
	vm.Expect(`Kernel panic - not syncing: Attempted to kill init`, bootTimeout)
	vm.Expect(`keel: booting slot A`, bootTimeout) // GRUB again: the machine rebooted
	vm.Expect(`keel init starting`, bootTimeout)
}

// bootTwice boots the VM, reboots it once (Ctrl-Alt-Del) so that /var holds a boot log with
// an earlier entry, and returns the status of the second boot.
func bootTwice(t *testing.T, vm *vmtest.VM) netapi.Status {
	t.Helper()
	vm.Start()
	vm.WaitReady(bootTimeout)
	vm.CtrlAltDel()
	vm.WaitReady(bootTimeout)
	st := vm.Status()
	if st.BootCount != 1 {
		t.Fatalf("second boot: boot count %d, want 1", st.BootCount)
	}
	return st
}

func TestMain(m *testing.M) {
	if _, err := os.Stat(vmtest.OVMFCode); err != nil {
		println("e2e: OVMF missing: run `make deps` first")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestRebootWatchdog: a kernel that hangs on its way down after the ordered shutdown (a test
// fault: the init hangs where it would call reboot(2); soft lockups there were seen under TCG)
// is reset by the reboot watchdog armed just before, and the node comes back by itself.
func TestRebootWatchdog(t *testing.T) {
	t.Parallel()
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e", FaultA: "hang-in-reboot"}))
	vm.Start()
	r1 := vm.WaitReady(bootTimeout)
	if code, b, err := vm.Call("operator", "POST", "/v1/reboot", nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("reboot: %d %v %s", code, err, b)
	}
	vm.Expect(`keel: reboot watchdog armed`, downTimeout)
	t0 := time.Now()
	r2 := vm.WaitReady(bootTimeout + sequence.RebootWatchdog)
	if r2.BootID == r1.BootID {
		t.Fatalf("same boot id %s: the node did not reboot", r2.BootID)
	}
	t.Logf("hung on the way down; reset by the watchdog and ready again %v later (watchdog %v)", time.Since(t0).Round(time.Second), sequence.RebootWatchdog)
}
