package modalias

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
)

func table(t *testing.T) *Table {
	b, err := os.ReadFile("testdata/modules.alias")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// The modaliases are what QEMU's devices report (read off a guest's /sys), and what a server's
// disks and NICs would: the module each needs is the one modprobe picks from the real file.
var devices = []struct {
	name, modalias string
	want           []string
}{
	{"virtio-blk (PCI)", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", []string{"virtio_pci"}},
	{"virtio block device", "virtio:d00000002v00001AF4", []string{"virtio_blk"}},
	{"virtio net device", "virtio:d00000001v00001AF4", []string{"virtio_net"}},
	{"NVMe (by class)", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", []string{"nvme"}},
	{"AHCI SATA (by class)", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", []string{"ahci"}},
	{"Intel 82574L", "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00", []string{"e1000e"}},
	{"i6300esb watchdog", "pci:v00008086d000025ABsv00001AF4sd00001100bc08sc80i00", []string{"i6300esb"}},
	{"USB 3 controller", "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30", []string{"xhci_pci"}},
	{"ACPI device (a pattern whose bus is a glob)", "acpi:INTC1085:", []string{"pinctrl_alderlake"}},
	{"nothing knows it", "pci:v0000FFFFd0000FFFFsv0000FFFFsd0000FFFFbcFFscFFi00", nil},
}

func TestModules(t *testing.T) {
	tb := table(t)
	for _, d := range devices {
		if got := tb.Modules(d.modalias); !reflect.DeepEqual(got, d.want) && !(len(got) == 0 && d.want == nil) {
			t.Errorf("%s (%s): %v, want %v", d.name, d.modalias, got, d.want)
		}
	}
}

// TestFullDebianTable: the same against the whole modules.alias of the kernel `make deps`
// unpacks (26,000 aliases), where other modules could also claim a device.
func TestFullDebianTable(t *testing.T) {
	files, _ := filepath.Glob("../../build/cache/kernel/root/lib/modules/*/modules.alias")
	if len(files) == 0 {
		t.Skip("no kernel unpacked (make deps): the testdata subset covers the matching")
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	tb, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devices {
		got := tb.Modules(d.modalias)
		for _, w := range d.want {
			found := false
			for _, g := range got {
				found = found || g == w
			}
			if !found {
				t.Errorf("%s: %v lacks %s", d.name, got, w)
			}
		}
	}
}

func TestParseRefusesDamage(t *testing.T) {
	for _, bad := range []string{"alias pci:v*", "alias [x y", "options nvme x=1", "alias a b c"} {
		if _, err := Parse([]byte("# ok\nalias pci:v* ok\n" + bad + "\n")); err == nil || !strings.Contains(err.Error(), "line 3") {
			t.Errorf("%q: err = %v, want line 3 named", bad, err)
		}
	}
}

func TestColdplug(t *testing.T) {
	sys := fstest.MapFS{
		"devices/pci0000:00/0000:00:01.0/modalias":         {Data: []byte(devices[0].modalias + "\n")},
		"devices/pci0000:00/0000:00:01.0/virtio0/modalias": {Data: []byte(devices[1].modalias + "\n")},
		"devices/pci0000:00/0000:00:02.0/modalias":         {Data: []byte(devices[5].modalias + "\n")},
		"devices/pci0000:00/0000:00:03.0/modalias":         {Data: []byte(devices[0].modalias + "\n")}, // a second virtio device
		"devices/pci0000:00/0000:00:04.0/modalias":         {Data: []byte(devices[len(devices)-1].modalias + "\n")},
		"devices/platform/serial8250/modalias":             {Data: []byte("\n")},
		"class/net/eth0/modalias":                          {Data: []byte(devices[2].modalias)}, // outside devices/
	}
	got, err := table(t).Coldplug(sys)
	if err != nil {
		t.Fatal(err)
	}
	want := []Need{
		{"virtio_pci", "devices/pci0000:00/0000:00:01.0", devices[0].modalias},
		{"virtio_blk", "devices/pci0000:00/0000:00:01.0/virtio0", devices[1].modalias},
		{"e1000e", "devices/pci0000:00/0000:00:02.0", devices[5].modalias},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("coldplug:\n got %+v\nwant %+v", got, want)
	}
}
