package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"keel/config"
	"keel/netapi"
	"keel/pki"
)

// Document is what an install fetches: everything the installed node's STATE holds, the
// installer image its slot A is written from, and the kernel arguments of its boot entries.
//
//	{
//	  "image": "registry.example:5000/keel:v1.2.0",
//	  "config": { ...config.json... },
//	  "files": {"pki/ca.crt": "-----BEGIN...", "pki/server.crt": "...", "pki/server.key": "..."},
//	  "kernel_args": "console=tty0 console=ttyS0,115200"
//	}
//
// `mkimage install-doc` writes one from a PKI directory and a config.
type Document struct {
	Image      string            `json:"image"`
	Config     json.RawMessage   `json:"config"`
	Files      map[string]string `json:"files"`
	KernelArgs string            `json:"kernel_args,omitempty"`
}

// ErrDocument wraps every problem with an install document.
var ErrDocument = errors.New("install document")

// MaxDocument bounds what is read of a document: it holds a config and a few PEM files.
const MaxDocument = 4 << 20

// requiredFiles are what the endpoint needs to serve at all (sequence's PKIDir).
var requiredFiles = []string{"pki/" + pki.FileCA, "pki/" + pki.FileServer, "pki/" + pki.FileServerKey}

// reservedArgs are kernel arguments the document may not set: the boot entries' own, and
// those that would replace the init.
var reservedArgs = []string{"slot", "panic", "init", "rdinit"}

// kernelArgsRE keeps kernel arguments to what a grub.cfg line can hold without quoting: no
// quotes, no $, no ;, no newline.
var kernelArgsRE = regexp.MustCompile(`^[A-Za-z0-9 ._,:=/+@-]*$`)

// ParseDocument decodes and checks a document: an image reference, a config the node accepts,
// the endpoint's key material (a CA and a server key pair that belong together), safe file
// paths and kernel arguments. It returns the parsed config too.
func ParseDocument(b []byte) (Document, config.Config, error) {
	var d Document
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return d, config.Config{}, fmt.Errorf("%w: %w", ErrDocument, err)
	}
	if d.Image == "" {
		return d, config.Config{}, fmt.Errorf("%w: no image (the installer image slot A is written from)", ErrDocument)
	}
	cfg, err := config.Parse(d.Config)
	if err != nil {
		return d, cfg, fmt.Errorf("%w: config: %w", ErrDocument, err)
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range d.Files {
			if !yield(k) {
				return
			}
		}
	}) {
		if !filepath.IsLocal(name) || filepath.Clean(name) != name || strings.Contains(name, `\`) {
			return d, cfg, fmt.Errorf("%w: file %q: want a clean path relative to STATE", ErrDocument, name)
		}
		if name == config.FileName {
			return d, cfg, fmt.Errorf("%w: file %q: the config goes in \"config\"", ErrDocument, name)
		}
	}
	for _, f := range requiredFiles {
		if d.Files[f] == "" {
			return d, cfg, fmt.Errorf("%w: no %s: the node's endpoint could not serve", ErrDocument, f)
		}
	}
	if _, err := netapi.TLSConfig([]byte(d.Files[requiredFiles[0]]), []byte(d.Files[requiredFiles[1]]), []byte(d.Files[requiredFiles[2]])); err != nil {
		return d, cfg, fmt.Errorf("%w: endpoint key material: %w", ErrDocument, err)
	}
	if len(d.KernelArgs) > 1024 || !kernelArgsRE.MatchString(d.KernelArgs) {
		return d, cfg, fmt.Errorf("%w: kernel_args %q: at most 1024 of letters, digits, spaces and ._,:=/+@-", ErrDocument, d.KernelArgs)
	}
	for _, f := range strings.Fields(d.KernelArgs) {
		k, _, _ := strings.Cut(f, "=")
		if strings.HasPrefix(k, "keel.") || slices.Contains(reservedArgs, k) {
			return d, cfg, fmt.Errorf("%w: kernel_args: %q is keel's to set (the boot entries set slot= and panic=; keel.* would change what the node does at boot)", ErrDocument, f)
		}
	}
	return d, cfg, nil
}
