// Package network brings the node's network up: loopback, then the first Ethernet link by
// DHCP (u-root's client) or statically from the kernel's ip= argument. config.go is pure.
package network

import (
	"fmt"
	"net/netip"
	"strings"
)

// Config says how to configure the primary link.
type Config struct {
	// Device is the interface to use; empty means the first non-loopback link that appears.
	Device string
	// Static, when set, is used instead of DHCP.
	Static *Static
}

// Static is a fixed address.
type Static struct {
	Addr    netip.Prefix
	Gateway netip.Addr // zero: no default route
}

// ParseIPArg parses the kernel's ip= argument (Documentation/admin-guide/nfs/nfsroot.rst):
//
//	ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>
//
// "dhcp" (or an empty client-ip with autoconf dhcp/on/any) means DHCP. An empty string is DHCP
// on the first link.
func ParseIPArg(s string) (Config, error) {
	switch s {
	case "", "dhcp", "on", "any", "both":
		return Config{}, nil
	}
	f := strings.Split(s, ":")
	for len(f) < 7 {
		f = append(f, "")
	}
	cfg := Config{Device: f[5]}
	switch f[6] {
	case "", "off", "none", "static":
	case "dhcp", "on", "any", "both":
		if f[0] == "" {
			return cfg, nil
		}
	default:
		return Config{}, fmt.Errorf("ip=%s: autoconf %q not supported (want off or dhcp)", s, f[6])
	}
	if f[0] == "" {
		return cfg, nil // no address given: DHCP
	}
	ip, err := netip.ParseAddr(f[0])
	if err != nil || !ip.Is4() {
		return Config{}, fmt.Errorf("ip=%s: client address %q: want IPv4", s, f[0])
	}
	bits := 24
	if f[3] != "" {
		m, err := netip.ParseAddr(f[3])
		if err != nil || !m.Is4() {
			return Config{}, fmt.Errorf("ip=%s: netmask %q", s, f[3])
		}
		bits, err = maskBits(m)
		if err != nil {
			return Config{}, fmt.Errorf("ip=%s: %w", s, err)
		}
	}
	st := &Static{Addr: netip.PrefixFrom(ip, bits)}
	if f[2] != "" {
		gw, err := netip.ParseAddr(f[2])
		if err != nil || !gw.Is4() {
			return Config{}, fmt.Errorf("ip=%s: gateway %q", s, f[2])
		}
		if !st.Addr.Masked().Contains(gw) {
			return Config{}, fmt.Errorf("ip=%s: gateway %s is outside %s", s, gw, st.Addr.Masked())
		}
		st.Gateway = gw
	}
	cfg.Static = st
	return cfg, nil
}

func maskBits(m netip.Addr) (int, error) {
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n := 0
	for v&0x80000000 != 0 {
		n++
		v <<= 1
	}
	if v != 0 {
		return 0, fmt.Errorf("netmask %s is not contiguous", m)
	}
	return n, nil
}
