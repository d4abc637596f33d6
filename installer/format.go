// Package installer is the node's side of installer images: OCI images whose tag is the
// version they install, holding one slot image and its manifest, signed with cosign. It checks
// and fetches them; building them is the build host's (package keel/initramfs/release), signing
// them cosign's (`cosign sign --key`).
//
// An installer image has two layers, found by media type:
//
//	application/vnd.keel.installer.manifest.v1+json   Manifest (JSON)
//	application/vnd.keel.installer.slot.v1+gzip       the slot filesystem image, gzip
//
// and an image config with os linux and the target architecture. Its signatures are cosign's
// (cosign.go): over the image's manifest digest, which covers both layers. A node checks the
// signature first, then the architecture and the slot size before it downloads the slot, and
// the slot's size and SHA-256 while it downloads it: it trusts nothing it has not checked.
package installer

import (
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"keel/disk"
)

// Media types of the layers.
const (
	MediaManifest types.MediaType = "application/vnd.keel.installer.manifest.v1+json"
	MediaSlot     types.MediaType = "application/vnd.keel.installer.slot.v1+gzip"
)

// Manifest describes an installer image (signed with it: the image digest covers it).
type Manifest struct {
	Version    string        `json:"version"`
	Arch       string        `json:"arch"`
	SlotSize   int64         `json:"slot_size"`
	SlotSHA256 string        `json:"slot_sha256"`
	Slot       disk.Manifest `json:"slot"` // the manifest.json inside the slot
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
