package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestChannels: the trusted keys and the registry CA are read at start, and a bad file stops
// the controller with its name.
func TestChannels(t *testing.T) {
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	pub := write("release.pub", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	notKey := write("notkey.pub", "hello")
	notCA := write("ca.pem", "hello")
	r, err := channels(options{keys: list{pub}}, nil)
	if err != nil || len(r.TrustedKeys) != 1 || r.TrustedKeys[0].Name != "release" || r.RootCAs != nil {
		t.Fatalf("a key: %+v, %v", r, err)
	}
	for _, tc := range []struct {
		o    options
		want string
	}{
		{options{keys: list{filepath.Join(dir, "missing.pub")}}, "-trusted-key: open"},
		{options{keys: list{notKey}}, "-trusted-key " + notKey + ": not a PEM PUBLIC KEY"},
		{options{keys: list{pub}, registryCAs: list{notCA}}, "-registry-ca " + notCA + ": no PEM certificate"},
	} {
		if _, err := channels(tc.o, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
		}
	}
}
