package network

import (
	"net/netip"
	"testing"
)

func TestParseIPArg(t *testing.T) {
	tests := []struct {
		in      string
		dev     string
		addr    string // "" → DHCP
		gw      string
		wantErr bool
	}{
		{in: ""},
		{in: "dhcp"},
		{in: ":::::eth1:dhcp", dev: "eth1"},
		{in: "10.0.2.15::10.0.2.2:255.255.255.0::eth0:off", dev: "eth0", addr: "10.0.2.15/24", gw: "10.0.2.2"},
		{in: "192.168.7.9::::::none", addr: "192.168.7.9/24"},
		{in: "10.1.2.3:::255.255.0.0", addr: "10.1.2.3/16"},
		{in: "10.0.2.15::10.9.9.9:255.255.255.0::eth0:off", wantErr: true}, // gateway off-link
		{in: "10.0.2.15:::255.0.255.0", wantErr: true},                     // non-contiguous mask
		{in: "fe80::1", wantErr: true},
		{in: "10.0.2.15::::::bootp", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			c, err := ParseIPArg(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %+v, want error", c)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Device != tc.dev {
				t.Errorf("device = %q, want %q", c.Device, tc.dev)
			}
			if tc.addr == "" {
				if c.Static != nil {
					t.Errorf("static %+v, want DHCP", c.Static)
				}
				return
			}
			if c.Static == nil || c.Static.Addr != netip.MustParsePrefix(tc.addr) {
				t.Fatalf("static = %+v, want %s", c.Static, tc.addr)
			}
			if tc.gw != "" && c.Static.Gateway != netip.MustParseAddr(tc.gw) {
				t.Errorf("gateway = %v, want %s", c.Static.Gateway, tc.gw)
			}
		})
	}
}
