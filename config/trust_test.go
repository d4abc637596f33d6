package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"keel/installer"
)

func testPEM(t *testing.T) string {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func TestTrust(t *testing.T) {
	pub, _ := json.Marshal(testPEM(t))
	pub2, _ := json.Marshal(testPEM(t))
	pub3, _ := json.Marshal(testPEM(t))
	good := `{"upgrade":{"trusted_keys":[` + string(pub) + `,{"name":"old","public_key":` + string(pub2) + `,"revoked":true},{"name":"new","public_key":` + string(pub3) + `,"expires":"2027-01-31T00:00:00Z"}],` +
		`"insecure_registries":["10.0.2.2","registry.local:5000"],"min_version":"v1.4.0"}}`
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	ks := c.Upgrade.TrustedKeys
	if len(ks) != 3 || ks[0].Name != "" || !ks[1].Revoked || !ks[2].Expires.Equal(time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("keys %+v", ks)
	}
	ik, err := ks[0].Installer()
	if err != nil || len(ik.Name) != 16 {
		t.Fatalf("unnamed key is named by its ID: %+v, %v", ik, err)
	}
	if _, err := c.Upgrade.CertPool(); err != nil {
		t.Fatal(err)
	}
	// What a staged upgrade is held to again: the two keys that count, by ID, with their
	// expiry; not the revoked one.
	p, _ := c.Upgrade.PullPolicy("amd64", 0, func(err error) { t.Error(err) })
	st := StagedTrust(p)
	ik2, _ := ks[1].Installer()
	ik3, _ := ks[2].Installer()
	if _, ok := st.Keys[installer.KeyID(ik2.Key)]; ok || len(st.Keys) != 2 || st.AllowUnsigned {
		t.Fatalf("staged trust %+v", st)
	}
	if e, ok := st.Keys[installer.KeyID(ik.Key)]; !ok || !e.IsZero() {
		t.Fatalf("staged trust %+v: unnamed key", st)
	}
	if e := st.Keys[installer.KeyID(ik3.Key)]; !e.Equal(ks[2].Expires) {
		t.Fatalf("staged trust %+v: expiry of %q", st, ks[2].Name)
	}
	for _, tc := range []struct{ cfg, says string }{
		{`{"upgrade":{"trusted_keys":["nope"]}}`, "ed25519 format is gone"},
		{`{"upgrade":{"trusted_keys":["MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="]}}`, "ed25519 format is gone"},
		{`{"upgrade":{"trusted_keys":[{"name":"x","public_key":` + string(pub) + `,"expires":"tomorrow"}]}}`, "trusted_keys"},
		{`{"upgrade":{"trusted_keys":[{"name":"x","key":` + string(pub) + `}]}}`, "unknown field"},
		{`{"upgrade":{"registry_ca":["not a certificate"]}}`, "registry_ca[0]"},
		{`{"upgrade":{"insecure_registries":["http://10.0.2.2:5000"]}}`, "no scheme"},
		{`{"upgrade":{"insecure_registries":["10.0.2.2:5000/keel"]}}`, "no scheme, no path"},
		{`{"upgrade":{"min_version":"latest"}}`, "not a semantic version"},
		{`{"upgrade":{"trusted_keys":[` + string(pub) + `,{"name":"x","public_key":` + string(pub) + `,"revoked":true}]}}`, "the same key as trusted_keys[0]"},
		{`{"upgrade":{"trusted_keys":[` + strings.ReplaceAll(string(pub), "PUBLIC KEY", "CERTIFICATE") + `]}}`, "not a PEM PUBLIC KEY"},
	} {
		_, err := Parse([]byte(tc.cfg))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: err = %v, want ErrInvalid saying %q", tc.cfg, err, tc.says)
		}
	}
}
