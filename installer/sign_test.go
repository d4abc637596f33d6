package installer_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"keel/initramfs/release"
	"keel/installer"
)

// The unit tests sign the way `cosign sign --key` does, in-process, to reach every branch of
// the check (revoked, expired, another image's signature) in milliseconds; the integration
// tests (internal/testenv/registrytest) sign with the real cosign binary and check that cosign
// itself accepts what this writes.

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sign adds a signature by key, of a payload naming payloadDigest, to the image digest's
// signature tag in the registry at addr (repository keel).
func sign(t *testing.T, addr string, digest, payloadDigest v1.Hash, key crypto.Signer) {
	t.Helper()
	repo, err := name.NewRepository(addr+"/keel", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	signWith(t, repo, digest, payloadDigest, key)
}

func mustRepo(t *testing.T, addr string) name.Repository {
	repo, err := name.NewRepository(addr+"/keel", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

// pushIndex pushes an image index holding the installer image for linux/amd64 and returns the
// reference and the index's digest.
func pushIndex(t *testing.T, addr, repoTag string, o release.BuildOptions) (string, v1.Hash) {
	t.Helper()
	img, err := release.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), mutate.IndexAddendum{
		Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
	})
	ref, err := name.ParseReference(addr+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	return ref.String(), d
}

func signWith(t *testing.T, repo name.Repository, digest, payloadDigest v1.Hash, key crypto.Signer, opts ...remote.Option) {
	t.Helper()
	var pl installer.CosignPayload
	pl.Critical.Identity.DockerReference = repo.String()
	pl.Critical.Image.DockerManifestDigest = payloadDigest.String()
	pl.Critical.Type = installer.CosignPayloadType
	payload, _ := json.Marshal(pl)
	var sig []byte
	var err error
	if ek, ok := key.(ed25519.PrivateKey); ok {
		sig = ed25519.Sign(ek, payload)
	} else {
		h := sha256.Sum256(payload)
		sig, err = key.Sign(rand.Reader, h[:], crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
	}
	tag := installer.SignatureTag(repo, digest)
	// Signatures accumulate, as cosign appends a layer to an existing signature image.
	base, err := remote.Image(tag, opts...)
	if err != nil {
		base = mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:       static.NewLayer(payload, installer.CosignPayloadMedia),
		Annotations: map[string]string{installer.CosignSigAnnotation: base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, opts...); err != nil {
		t.Fatal(err)
	}
}
