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
	if len(first) != 2+2+2*len(DevRoles) {
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
