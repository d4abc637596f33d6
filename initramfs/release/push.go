package release

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"keel/installer"
)

// PushOptions says how Push reaches the registry and whether it signs.
type PushOptions struct {
	// Cosign and Key sign the pushed image (cosign's format, offline); a nil Cosign pushes
	// it unsigned.
	Cosign *Cosign
	Key    string
	// AllowHTTP lets the push (and the signature) go over plain HTTP to ref's registry;
	// otherwise it is HTTPS, checked against CAFile (a PEM bundle) or the system's roots.
	AllowHTTP bool
	CAFile    string
}

// Push writes img to ref as a node's pulls go (HTTPS checked against the CA, plain HTTP only
// when allowed) and signs it by digest with cosign: the tag could move between the push and
// the signature. It returns the image by digest (REPO@sha256:...).
func Push(ctx context.Context, img v1.Image, ref string, o PushOptions) (name.Digest, error) {
	var insecure []string
	if o.AllowHTTP {
		if r, err := name.ParseReference(ref); err == nil {
			insecure = []string{r.Context().RegistryStr()}
		}
	}
	r, err := installer.ParseReference(ref, insecure)
	if err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}
	var roots *x509.CertPool
	if o.CAFile != "" {
		b, err := os.ReadFile(o.CAFile)
		if err != nil {
			return name.Digest{}, fmt.Errorf("registry CA: %w", err)
		}
		if roots = x509.NewCertPool(); !roots.AppendCertsFromPEM(b) {
			return name.Digest{}, fmt.Errorf("registry CA %s: no PEM certificate in it", o.CAFile)
		}
	}
	if err := remote.Write(r, img, remote.WithTransport(installer.Transport(insecure, roots)), remote.WithContext(ctx)); err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}
	byDigest := r.Context().Digest(d.String())
	if o.Cosign == nil {
		return byDigest, nil
	}
	if err := o.Cosign.Sign(ctx, byDigest.String(), SignOptions{Key: o.Key, HTTP: o.AllowHTTP, CAFile: o.CAFile}); err != nil {
		return byDigest, fmt.Errorf("pushed %s, but signing it failed: %w", byDigest, err)
	}
	return byDigest, nil
}
