package install

import (
	"errors"
	"strings"
	"testing"

	"keel/boot"
)

const pin = "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseArgs(t *testing.T) {
	cl := func(s string) boot.Cmdline { return boot.ParseCmdline(s) }
	ok := []struct {
		in   string
		want Args
	}{
		{"keel.install=/dev/nvme0n1 keel.config=https://h/n.json keel.config.ca=" + pin,
			Args{Select: Selector{Dev: "/dev/nvme0n1"}, Config: "https://h/n.json"}},
		{"keel.install= keel.config=https://h/n.json keel.config.ca=" + pin,
			Args{Config: "https://h/n.json"}},
		{"keel.install=model=Samsung*,serial=S4*,min-size=100G,max-size=2T,wipe keel.config=https://10.0.2.2:8443/a?b=c,d keel.config.ca=" + pin,
			Args{Select: Selector{Model: "Samsung*", Serial: "S4*", MinSize: 100 << 30, MaxSize: 2 << 40}, Wipe: true, Config: "https://10.0.2.2:8443/a?b=c,d"}},
	}
	for _, c := range ok {
		a, err := ParseArgs(cl(c.in))
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if a.Select != c.want.Select || a.Wipe != c.want.Wipe || a.Config != c.want.Config || len(a.CAHash) != 32 {
			t.Errorf("%q: got %+v, want %+v", c.in, a, c.want)
		}
	}
	bad := []struct{ in, msg string }{
		{"keel.config=https://h keel.config.ca=" + pin, "no keel.install="},
		{"keel.install=/dev/sda keel.config.ca=" + pin, "no keel.config="},
		{"keel.install=/dev/sda keel.config=http://h/n.json keel.config.ca=" + pin, "must be an https URL"},
		{"keel.install=/dev/sda keel.config=https://h/n.json", "keel.config.ca"},
		{"keel.install=/dev/sda", "no keel.install.token="},
		{"keel.install=/dev/sda keel.install.token=abc", "keel.install.token"},
		{"keel.install=/dev/sda keel.config=https://h/n.json keel.config.ca=" + pin + " keel.install.token=" + pin, "both given"},
		{"keel.install=/dev/sda keel.config=https://h/n.json keel.config.ca=sha256:abcd", "keel.config.ca"},
		{"keel.install=/dev/sda keel.config=https://h/n.json keel.config.ca=md5:" + pin[7:], "keel.config.ca"},
		{"keel.install=/dev/sda,/dev/sdb keel.config=https://h/n.json keel.config.ca=" + pin, "two disks"},
		{"keel.install=/dev/../sda keel.config=https://h/n.json keel.config.ca=" + pin, "not a device path"},
		{"keel.install=size=1G keel.config=https://h/n.json keel.config.ca=" + pin, "unknown selector"},
		{"keel.install=sda keel.config=https://h/n.json keel.config.ca=" + pin, "unknown selector"},
		{"keel.install=min-size=1X keel.config=https://h/n.json keel.config.ca=" + pin, "not a size"},
		{"keel.install=min-size=2G,max-size=1G keel.config=https://h/n.json keel.config.ca=" + pin, "below min-size"},
		{"keel.install=model=[ keel.config=https://h/n.json keel.config.ca=" + pin, "not a pattern"},
	}
	for _, c := range bad {
		_, err := ParseArgs(cl(c.in))
		if !errors.Is(err, ErrArgs) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%q: got %v, want an ErrArgs saying %q", c.in, err, c.msg)
		}
	}
	a, err := ParseArgs(cl("keel.install=,wipe keel.install.token=" + pin))
	if err != nil || len(a.TokenHash) != 32 || a.Config != "" || !a.Wipe {
		t.Errorf("maintenance args: %+v %v", a, err)
	}
	if Requested(cl("slot=A quiet")) || !Requested(cl("keel.install")) {
		t.Error("Requested")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "4K": 4096, "8m": 8 << 20, "1G": 1 << 30, "3T": 3 << 40} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%s: %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "G", "-1", "1.5G", "99999999999T"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
