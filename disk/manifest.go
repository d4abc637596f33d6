package disk

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// ManifestName is the slot manifest's file name at the root of a slot filesystem.
const ManifestName = "manifest.json"

// Manifest describes what a slot holds. It is written at image-build time and read by the
// node (status) and, later, by the upgrade to verify a slot end to end.
type Manifest struct {
	Version       string `json:"version"`
	Arch          string `json:"arch"`
	KernelRelease string `json:"kernel_release"`
	Files         []File `json:"files"`
}

// File is one file of a slot with its size and SHA-256.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// ErrManifest wraps manifest validation failures.
var ErrManifest = errors.New("slot manifest")

var versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)

// ValidVersion reports whether v is acceptable as a version: it ends up in file names, OCI
// tags and the kernel log, so it is kept to a tag-safe alphabet.
func ValidVersion(v string) error {
	if !versionRE.MatchString(v) {
		return fmt.Errorf("%w: version %q: want 1-64 of [A-Za-z0-9._+-], starting alphanumeric", ErrManifest, v)
	}
	return nil
}

// ValidFileName reports whether name may name a file of a slot: the node joins it to the slot's
// mount point to read it, so it must stay below it: relative, clean (no "..", "." or empty
// parts), not the manifest itself, of a plain alphabet, at most 255 bytes.
func ValidFileName(name string) error {
	if !fileRE.MatchString(name) || !filepath.IsLocal(name) || filepath.Clean(name) != name || name == ManifestName {
		return fmt.Errorf("%w: file name %q: want a clean relative path of [A-Za-z0-9._+-/] (no .., no leading /), 1-255 bytes, not %s", ErrManifest, name, ManifestName)
	}
	for _, part := range strings.Split(name, "/") {
		if part == "." || part == ".." {
			return fmt.Errorf("%w: file name %q: %q is not allowed", ErrManifest, name, part)
		}
	}
	return nil
}

var fileRE = regexp.MustCompile(`^[A-Za-z0-9._+-][A-Za-z0-9._+/-]{0,254}$`)

// NewFile describes content under name.
func NewFile(name string, content []byte) File {
	sum := sha256.Sum256(content)
	return File{Name: name, Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:])}
}

// ParseManifest decodes and validates a manifest.
func ParseManifest(b []byte) (Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %w", ErrManifest, err)
	}
	return m, m.Validate()
}

// Validate checks what every reader relies on.
func (m Manifest) Validate() error {
	if err := ValidVersion(m.Version); err != nil {
		return err
	}
	if m.Arch == "" {
		return fmt.Errorf("%w: no arch", ErrManifest)
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if err := ValidFileName(f.Name); err != nil {
			return err
		}
		if seen[f.Name] {
			return fmt.Errorf("%w: duplicate file name %q", ErrManifest, f.Name)
		}
		seen[f.Name] = true
		if f.Size < 0 {
			return fmt.Errorf("%w: %s: negative size", ErrManifest, f.Name)
		}
		if b, err := hex.DecodeString(f.SHA256); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("%w: %s: bad sha256 %q", ErrManifest, f.Name, f.SHA256)
		}
	}
	return nil
}

// Encode returns indented JSON, fields in struct order, files in the order given.
func (m Manifest) Encode() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
