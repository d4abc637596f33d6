package pki

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestEnsureDevIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	first, err := EnsureDev(dir, ips, []string{"localhost"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 2+2+2*len(DevRoles)+6 { // + the etcd CA, its kube-apiserver and admin clients
		t.Errorf("first run wrote %d files: %v", len(first), first)
	}
	ca, _ := os.ReadFile(filepath.Join(dir, FileCA))
	again, err := EnsureDev(dir, ips, nil, time.Now())
	if err != nil || len(again) != 0 {
		t.Errorf("second run wrote %v, %v; want nothing", again, err)
	}
	// A lost client key is re-issued under the same CA.
	os.Remove(filepath.Join(dir, "reader.key"))
	again, err = EnsureDev(dir, ips, nil, time.Now())
	if err != nil || len(again) != 2 {
		t.Errorf("after losing reader.key wrote %v, %v", again, err)
	}
	if ca2, _ := os.ReadFile(filepath.Join(dir, FileCA)); string(ca2) != string(ca) {
		t.Error("CA changed")
	}
	// Every certificate verifies against the CA, with the role in its Organization.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	for _, role := range DevRoles {
		b, _ := os.ReadFile(filepath.Join(dir, role+".crt"))
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", role, err)
		}
		if len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != role {
			t.Errorf("%s: organization %v", role, c.Subject.Organization)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, FileServer))
	blk, _ := pem.Decode(b)
	c, _ := x509.ParseCertificate(blk.Bytes)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"}); err != nil {
		t.Errorf("server certificate for 127.0.0.1: %v", err)
	}
}

func parse(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestEtcdMember: a member's certificates verify against the etcd CA for their own hosts and
// loopback, with the right usages, and never against the endpoint's CA (nor the reverse).
func TestEtcdMember(t *testing.T) {
	dir := t.TempDir()
	if _, err := EnsureDev(dir, nil, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadEtcdCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := EtcdMember(ca, "cp0", []string{"10.0.2.2", "cp0.example"}, []string{"10.0.0.5"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	etcdPool, devPool := x509.NewCertPool(), x509.NewCertPool()
	etcdPool.AppendCertsFromPEM(files[EtcdCA])
	dev, _ := os.ReadFile(filepath.Join(dir, FileCA))
	devPool.AppendCertsFromPEM(dev)
	server := x509.ExtKeyUsageServerAuth
	client := x509.ExtKeyUsageClientAuth
	for _, c := range []struct {
		file, host string
		usage      x509.ExtKeyUsage
		ok         bool
	}{
		{EtcdServer, "10.0.2.2", server, true},
		{EtcdServer, "cp0.example", server, true},
		{EtcdServer, "127.0.0.1", server, true},
		{EtcdServer, "localhost", server, true},
		{EtcdServer, "10.0.0.5", server, false}, // the peer's address, not the client URL's
		{EtcdServer, "", client, true},          // etcd's gateway presents it to its own member
		{EtcdPeer, "10.0.0.5", server, true},
		{EtcdPeer, "10.0.0.5", client, true},
		{EtcdPeer, "10.0.2.2", server, false},
		{EtcdClient, "", client, true},
		{EtcdClient, "", server, false},
	} {
		_, err := parse(t, files[c.file]).Verify(x509.VerifyOptions{Roots: etcdPool, DNSName: c.host, KeyUsages: []x509.ExtKeyUsage{c.usage}})
		if (err == nil) != c.ok {
			t.Errorf("%s for %q usage %v: %v, want ok=%v", c.file, c.host, c.usage, err, c.ok)
		}
	}
	if _, err := parse(t, files[EtcdClient]).Verify(x509.VerifyOptions{Roots: devPool, KeyUsages: []x509.ExtKeyUsage{client}}); err == nil {
		t.Error("an etcd client certificate verifies against the endpoint's CA")
	}
	admin, _ := os.ReadFile(filepath.Join(dir, "admin.crt"))
	if _, err := parse(t, admin).Verify(x509.VerifyOptions{Roots: etcdPool, KeyUsages: []x509.ExtKeyUsage{client}}); err == nil {
		t.Error("the endpoint's admin certificate verifies against the etcd CA")
	}
	for _, f := range []string{EtcdAPIServer, EtcdAdmin} {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		if _, err := parse(t, b).Verify(x509.VerifyOptions{Roots: etcdPool, KeyUsages: []x509.ExtKeyUsage{client}}); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if _, ok := files[EtcdCAKey]; ok {
		t.Error("a member's files carry the CA key")
	}
}
