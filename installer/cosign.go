package installer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// cosign's format for a signature made with `cosign sign --key` (the "simple signing" payload,
// stored in the image's own repository under the tag sha256-HEX.sig, one layer per signature,
// the signature in a layer annotation). keel reads it with the standard library rather than
// linking cosign (a hundred megabytes of KMS and transparency-log clients into PID 1); the
// tests sign with the real cosign binary.
const (
	CosignPayloadMedia  = "application/vnd.dev.cosign.simplesigning.v1+json"
	CosignSigAnnotation = "dev.cosignproject.cosign/signature"
	CosignPayloadType   = "cosign container image signature"
	maxSignatures       = 16
)

// CosignPayload is what cosign signs: the image's manifest digest, and where it was signed.
type CosignPayload struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
	Optional map[string]any `json:"optional"`
}

// TrustedKey is a public key installer images may be signed with, and how far it is trusted.
type TrustedKey struct {
	Name    string // for messages; default the key's ID
	Key     crypto.PublicKey
	Expires time.Time // zero: never; a signature checked after it does not count
	Revoked bool      // a signature by it never counts
}

// ParsePublicKey reads one PEM public key as `cosign generate-key-pair` writes it (cosign.pub):
// ECDSA (P-256, P-384, P-521), Ed25519 or RSA (2048 bits or more), PKIX. Anything else in
// the text is an error: a second key pasted along would otherwise be dropped unseen.
func ParsePublicKey(text []byte) (crypto.PublicKey, error) {
	b, rest := pem.Decode(bytes.TrimSpace(text))
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM PUBLIC KEY block (cosign.pub)")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("more than one PEM block: give one key per entry")
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("PEM block %q: %w", b.Type, err)
	}
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		if k.Curve.Params().BitSize < 256 {
			return nil, fmt.Errorf("ECDSA key on %s: want P-256 or larger", k.Curve.Params().Name)
		}
		return k, nil
	case ed25519.PublicKey:
		return k, nil
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("RSA key of %d bits: want 2048 or more", k.N.BitLen())
		}
		return k, nil
	}
	return nil, fmt.Errorf("unsupported public key type %T", k)
}

// KeyID names a public key: the first 16 hex digits of the SHA-256 of its PKIX encoding.
func KeyID(k crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return "invalid"
	}
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:8])
}

// SignatureTag is where cosign stores the signatures of the image with digest d in repo.
func SignatureTag(repo name.Repository, d v1.Hash) name.Tag {
	return repo.Tag(d.Algorithm + "-" + d.Hex + ".sig")
}

// verifySig checks one signature as cosign makes it with --key: ECDSA and RSA (PKCS #1 v1.5)
// over the payload's SHA-256, whatever the curve (cosign signs and verifies key signatures with
// SHA-256), Ed25519 over the payload itself.
func verifySig(k crypto.PublicKey, payload, sig []byte) bool {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		h := sha256.Sum256(payload)
		return ecdsa.VerifyASN1(k, h[:], sig)
	case ed25519.PublicKey:
		return ed25519.Verify(k, payload, sig)
	case *rsa.PublicKey:
		s := sha256.Sum256(payload)
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, s[:], sig) == nil
	}
	return false
}

// SignedBy is the verdict of a signature check: the trusted key that signed, or that the
// image is unsigned and the node allows that.
type SignedBy struct {
	Key      string // the key's name; empty when unsigned
	KeyID    string // KeyID of that key
	Unsigned bool
}

