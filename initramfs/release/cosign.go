package release

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Cosign runs the cosign binary (build/bin/cosign, `make cosign-bin`) that signs installer
// images: one signature format end to end, the one operators already use, so that an image
// signed by a release pipeline with cosign and one signed by `make push` are checked alike.
type Cosign struct {
	Bin string
	// Password of the private key (COSIGN_PASSWORD); empty for the development keys make key
	// writes.
	Password string
}

// Key files in a key directory: cosign's own (`cosign generate-key-pair`). The public half
// goes into each node's config (upgrade.trusted_keys).
const (
	CosignKeyFile = "cosign.key"
	CosignPubFile = "cosign.pub"
)

// EnsureKey makes a cosign key pair in dir unless one is there, and returns the public key (PEM).
func (c Cosign) EnsureKey(ctx context.Context, dir string) (string, error) {
	pub := filepath.Join(dir, CosignPubFile)
	if b, err := os.ReadFile(pub); err == nil {
		if _, err := os.Stat(filepath.Join(dir, CosignKeyFile)); err == nil {
			return string(b), nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("release: key directory: %w", err)
	}
	// cosign refuses to overwrite a half pair; a pair is made whole or not at all.
	os.Remove(filepath.Join(dir, CosignKeyFile))
	os.Remove(pub)
	if _, err := c.run(ctx, dir, nil, "generate-key-pair", "--output-key-prefix", "cosign"); err != nil {
		return "", err
	}
	b, err := os.ReadFile(pub)
	if err != nil {
		return "", fmt.Errorf("release: cosign made no public key: %w", err)
	}
	return string(b), nil
}

// SignOptions choose how an image is signed.
type SignOptions struct {
	Key string // the private key file
	// HTTP allows a plain-HTTP registry (tests, `make registry`).
	HTTP bool
	// CAFile is a PEM bundle the registry's certificate is checked against instead of the
	// system's (a private registry's CA).
	CAFile string
}

// Sign signs ref, which must name a digest (REPO@sha256:...), offline: no transparency log,
// no Fulcio, no network but the registry. The signature goes where cosign puts it (the
// repository's sha256-HEX.sig tag), added to those already there.
func (c Cosign) Sign(ctx context.Context, ref string, o SignOptions) error {
	if !strings.Contains(ref, "@sha256:") {
		return fmt.Errorf("release: sign %s: name the image by digest (REPO@sha256:...), not by tag", ref)
	}
	return c.registryCall(ctx, []string{"sign", "--key", o.Key, "--tlog-upload=false", "--yes"}, ref, o)
}

// Verify runs `cosign verify` with a public key file, offline: the check of keel's own format
// code against cosign's.
func (c Cosign) Verify(ctx context.Context, ref, pubFile string, o SignOptions) error {
	return c.registryCall(ctx, []string{"verify", "--key", pubFile, "--insecure-ignore-tlog=true", "--output", "json"}, ref, o)
}

// registryCall runs a cosign command on ref with the registry options of o.
func (c Cosign) registryCall(ctx context.Context, args []string, ref string, o SignOptions) error {
	if o.HTTP {
		args = append(args, "--allow-http-registry", "--allow-insecure-registry")
	}
	var env []string
	if o.CAFile != "" {
		env = append(env, "SSL_CERT_FILE="+o.CAFile) // Go's (so cosign's) extra roots
	}
	_, err := c.run(ctx, "", env, append(args, ref)...)
	return err
}

func (c Cosign) run(ctx context.Context, dir string, env []string, args ...string) ([]byte, error) {
	if c.Bin == "" {
		return nil, errors.New("release: no cosign binary (make cosign-bin builds build/bin/cosign)")
	}
	bin, err := filepath.Abs(c.Bin) // the command may run in another directory
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	// No TUF root, no sigstore servers: everything cosign would fetch from the internet is off
	// by flags, and its home is kept out of the user's.
	home, err := os.MkdirTemp("", "cosign-home")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(home)
	cmd.Env = append(os.Environ(), "COSIGN_PASSWORD="+c.Password, "HOME="+home, "TUF_ROOT="+filepath.Join(home, "tuf"))
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("release: cosign %s: %w: %s", args[0], err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}
