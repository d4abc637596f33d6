package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"keel/disk"
	"keel/internal/testenv/vmtest"
	"keel/machine"
	"keel/netapi"
)

// checkDrivers: the boot's coldplug loaded each wanted driver for a device that asked for it
// (by modalias), and the modules phase reported no failure.
func checkDrivers(t *testing.T, st netapi.Status, want ...string) {
	t.Helper()
	by := map[string]machine.Driver{}
	var names []string
	for _, d := range st.Drivers {
		by[d.Module] = d
		names = append(names, d.Module)
	}
	for _, m := range want {
		d, ok := by[m]
		if !ok || d.Error != "" || !strings.HasPrefix(d.Device, "/sys/devices/") || d.Modalias == "" {
			t.Errorf("driver %s: %+v (loaded: %v)", m, d, names)
		}
	}
	for _, p := range st.Boot.Phases {
		if p.Name == "modules" && p.Error != "" {
			t.Errorf("modules phase: %s", p.Error)
		}
	}
	t.Logf("drivers: %v", names)
}

// TestDriversByModalias: the same disk image boots on the disk controllers and NICs of
// servers, with no list of drivers kept for them: an NVMe disk with a virtio NIC, then a
// SATA disk on q35's AHCI controller with an Intel e1000e NIC. Each time the node finds its
// partitions on that disk, gets its DHCP address through that NIC, serves its endpoint, and
// its status names the drivers and the devices that asked for them. On the first, an e1000e
// card plugged in once the node runs gets its driver from the kernel's uevent.
func TestDriversByModalias(t *testing.T) {
	t.Parallel()
	img := image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e"})
	for _, c := range []struct {
		bus, nic, dev string
		drivers       []string
	}{
		{"nvme", "virtio", "/dev/nvme0n1p", []string{"nvme", "virtio_pci", "virtio_net", "i6300esb"}},
		{"ahci", "e1000e", "/dev/sda", []string{"ahci", "e1000e", "i6300esb"}},
	} {
		t.Run(c.bus+"+"+c.nic, func(t *testing.T) {
			vm := vmtest.New(t, img)
			vm.DiskBus, vm.NIC, vm.HotplugPort = c.bus, c.nic, c.nic != "e1000e"
			vm.Start()
			vm.WaitReady(bootTimeout)
			st := vm.Status()
			checkDrivers(t, st, c.drivers...)
			for _, name := range []string{disk.PartEFI, disk.PartState, disk.PartEphemeral, disk.PartMeta} {
				if p := partition(st, name); !strings.HasPrefix(p.Device, c.dev) {
					t.Errorf("partition %s = %+v, want on %s*", name, p, c.dev)
				}
			}
			if len(st.Addresses) == 0 || !strings.HasPrefix(st.Addresses[0], "10.0.2.15/") {
				t.Errorf("addresses = %v, want the DHCP lease 10.0.2.15 through the %s NIC", st.Addresses, c.nic)
			}
			if vm.HotplugPort {
				hotplug(t, vm)
			}
		})
	}
}

// hotplug plugs an e1000e card into the running node's spare PCIe port: its driver, not
// loaded at boot, must come from the uevent, named in status and in the events.
func hotplug(t *testing.T, vm *vmtest.VM) {
	t.Helper()
	for _, d := range vm.Status().Drivers {
		if d.Module == "e1000e" {
			t.Fatalf("e1000e loaded before the card was plugged: %+v", d)
		}
	}
	vm.QMP("netdev_add", map[string]any{"type": "user", "id": "hn1"})
	vm.QMP("device_add", map[string]any{"driver": "e1000e", "id": "hnic", "bus": "hp0", "netdev": "hn1"})
	t0 := time.Now()
	for time.Since(t0) < 60*time.Second {
		for _, d := range vm.Status().Drivers {
			if d.Module != "e1000e" {
				continue
			}
			if d.Error != "" || !strings.Contains(d.Modalias, "v00008086d000010D3") {
				t.Fatalf("hot-plugged e1000e: %+v", d)
			}
			code, b, _ := vm.Call("reader", "GET", "/v1/events?tail=500", nil)
			if code != http.StatusOK || !strings.Contains(string(b), `"kind":"driver"`) || !strings.Contains(string(b), "e1000e") {
				t.Errorf("events: %d, no driver event for e1000e:\n%s", code, b)
			}
			t.Logf("hot-plugged e1000e loaded %v after device_add, for %s", time.Since(t0).Round(100*time.Millisecond), d.Device)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("no e1000e driver 60 s after the card was plugged: %+v", vm.Status().Drivers)
}
