package nodeimage

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"keel/installer"
)

// Signing key files in a key directory (make key): base64 text, one line each.
const (
	SigningKeyFile = "signing.key"
	SigningPubFile = "signing.pub"
)

// EnsureSigningKey creates an ed25519 signing key pair in dir unless one exists, and returns
// it. The public half goes into each node's config (upgrade.trusted_keys).
func EnsureSigningKey(dir string) (ed25519.PrivateKey, string, error) {
	kp, pp := filepath.Join(dir, SigningKeyFile), filepath.Join(dir, SigningPubFile)
	if b, err := os.ReadFile(kp); err == nil {
		k, err := installer.DecodePrivateKey(string(b))
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", kp, err)
		}
		return k, installer.EncodeKey(k.Public().(ed25519.PublicKey)), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	pub, key, err := installer.GenerateKey()
	if err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(kp, []byte(installer.EncodeKey(key)+"\n"), 0o600); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(pp, []byte(installer.EncodeKey(pub)+"\n"), 0o644); err != nil {
		return nil, "", err
	}
	return key, installer.EncodeKey(pub), nil
}

// Installer makes the installer image of a built slot, signed with key (nil: unsigned).
func Installer(s Slot, key ed25519.PrivateKey) (v1.Image, error) {
	return installer.Build(installer.BuildOptions{SlotPath: s.Path, Slot: s.Manifest, Key: key})
}
