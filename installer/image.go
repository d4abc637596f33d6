// Package installer builds, signs, pushes and pulls installer images: OCI images whose tag
// is the version they install, holding one slot image and a signed manifest.
//
// An installer image has three layers, found by media type:
//
//	application/vnd.keel.installer.manifest.v1+json   Manifest (JSON), what is signed
//	application/vnd.keel.installer.signature.v1+json  Signature over the manifest bytes (absent when unsigned)
//	application/vnd.keel.installer.slot.v1+gzip       the slot filesystem image, gzip
//
// and an image config with os linux and the target architecture. A node checks the
// architecture, the signature and the slot size before it downloads the slot, and the slot's
// size and SHA-256 while it downloads it: it trusts nothing it has not checked.
package installer

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
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"keel/disk"
)

// Media types of the layers.
const (
	MediaManifest  types.MediaType = "application/vnd.keel.installer.manifest.v1+json"
	MediaSignature types.MediaType = "application/vnd.keel.installer.signature.v1+json"
	MediaSlot      types.MediaType = "application/vnd.keel.installer.slot.v1+gzip"
)

// Manifest is the signed description of an installer image.
type Manifest struct {
	Version    string        `json:"version"`
	Arch       string        `json:"arch"`
	SlotSize   int64         `json:"slot_size"`
	SlotSHA256 string        `json:"slot_sha256"`
	Slot       disk.Manifest `json:"slot"` // the manifest.json inside the slot
}

// Signature is the signature layer.
type Signature struct {
	KeyID     string `json:"key_id"`
	Signature string `json:"signature"` // base64 ed25519 over the manifest layer's bytes
}

// KeyID names a public key: the first 16 hex digits of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// BuildOptions make an installer image.
type BuildOptions struct {
	SlotPath string
	Slot     disk.Manifest
	Key      ed25519.PrivateKey // nil: unsigned
	Arch     string             // default amd64
	// Manifest, when set, is called on the manifest before it is signed: tests use it to
	// make images whose signed manifest lies.
	Manifest func(*Manifest)
}

// Build returns the installer image for a slot image.
func Build(o BuildOptions) (v1.Image, error) {
	if o.Arch == "" {
		o.Arch = "amd64"
	}
	slot, err := os.ReadFile(o.SlotPath)
	if err != nil {
		return nil, fmt.Errorf("installer: %w", err)
	}
	sum := sha256.Sum256(slot)
	m := Manifest{Version: o.Slot.Version, Arch: o.Arch, SlotSize: int64(len(slot)), SlotSHA256: hex.EncodeToString(sum[:]), Slot: o.Slot}
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
	layers := []v1.Layer{static.NewLayer(mb, MediaManifest)}
	if o.Key != nil {
		sig := Signature{KeyID: KeyID(o.Key.Public().(ed25519.PublicKey)), Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(o.Key, mb))}
		sb, _ := json.Marshal(sig)
		layers = append(layers, static.NewLayer(sb, MediaSignature))
	}
	layers = append(layers, static.NewLayer(gz.Bytes(), MediaSlot))
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layers...)
	if err != nil {
		return nil, fmt.Errorf("installer: %w", err)
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

// EncodeKey and DecodeKey store keys as base64 text (one line).
func EncodeKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// DecodePublicKey parses a base64 ed25519 public key.
func DecodePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("installer: not a base64 ed25519 public key: %q", s)
	}
	return ed25519.PublicKey(b), nil
}

// DecodePrivateKey parses a base64 ed25519 private key.
func DecodePrivateKey(s string) (ed25519.PrivateKey, error) {
	b, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace([]byte(s))))
	if err != nil || len(b) != ed25519.PrivateKeySize {
		return nil, errors.New("installer: not a base64 ed25519 private key")
	}
	return ed25519.PrivateKey(b), nil
}

// readLimited reads at most limit bytes; more is an error (a manifest is small, and a
// registry may lie about sizes).
func readLimited(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return b, nil
}
