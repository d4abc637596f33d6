package registrytest_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"keel/disk"
	"keel/initramfs/release"
	"keel/installer"
	"keel/internal/testenv/registrytest"
)

// TestCosignOverTLS is image trust with the real parts: installer images in Debian's
// docker-registry over TLS (a CA of the test's, given to the node as upgrade.registry_ca would
// be), signed by the real cosign binary offline, checked by the node's verifier.
func TestCosignOverTLS(t *testing.T) {
	ctx := context.Background()
	d := registrytest.StartDistribution(t)
	c := registrytest.Cosign(t)
	trusted, other := registrytest.NewKey(t, c), registrytest.NewKey(t, c)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, d.CAPEM, 0o644)
	tls := remote.WithTransport(d.Client.Transport)

	slot := filepath.Join(t.TempDir(), "slot.img")
	os.WriteFile(slot, bytes.Repeat([]byte("slot"), 1<<16), 0o644)
	push := func(tag, kernel string) name.Digest {
		img, err := release.Build(release.BuildOptions{SlotPath: slot, Slot: disk.Manifest{Version: "v2.0.0", Arch: "amd64", KernelRelease: kernel,
			Files: []disk.File{disk.NewFile("vmlinuz", []byte("k"))}}})
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.NewTag(d.Addr + "/keel:" + tag)
		if err := remote.Write(ref, img, tls); err != nil {
			t.Fatal(err)
		}
		h, _ := img.Digest()
		return ref.Context().Digest(h.String())
	}
	sign := func(dg name.Digest, k registrytest.Key) {
		if err := c.Sign(ctx, dg.String(), release.SignOptions{Key: k.Private, CAFile: caFile}); err != nil {
			t.Fatal(err)
		}
	}
	good, byOther, substituted := push("v2.0.0", "a"), push("other", "b"), push("v9.0.0", "c")
	sign(good, trusted)
	sign(byOther, other)
	// cosign itself accepts what it made, with the key the node trusts (sanity: the two agree).
	if err := c.Verify(ctx, good.String(), trusted.Public, release.SignOptions{CAFile: caFile}); err != nil {
		t.Fatalf("cosign verify: %v", err)
	}
	// The good image's signature stored as the substitute's: no key needed to do that.
	goodSig := installer.SignatureTag(good.Context(), mustHash(t, good))
	sigImg, err := remote.Image(goodSig, tls)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(installer.SignatureTag(substituted.Context(), mustHash(t, substituted)), sigImg, tls); err != nil {
		t.Fatal(err)
	}

	pub, err := installer.ParsePublicKey([]byte(trusted.PublicPEM))
	if err != nil {
		t.Fatal(err)
	}
	policy := installer.Policy{Arch: "amd64", TrustedKeys: []installer.TrustedKey{{Name: "release", Key: pub}}}
	opts := installer.PullOptions{RootCAs: d.Pool}
	tag := func(dg name.Digest, t string) string { return dg.Context().Tag(t).String() }
	check := func(what, ref string, p installer.Policy, o installer.PullOptions, want error, says string) {
		t.Helper()
		got, err := installer.Pull(ctx, ref, p, o)
		if want == nil {
			if err != nil {
				t.Errorf("%s: %v", what, err)
			} else if got.Signed.Key != "release" && !p.AllowUnsigned {
				t.Errorf("%s: signed by %+v", what, got.Signed)
			}
			return
		}
		if !errors.Is(err, want) || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: err = %v, want %v saying %q", what, err, want, says)
		}
	}
	check("cosign-signed, over TLS", tag(good, "v2.0.0"), policy, opts, nil, "")
	check("cosign-signed, by digest", good.String(), policy, opts, nil, "")
	check("signed by an untrusted key", tag(byOther, "other"), policy, opts, installer.ErrSignature, "does not trust")
	allow := policy
	allow.AllowUnsigned = true
	check("signed by an untrusted key, unsigned allowed", tag(byOther, "other"), allow, opts, installer.ErrSignature, "does not trust")
	check("signature of another digest", tag(substituted, "v9.0.0"), allow, opts, installer.ErrSignature, "signed another image ("+good.DigestStr())
	revoked := policy
	revoked.TrustedKeys = []installer.TrustedKey{{Name: "release", Key: pub, Revoked: true}}
	check("signed only by a revoked key", tag(good, "v2.0.0"), revoked, opts, installer.ErrSignature, "key release is revoked")
	check("registry CA not given", tag(good, "v2.0.0"), policy, installer.PullOptions{RootCAs: nil}, installer.ErrCertificate, "upgrade.registry_ca")

	// The signature removed (the tag deleted, as a registry admin or an attacker could).
	// distribution deletes manifests by digest only; the tag goes with it.
	sd, err := sigImg.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(goodSig.Context().Digest(sd.String()), tls); err != nil {
		t.Fatal(err)
	}
	check("signature removed", tag(good, "v2.0.0"), policy, opts, installer.ErrUnsigned, "no cosign signature")
	check("signature removed, unsigned allowed", tag(good, "v2.0.0"), allow, opts, nil, "")
}

