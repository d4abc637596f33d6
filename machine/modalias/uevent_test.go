package modalias

import (
	"reflect"
	"strings"
	"testing"
)

// A message as the kernel sends it when QEMU hot-plugs an e1000e card (read off a guest with
// `udevadm monitor --kernel --property`, NULs in place of the newlines).
const e1000eAdd = "add@/devices/pci0000:00/0000:00:1c.0/0000:01:00.0\x00ACTION=add\x00" +
	"DEVPATH=/devices/pci0000:00/0000:00:1c.0/0000:01:00.0\x00SUBSYSTEM=pci\x00PCI_CLASS=20000\x00" +
	"PCI_ID=8086:10D3\x00PCI_SUBSYS_ID=8086:0000\x00PCI_SLOT_NAME=0000:01:00.0\x00" +
	"MODALIAS=pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00\x00SEQNUM=1534\x00"

func TestUevent(t *testing.T) {
	u, err := ParseUevent([]byte(e1000eAdd))
	if err != nil {
		t.Fatal(err)
	}
	if u.Action != "add" || u.DevPath != "/devices/pci0000:00/0000:00:1c.0/0000:01:00.0" || u.Env["SEQNUM"] != "1534" {
		t.Fatalf("parsed %+v", u)
	}
	tb := table(t)
	want := []Need{{Module: "e1000e", Device: "devices/pci0000:00/0000:00:1c.0/0000:01:00.0", Modalias: "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"}}
	if got := tb.Needs(u); !reflect.DeepEqual(got, want) {
		t.Errorf("needs %+v, want %+v", got, want)
	}
	// The same device going away, or a device with no modalias, needs nothing.
	for _, msg := range []string{strings.Replace(e1000eAdd, "add@", "remove@", 1), "add@/devices/virtual/net/lo\x00ACTION=add\x00SUBSYSTEM=net\x00"} {
		u, err := ParseUevent([]byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		if got := tb.Needs(u); got != nil {
			t.Errorf("%s %s: needs %+v, want nothing", u.Action, u.DevPath, got)
		}
	}
	// udev's re-broadcast and damage are refused, not read as devices.
	for _, bad := range []string{"libudev\x00\xfe\xed\xca\xfe", "", "add@\x00", "@/devices/x\x00"} {
		if u, err := ParseUevent([]byte(bad)); err == nil {
			t.Errorf("%q parsed as %+v", bad, u)
		}
	}
}
