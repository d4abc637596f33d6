package host

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"keel/pki"
)

func TestSysctls(t *testing.T) {
	got, err := Sysctls(map[string]string{"net.ipv4.ip_forward": "1", "vm.a": "2"},
		map[string]string{"vm.a": "", "kernel.pid_max": "4194304", "net.ipv4.ip_forward": "0"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Sysctl{{"kernel.pid_max", "4194304"}, {"net.ipv4.ip_forward", "0"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("Sysctls = %v, want %v", got, want)
	}
	for _, bad := range []map[string]string{{"../etc/passwd": "1"}, {"net..x": "1"}, {"Net": "1"}, {"net.x": "1\n2"}, {"nodots": "1"}} {
		if _, err := Sysctls(nil, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Sysctls(%v) = %v, want ErrInvalid", bad, err)
		}
	}
	if p := SysctlPath("net.bridge.bridge-nf-call-iptables"); p != "/proc/sys/net/bridge/bridge-nf-call-iptables" {
		t.Errorf("path %s", p)
	}
	// The defaults themselves pass the checks a config's overrides get.
	if _, err := Sysctls(nil, DefaultSysctls); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func TestSubtreeControl(t *testing.T) {
	line, missing := SubtreeControl("cpuset cpu io memory pids rdma misc\n", KubeletControllers)
	if line != "+cpuset +cpu +io +memory +pids" || len(missing) != 1 || missing[0] != "hugetlb" {
		t.Errorf("line %q missing %v", line, missing)
	}
	if line, missing := SubtreeControl("", []string{"cpu"}); line != "" || len(missing) != 1 {
		t.Errorf("nothing available: %q %v", line, missing)
	}
}

func TestMachineID(t *testing.T) {
	r := bytes.Repeat([]byte{0xab}, 16)
	id, created, err := MachineID("", r)
	if err != nil || !created || id != strings.Repeat("ab", 16) {
		t.Fatalf("new: %q %v %v", id, created, err)
	}
	if id2, created, _ := MachineID(id+"\n", nil); id2 != id || created {
		t.Errorf("kept: %q %v", id2, created)
	}
	for _, bad := range []string{"xyz", strings.Repeat("0", 32), strings.Repeat("AB", 16), strings.Repeat("ab", 17)} {
		if id, created, _ := MachineID(bad, r); !created || id == bad {
			t.Errorf("%q kept as a machine id", bad)
		}
	}
	if _, _, err := MachineID("", []byte{1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("short random: %v", err)
	}
}

func TestResolvConfAndHosts(t *testing.T) {
	dhcp := Resolver{Nameservers: []netip.Addr{netip.MustParseAddr("10.0.2.3")}, Search: []string{"lan"}}
	b, err := ResolvConf(dhcp, Resolver{})
	if err != nil || !strings.Contains(string(b), "nameserver 10.0.2.3\nsearch lan\n") {
		t.Errorf("from DHCP: %q %v", b, err)
	}
	b, _ = ResolvConf(dhcp, Resolver{Nameservers: []netip.Addr{netip.MustParseAddr("1.1.1.1")}})
	if strings.Contains(string(b), "10.0.2.3") || !strings.Contains(string(b), "nameserver 1.1.1.1\nsearch lan") {
		t.Errorf("configured nameservers: %q", b)
	}
	if _, err := ResolvConf(Resolver{Search: []string{"bad domain"}}, Resolver{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad search: %v", err)
	}
	e, err := ParseHostsEntry("10.0.0.5 registry.lan registry")
	if err != nil {
		t.Fatal(err)
	}
	h, err := Hosts("cp0", []netip.Addr{netip.MustParseAddr("10.0.2.15")}, []HostsEntry{e})
	if err != nil || !strings.Contains(string(h), "10.0.2.15 cp0\n10.0.0.5 registry.lan registry\n") || !strings.Contains(string(h), "127.0.0.1 localhost\n") {
		t.Errorf("hosts: %q %v", h, err)
	}
	if h, _ := Hosts("cp0", nil, nil); !strings.Contains(string(h), "127.0.1.1 cp0\n") {
		t.Errorf("hosts without an address: %q", h)
	}
	for _, bad := range []string{"10.0.0.5", "nope registry", "10.0.0.5 bad_name"} {
		e, err := ParseHostsEntry(bad)
		if err == nil {
			_, err = Hosts("cp0", nil, []HostsEntry{e})
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("hosts entry %q: %v", bad, err)
		}
	}
}

func TestCABundle(t *testing.T) {
	ca, err := pki.NewCA("test", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	system := append(bytes.Clone(ca.CertPEM), ca.CertPEM...)
	b, n, err := CABundle(system, ca.CertPEM)
	if err != nil || n != 3 || !bytes.HasPrefix(b, system) {
		t.Fatalf("bundle: %d certs, %v", n, err)
	}
	if _, _, err := CABundle(system, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")); !errors.Is(err, ErrInvalid) {
		t.Errorf("a key as a CA: %v", err)
	}
	if _, _, err := CABundle(system, []byte("not pem")); !errors.Is(err, ErrInvalid) {
		t.Errorf("garbage: %v", err)
	}
}

// TestEnsureMachineID: created once, kept after (in a directory standing for STATE).
func TestEnsureMachineID(t *testing.T) {
	dir := t.TempDir()
	keep, etc := dir+"/state/machine-id", dir+"/etc/machine-id"
	os.MkdirAll(dir+"/state", 0o755)
	id, created, err := EnsureMachineID(keep, etc)
	if err != nil || !created || len(id) != 32 {
		t.Fatalf("first boot: %q %v %v", id, created, err)
	}
	id2, created, err := EnsureMachineID(keep, etc)
	if err != nil || created || id2 != id {
		t.Fatalf("second boot: %q %v %v", id2, created, err)
	}
	if b, _ := os.ReadFile(etc); string(b) != id+"\n" {
		t.Errorf("/etc/machine-id = %q", b)
	}
}