// TestPushSigns: what `make push` does (mkimage push: release.Push) with the real cosign and
// docker-registry over TLS: the image pushed by tag, signed by digest, and a node that trusts
// the key pulls it as signed by that key (its ID is what a staged upgrade is checked against
// later); pushed unsigned, the same node refuses it.
func TestPushSigns(t *testing.T) {
	ctx := context.Background()
	d := registrytest.StartDistribution(t)
	c := registrytest.Cosign(t)
	k := registrytest.NewKey(t, c)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, d.CAPEM, 0o644)
	slot := filepath.Join(t.TempDir(), "slot.img")
	os.WriteFile(slot, bytes.Repeat([]byte("slot"), 1<<16), 0o644)
	build := func(kernel string) v1.Image {
		img, err := release.Build(release.BuildOptions{SlotPath: slot, Slot: disk.Manifest{Version: "v2.0.0", Arch: "amd64", KernelRelease: kernel,
			Files: []disk.File{disk.NewFile("vmlinuz", []byte("k"))}}})
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	pub, err := installer.ParsePublicKey([]byte(k.PublicPEM))
	if err != nil {
		t.Fatal(err)
	}
	policy := installer.Policy{Arch: "amd64", TrustedKeys: []installer.TrustedKey{{Name: "release", Key: pub}}}
	opts := installer.PullOptions{RootCAs: d.Pool}

	signed, err := release.Push(ctx, build("a"), d.Addr+"/keel:v2.0.0", release.PushOptions{Cosign: &c, Key: k.Private, CAFile: caFile})
	if err != nil {
		t.Fatalf("push, signed: %v", err)
	}
	got, err := installer.Pull(ctx, d.Addr+"/keel:v2.0.0", policy, opts)
	if err != nil {
		t.Fatalf("pull of the pushed image: %v", err)
	}
	if got.Digest != signed.DigestStr() || got.Signed.Key != "release" || got.Signed.KeyID != installer.KeyID(pub) {
		t.Fatalf("pulled %s signed by %+v; pushed %s, key %s", got.Digest, got.Signed, signed, installer.KeyID(pub))
	}
	if err := c.Verify(ctx, signed.String(), k.Public, release.SignOptions{CAFile: caFile}); err != nil {
		t.Fatalf("cosign verify of the pushed image: %v", err)
	}

	if _, err := release.Push(ctx, build("b"), d.Addr+"/keel:v2.0.1", release.PushOptions{CAFile: caFile}); err != nil {
		t.Fatalf("push, unsigned: %v", err)
	}
	if _, err := installer.Pull(ctx, d.Addr+"/keel:v2.0.1", policy, opts); !errors.Is(err, installer.ErrUnsigned) {
		t.Fatalf("pull of the image pushed unsigned: %v, want ErrUnsigned", err)
	}
	if _, err := release.Push(ctx, build("c"), d.Addr+"/keel:v2.0.2", release.PushOptions{Cosign: &c, Key: k.Private}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("push without the registry's CA: %v, want a certificate error", err)
	}
}

func mustHash(t *testing.T, d name.Digest) v1.Hash {
	t.Helper()
	h, err := v1.NewHash(d.DigestStr())
	if err != nil {
		t.Fatal(err)
	}
	return h
}
