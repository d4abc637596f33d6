// Package release builds what a node upgrades to: installer images (the slot image, its
// signed manifest, as an OCI image) and the ed25519 key that signs them. Build-host code,
// never linked into the init; the node's side of the format is package keel/installer.
package release

import (
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"keel/disk"
	"keel/installer"
)

// BuildOptions make an installer image.
type BuildOptions struct {
	SlotPath string
	Slot     disk.Manifest
	Key      ed25519.PrivateKey // nil: unsigned
	Arch     string             // default amd64
	// Manifest, when set, is called on the manifest before it is signed: tests use it to
	// make images whose signed manifest lies.
	Manifest func(*installer.Manifest)
}

// Build returns the installer image for a slot image.
func Build(o BuildOptions) (v1.Image, error) {
	if o.Arch == "" {
		o.Arch = "amd64"
	}
	slot, err := os.ReadFile(o.SlotPath)
	if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	sum := sha256.Sum256(slot)
	m := installer.Manifest{Version: o.Slot.Version, Arch: o.Arch, SlotSize: int64(len(slot)), SlotSHA256: hex.EncodeToString(sum[:]), Slot: o.Slot}
	if o.Manifest != nil {
		o.Manifest(&m)
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	zw.Write(slot)
	if err := zw.Close(); err != nil {
		return nil, err
	}
	layers := []v1.Layer{static.NewLayer(mb, installer.MediaManifest)}
	if o.Key != nil {
		sig := installer.Signature{KeyID: installer.KeyID(o.Key.Public().(ed25519.PublicKey)), Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(o.Key, mb))}
		sb, _ := json.Marshal(sig)
		layers = append(layers, static.NewLayer(sb, installer.MediaSignature))
	}
	layers = append(layers, static.NewLayer(gz.Bytes(), installer.MediaSlot))
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layers...)
	if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", o.Arch
	cfg.Config.Labels = map[string]string{"dev.keel.version": m.Version}
	return mutate.ConfigFile(img, cfg)
}

// GenerateKey makes an ed25519 signing key.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(nil)
}

// DecodePrivateKey parses a base64 ed25519 private key.
func DecodePrivateKey(s string) (ed25519.PrivateKey, error) {
	b, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace([]byte(s))))
	if err != nil || len(b) != ed25519.PrivateKeySize {
		return nil, errors.New("release: not a base64 ed25519 private key")
	}
	return ed25519.PrivateKey(b), nil
}

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
		k, err := DecodePrivateKey(string(b))
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
	pub, key, err := GenerateKey()
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