// verifyCosign finds the cosign signatures of the image (by any of digests: the index a tag
// names and the platform image in it are both what a user may have signed) and accepts the
// image when one was made by a trusted key that is neither revoked nor expired, for this very
// digest. An image with no signature at all passes only when the node allows unsigned images;
// a signature that does not count is never "unsigned".
func verifyCosign(repo name.Repository, digests []v1.Hash, p Policy, ropts []remote.Option) (SignedBy, error) {
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	// A key revoked anywhere in the list is revoked, whatever other entries say of it.
	revoked := map[string]string{}
	for _, k := range p.TrustedKeys {
		if k.Revoked {
			revoked[KeyID(k.Key)] = keyName(k)
		}
	}
	var why []string
	found := 0
	for _, d := range digests {
		sigs, present, err := fetchSignatures(repo, d, ropts)
		if err != nil {
			return SignedBy{}, err
		}
		if present && len(sigs) == 0 {
			// A signature image holding nothing keel reads (keyless certificates, another
			// format, damage): signed, but not in a way that counts; never "unsigned".
			found++
			why = append(why, "a signature keel cannot check (no key signature in "+SignatureTag(repo, d).TagStr()+")")
		}
		for _, s := range sigs {
			found++
			note := "a signature by a key this node does not trust"
			for _, k := range p.TrustedKeys {
				if !verifySig(k.Key, s.payload, s.sig) {
					continue
				}
				kn := keyName(k)
				if rn, ok := revoked[KeyID(k.Key)]; ok {
					k.Revoked, kn = true, rn
				}
				var pl CosignPayload
				switch {
				case json.Unmarshal(s.payload, &pl) != nil || pl.Critical.Type != CosignPayloadType:
					note = fmt.Sprintf("key %s signed something that is not a cosign image signature", kn)
				case pl.Critical.Image.DockerManifestDigest != d.String():
					note = fmt.Sprintf("key %s signed another image (%s), not this one", kn, pl.Critical.Image.DockerManifestDigest)
				case k.Revoked:
					note = fmt.Sprintf("key %s is revoked", kn)
				case !k.Expires.IsZero() && now.After(k.Expires):
					note = fmt.Sprintf("key %s expired at %s", kn, k.Expires.UTC().Format(time.RFC3339))
				default:
					return SignedBy{Key: kn, KeyID: KeyID(k.Key)}, nil
				}
			}
			why = append(why, note)
		}
	}
	if found == 0 {
		if p.AllowUnsigned {
			return SignedBy{Unsigned: true}, nil
		}
		return SignedBy{}, fmt.Errorf("%w: no cosign signature in %s for %s, and this node's config does not allow unsigned images", ErrUnsigned, repo, digests[0])
	}
	return SignedBy{}, fmt.Errorf("%w: %d signature(s), none counts: %s", ErrSignature, found, strings.Join(dedupe(why), "; "))
}

func keyName(k TrustedKey) string {
	if k.Name != "" {
		return k.Name
	}
	return KeyID(k.Key)
}

type cosignSig struct{ payload, sig []byte }

// fetchSignatures reads the key signatures in the signature image for d; present says whether
// that image exists at all (a 404 is no signature).
func fetchSignatures(repo name.Repository, d v1.Hash, ropts []remote.Option) ([]cosignSig, bool, error) {
	tag := SignatureTag(repo, d)
	img, err := remote.Image(tag, ropts...)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && (te.StatusCode == 404 || hasCode(te, transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode)) {
			return nil, false, nil
		}
		return nil, false, classify(tag.String(), fmt.Errorf("signature: %w", err))
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, true, classify(tag.String(), fmt.Errorf("signature: %w", err))
	}
	if len(m.Layers) > maxSignatures {
		return nil, true, fmt.Errorf("%w: %s holds %d signatures (at most %d are read)", ErrSignature, tag, len(m.Layers), maxSignatures)
	}
	var out []cosignSig
	for _, l := range m.Layers {
		if string(l.MediaType) != CosignPayloadMedia {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(l.Annotations[CosignSigAnnotation])
		if err != nil || len(sig) == 0 {
			continue // not a key signature (keyless ones carry certificates we do not trust)
		}
		layer, err := img.LayerByDigest(l.Digest)
		if err != nil {
			return nil, true, classify(tag.String(), err)
		}
		payload, err := readLayer(layer, 64<<10)
		if err != nil {
			return nil, true, classify(tag.String(), fmt.Errorf("signature payload: %w", err))
		}
		out = append(out, cosignSig{payload: payload, sig: sig})
	}
	return out, true, nil
}

func hasCode(te *transport.Error, codes ...transport.ErrorCode) bool {
	for _, d := range te.Errors {
		for _, c := range codes {
			if d.Code == c {
				return true
			}
		}
	}
	return false
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}
