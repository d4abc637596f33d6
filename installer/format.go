// Package installer is the node's side of installer images: OCI images whose tag is the
// version they install, holding one slot image and a signed manifest. It checks and fetches
// them; building and signing them is the build host's (package keel/initramfs/release).
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
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"

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

// EncodeKey stores a key as base64 text (one line).
func EncodeKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// DecodePublicKey parses a base64 ed25519 public key.
func DecodePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("installer: not a base64 ed25519 public key: %q", s)
	}
	return ed25519.PublicKey(b), nil
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
