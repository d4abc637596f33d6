// Package release builds what a node upgrades to: installer images (the slot image, its
// signed manifest, as an OCI image) and the ed25519 key that signs them. Build-host code,
// never linked into the init; the node's side of the format is package keel/installer.
package release

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"

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
	Arch     string // default amd64
	// Labels go into the image config besides dev.keel.version (they change its digest).
	Labels map[string]string
	// Manifest, when set, is called on the manifest before it is packed: tests use it to
	// make images whose (signed) manifest lies.
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
	layers := []v1.Layer{static.NewLayer(mb, installer.MediaManifest), static.NewLayer(gz.Bytes(), installer.MediaSlot)}
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
	for k, v := range o.Labels {
		cfg.Config.Labels[k] = v
	}
	return mutate.ConfigFile(img, cfg)
}
