package config

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"keel/installer"
	"keel/upgrade"
)

// TrustedKey is a cosign public key (cosign.pub, PEM) installer images may be signed with. In
// config.json it is an object, or just the PEM text for a key with no name and no expiry:
//
//	"trusted_keys": [
//	  {"name": "release-2026", "public_key": "-----BEGIN PUBLIC KEY-----\n...", "expires": "2027-01-31T00:00:00Z"},
//	  {"name": "release-2025", "public_key": "...", "revoked": true}
//	]
//
// A revoked key stays listed so that images signed only by it are refused with that reason
// (and so that a config without it is not mistaken for one that never trusted it).
type TrustedKey struct {
	Name      string `json:"name,omitempty"`
	PublicKey string `json:"public_key"`
	// Expires: a signature checked after this instant (the node's clock) does not count.
	Expires time.Time `json:"expires,omitzero"`
	Revoked bool      `json:"revoked,omitempty"`
}

// UnmarshalJSON takes an object or a PEM string.
func (k *TrustedKey) UnmarshalJSON(b []byte) error {
	var pem string
	if err := json.Unmarshal(b, &pem); err == nil {
		*k = TrustedKey{PublicKey: pem}
		return nil
	}
	type plain TrustedKey
	var p plain
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("upgrade.trusted_keys: %w", err)
	}
	*k = TrustedKey(p)
	return nil
}

// Installer is the key as the installer checks it.
func (k TrustedKey) Installer() (installer.TrustedKey, error) {
	pub, err := installer.ParsePublicKey([]byte(k.PublicKey))
	if err != nil {
		return installer.TrustedKey{}, err
	}
	name := k.Name
	if name == "" {
		name = installer.KeyID(pub)
	}
	return installer.TrustedKey{Name: name, Key: pub, Expires: k.Expires, Revoked: k.Revoked}, nil
}

// CertPool is the node's bundle plus RegistryCA.
func (u Upgrade) CertPool() (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for i, c := range u.RegistryCA {
		if !pool.AppendCertsFromPEM([]byte(c)) {
			return nil, fmt.Errorf("upgrade.registry_ca[%d]: no PEM certificate in it", i)
		}
	}
	return pool, nil
}

func (u Upgrade) validateTrust() error {
	seen := map[string]int{}
	for i, k := range u.TrustedKeys {
		ik, err := k.Installer()
		if err != nil {
			hint := ""
			if !strings.Contains(k.PublicKey, "-----BEGIN") {
				hint = " (keel's own ed25519 format is gone: sign with cosign and trust the PEM of cosign.pub; see the README)"
			}
			return fmt.Errorf("upgrade.trusted_keys[%d] %q: %w%s", i, k.Name, err, hint)
		}
		// One entry per key: two entries could say opposite things (trusted, revoked).
		id := installer.KeyID(ik.Key)
		if j, dup := seen[id]; dup {
			return fmt.Errorf("upgrade.trusted_keys[%d]: the same key as trusted_keys[%d] (%s): list a key once", i, j, id)
		}
		seen[id] = i
		if k.Name != "" && (len(k.Name) > 64 || strings.ContainsAny(k.Name, "\n\r\t")) {
			return fmt.Errorf("upgrade.trusted_keys[%d]: name %q: at most 64 printable characters", i, k.Name)
		}
	}
	for i, c := range u.RegistryCA {
		if !x509.NewCertPool().AppendCertsFromPEM([]byte(c)) {
			return fmt.Errorf("upgrade.registry_ca[%d]: no PEM certificate in it", i)
		}
	}
	for _, r := range u.InsecureRegistries {
		if err := validRegistryHost(r); err != nil {
			return fmt.Errorf("upgrade.insecure_registries: %q: %w", r, err)
		}
	}
	if u.MinVersion != "" && !upgrade.ValidVersion(u.MinVersion) {
		return fmt.Errorf("upgrade.min_version %q is not a semantic version (e.g. v1.4.0)", u.MinVersion)
	}
	return nil
}

// validRegistryHost accepts host or host:port, as image references name registries.
func validRegistryHost(r string) error {
	if r == "" || strings.ContainsAny(r, "/@ ") || strings.Contains(r, "://") {
		return errors.New("want host or host:port (no scheme, no path)")
	}
	if h, p, err := net.SplitHostPort(r); err == nil {
		if h == "" || p == "" {
			return errors.New("want host or host:port")
		}
	}
	return nil
}

// StagedTrust is the part of p a staged upgrade is held to again, at each boot and at its
// activation (upgrade.Trust): the keys that count now, by installer.KeyID, with their expiry
// (a key revoked in any entry is left out, as the pull leaves it out), and allow_unsigned.
func StagedTrust(p installer.Policy) *upgrade.Trust {
	revoked := map[string]bool{}
	for _, k := range p.TrustedKeys {
		if k.Revoked {
			revoked[installer.KeyID(k.Key)] = true
		}
	}
	t := &upgrade.Trust{Keys: map[string]time.Time{}, AllowUnsigned: p.AllowUnsigned}
	for _, k := range p.TrustedKeys {
		id := installer.KeyID(k.Key)
		if revoked[id] {
			continue
		}
		// Listed twice (a config error the validation refuses): the later expiry counts,
		// none being the latest, as the pull accepts any entry not expired.
		if e, ok := t.Keys[id]; ok && (e.IsZero() || !k.Expires.IsZero() && k.Expires.Before(e)) {
			continue
		}
		t.Keys[id] = k.Expires
	}
	return t
}

// PullPolicy is what a node accepts of an installer image (for a slot of maxSlot bytes) and
// how it reaches registries, from this configuration. warn hears of parts that do not apply
// (a key that does not parse; the config was validated, so only a bug gets there).
func (u Upgrade) PullPolicy(arch string, maxSlot int64, warn func(error)) (installer.Policy, installer.PullOptions) {
	p := installer.Policy{Arch: arch, AllowUnsigned: u.AllowUnsigned, MaxSlotSize: maxSlot}
	for _, k := range u.TrustedKeys {
		if ik, err := k.Installer(); err == nil {
			p.TrustedKeys = append(p.TrustedKeys, ik)
		} else {
			warn(err)
		}
	}
	o := installer.PullOptions{Insecure: u.InsecureRegistries}
	if pool, err := u.CertPool(); err == nil {
		o.RootCAs = pool
	} else {
		warn(err)
	}
	return p, o
}
