package installer_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"

	"keel/disk"
	"keel/initramfs/release"
	"keel/installer"
)

// serve runs go-containerregistry's registry (a real OCI distribution implementation) on
// 127.0.0.1, optionally behind a wrapper that damages blob downloads: a real registry never
// truncates or corrupts on demand, so those two failures need the wrapper (said where used).
func serve(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type fixture struct {
	slot     string
	content  []byte
	manifest disk.Manifest
	key      *ecdsa.PrivateKey
}

func newFixture(t *testing.T) fixture {
	dir := t.TempDir()
	content := bytes.Repeat([]byte("slot-bytes-"), 100000) // ~1 MB
	p := filepath.Join(dir, "slot.img")
	os.WriteFile(p, content, 0o644)
	return fixture{slot: p, content: content, key: newKey(t),
		manifest: disk.Manifest{Version: "v2", Arch: "amd64", Files: []disk.File{disk.NewFile("vmlinuz", []byte("k"))}}}
}

// local lets the tests' plain-HTTP registries on 127.0.0.1 be reached.
var local = installer.PullOptions{Insecure: []string{"127.0.0.1"}}

// push writes an unsigned installer image and returns its reference and digest.
func push(t *testing.T, addr, repoTag string, o release.BuildOptions) (string, v1.Hash) {
	t.Helper()
	img, err := release.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := installer.ParseReference(addr+"/"+repoTag, local.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return ref.String(), d
}

func TestPull(t *testing.T) {
	f := newFixture(t)
	addr := serve(t, nil)
	trusted := installer.TrustedKey{Name: "release-2026", Key: f.key.Public()}
	policy := installer.Policy{Arch: "amd64", TrustedKeys: []installer.TrustedKey{trusted}, MaxSlotSize: 2 << 20}
	with := func(mod func(*installer.Policy)) installer.Policy {
		p := policy
		p.TrustedKeys = append([]installer.TrustedKey(nil), policy.TrustedKeys...)
		mod(&p)
		return p
	}
	otherKey := newKey(t)
	edPub, edKey, _ := ed25519.GenerateKey(nil)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)

	signed := func(repoTag string, o release.BuildOptions, keys ...crypto.Signer) string {
		ref, d := push(t, addr, repoTag, o)
		for _, k := range keys {
			sign(t, addr, d, d, k)
		}
		return ref
	}
	build := release.BuildOptions{SlotPath: f.slot, Slot: f.manifest}
	good := signed("keel:v2", build, f.key)
	unsigned := signed("keel:unsigned", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Manifest: func(m *installer.Manifest) { m.Slot.KernelRelease = "u" }})
	wrongKey := signed("keel:wrongkey", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Arch: "amd64", Manifest: func(m *installer.Manifest) { m.Slot.KernelRelease = "w" }}, otherKey)
	twoKeys := signed("keel:twokeys", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Manifest: func(m *installer.Manifest) { m.Slot.KernelRelease = "2" }}, otherKey, f.key)
	edSigned := signed("keel:ed", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Manifest: func(m *installer.Manifest) { m.Slot.KernelRelease = "e" }}, edKey)
	p384Signed := signed("keel:p384", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Manifest: func(m *installer.Manifest) { m.Slot.KernelRelease = "p384" }}, p384)
	rsaSigned := signed("keel:rsa", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Manifest: func(m *installer.Manifest) { m.Slot.KernelRelease = "rsa" }}, rsaKey)
	// A signature image that holds no key signature (another media type): present, unreadable.
	oddRef, oddDigest := push(t, addr, "keel:odd", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Manifest: func(m *installer.Manifest) { m.Slot.KernelRelease = "odd" }})
	oddSig, _ := mutate.Append(empty.Image, mutate.Addendum{Layer: static.NewLayer([]byte("{}"), "application/vnd.example.other")})
	if err := remote.Write(installer.SignatureTag(mustRepo(t, addr), oddDigest), oddSig); err != nil {
		t.Fatal(err)
	}
	// A multi-arch index signed as `cosign sign` of its tag signs it: the index's digest.
	indexRef, indexDigest := pushIndex(t, addr, "keel:index", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Manifest: func(m *installer.Manifest) { m.Slot.KernelRelease = "idx" }})
	sign(t, addr, indexDigest, indexDigest, f.key)
	arm := signed("keel:arm", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Arch: "arm64"}, f.key)
	lying := signed("keel:lying", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest,
		Manifest: func(m *installer.Manifest) { m.SlotSHA256 = strings.Repeat("0", 64) }}, f.key)
	short := signed("keel:short", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest,
		Manifest: func(m *installer.Manifest) { m.SlotSize -= 10 }}, f.key)
	escape := signed("keel:escape", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest,
		Manifest: func(m *installer.Manifest) {
			m.Slot.Files = []disk.File{disk.NewFile("../../etc/passwd", []byte("k"))}
		}}, f.key)
	// A trusted key's signature of the good image, stored as the signature of another one: the
	// substitution a registry (or a man in the middle) can make without any key.
	_, goodDigest := push(t, addr, "keel:v2", build)
	otherRef, otherDigest := push(t, addr, "keel:v9", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Manifest: func(m *installer.Manifest) { m.Slot.KernelRelease = "9" }})
	sign(t, addr, otherDigest, goodDigest, f.key)

	// A port nothing listens on.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name   string
		ref    string
		policy installer.Policy
		opts   installer.PullOptions
		want   error
		says   string // in the error
	}{
		{"good", good, policy, local, nil, ""},
		{"open by tag", "open:" + good, policy, local, installer.ErrReference, "named by digest"},
		{"invalid reference", "127.0.0.1:1/UPPER CASE:x", policy, local, installer.ErrReference, ""},
		{"not found", addr + "/keel:nope", policy, local, installer.ErrNotFound, ""},
		{"refused", closed + "/keel:v2", policy, local, installer.ErrUnreachable, ""},
		{"refused, not listed", closed + "/keel:v2", policy, installer.PullOptions{}, installer.ErrUnreachable, "connection refused"},
		{"plain http not listed", good, policy, installer.PullOptions{}, installer.ErrInsecure, "insecure_registries"},
		{"plain http, other host listed", good, policy, installer.PullOptions{Insecure: []string{"10.0.2.2"}}, installer.ErrInsecure, ""},
		{"plain http, host:port listed", good, policy, installer.PullOptions{Insecure: []string{addr}}, nil, ""},
		{"unsigned", unsigned, policy, local, installer.ErrUnsigned, "no cosign signature"},
		{"unsigned allowed", unsigned, with(func(p *installer.Policy) { p.AllowUnsigned, p.TrustedKeys = true, nil }), local, nil, ""},
		{"untrusted key", wrongKey, policy, local, installer.ErrSignature, "does not trust"},
		{"untrusted key, unsigned allowed", wrongKey, with(func(p *installer.Policy) { p.AllowUnsigned = true }), local, installer.ErrSignature, "does not trust"},
		{"signature of another image", otherRef, with(func(p *installer.Policy) { p.AllowUnsigned = true }), local, installer.ErrSignature, "signed another image (" + goodDigest.String()},
		{"revoked key", good, with(func(p *installer.Policy) { p.TrustedKeys[0].Revoked = true }), local, installer.ErrSignature, "key release-2026 is revoked"},
		{"revoked key, unsigned allowed", good, with(func(p *installer.Policy) { p.TrustedKeys[0].Revoked, p.AllowUnsigned = true, true }), local, installer.ErrSignature, "revoked"},
		{"expired key", good, with(func(p *installer.Policy) { p.TrustedKeys[0].Expires = time.Now().Add(-time.Hour) }), local, installer.ErrSignature, "expired at"},
		{"key not yet expired", good, with(func(p *installer.Policy) { p.TrustedKeys[0].Expires = time.Now().Add(time.Hour) }), local, nil, ""},
		{"one of two signatures trusted", twoKeys, policy, local, nil, ""},
		{"rotated: old key revoked, new key trusted", twoKeys, installer.Policy{Arch: "amd64", MaxSlotSize: 2 << 20, TrustedKeys: []installer.TrustedKey{{Name: "old", Key: otherKey.Public(), Revoked: true}, trusted}}, local, nil, ""},
		{"signed only by the revoked old key", wrongKey, installer.Policy{Arch: "amd64", MaxSlotSize: 2 << 20, TrustedKeys: []installer.TrustedKey{{Name: "old", Key: otherKey.Public(), Revoked: true}, trusted}}, local, installer.ErrSignature, "key old is revoked"},
		{"ed25519 key", edSigned, with(func(p *installer.Policy) { p.TrustedKeys = []installer.TrustedKey{{Key: edPub}} }), local, nil, ""},
		{"ECDSA P-384 key", p384Signed, with(func(p *installer.Policy) { p.TrustedKeys = []installer.TrustedKey{{Key: p384.Public()}} }), local, nil, ""},
		{"RSA key", rsaSigned, with(func(p *installer.Policy) { p.TrustedKeys = []installer.TrustedKey{{Key: rsaKey.Public()}} }), local, nil, ""},
		{"index signed", indexRef, policy, local, nil, ""},
		{"revoked in a later entry", good, with(func(p *installer.Policy) {
			p.TrustedKeys = append(p.TrustedKeys, installer.TrustedKey{Name: "dup", Key: f.key.Public(), Revoked: true})
		}), local, installer.ErrSignature, "key dup is revoked"},
		{"unreadable signature, unsigned allowed", oddRef, with(func(p *installer.Policy) { p.AllowUnsigned = true }), local, installer.ErrSignature, "cannot check"},
		{"other architecture", arm, policy, local, installer.ErrArch, ""},
		{"too large", good, with(func(p *installer.Policy) { p.MaxSlotSize = 1000 }), local, installer.ErrTooLarge, ""},
		{"manifest digest lies", lying, policy, local, installer.ErrDigest, ""},
		{"more bytes than declared", short, policy, local, installer.ErrDigest, ""},
		{"file name leaves the slot", escape, policy, local, installer.ErrNotInstaller, "../../etc/passwd"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if ref, ok := strings.CutPrefix(tc.ref, "open:"); ok {
				// The write pass skips the signature only for a reference pinned by digest.
				_, err := installer.Open(context.Background(), ref, tc.policy, tc.opts)
				if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.says) {
					t.Fatalf("err = %v, want %v saying %q", err, tc.want, tc.says)
				}
				return
			}
			p, err := installer.Pull(context.Background(), tc.ref, tc.policy, tc.opts)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if p.Manifest.Version != "v2" || !strings.HasPrefix(p.Digest, "sha256:") {
					t.Errorf("manifest %+v, digest %s", p.Manifest, p.Digest)
				}
				if (p.Signed.Key == "") != tc.policy.AllowUnsigned {
					t.Errorf("signed by %+v", p.Signed)
				}
				// The key's ID is the one a staged upgrade is checked against again.
				if p.Signed.Key != "" && !slices.ContainsFunc(tc.policy.TrustedKeys, func(k installer.TrustedKey) bool {
					return installer.KeyID(k.Key) == p.Signed.KeyID && !k.Revoked
				}) {
					t.Errorf("signed by %+v: not the ID of a trusted key", p.Signed)
				}
				// The write pass streams the same bytes again, by digest.
				repo := tc.ref[:strings.LastIndex(tc.ref, ":")]
				s, err := installer.Open(context.Background(), repo+"@"+p.Digest, tc.policy, tc.opts)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(s)
				s.Close()
				if err != nil || !bytes.Equal(got, f.content) || s.Digest != p.Digest {
					t.Errorf("opened %d bytes (%v), digest %s", len(got), err, s.Digest)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.says) {
				t.Fatalf("err = %v, want %v saying %q", err, tc.want, tc.says)
			}
		})
	}
}

// TestPullTLS: a registry over HTTPS is checked against the CAs given (the node's bundle plus
// upgrade.registry_ca); one whose certificate nothing vouches for is refused.
func TestPullTLS(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewTLSServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	img, _ := release.Build(release.BuildOptions{SlotPath: f.slot, Slot: f.manifest})
	ref, _ := installer.ParseReference(addr+"/keel:v2", nil)
	tr := remote.WithTransport(srv.Client().Transport)
	if err := remote.Write(ref, img, tr); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	signWith(t, ref.Context(), d, d, f.key, tr)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	policy := installer.Policy{Arch: "amd64", TrustedKeys: []installer.TrustedKey{{Key: f.key.Public()}}}
	if _, err := installer.Pull(context.Background(), ref.String(), policy, installer.PullOptions{RootCAs: pool}); err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	_, err := installer.Pull(context.Background(), ref.String(), policy, installer.PullOptions{RootCAs: x509.NewCertPool()})
	if !errors.Is(err, installer.ErrCertificate) || !strings.Contains(err.Error(), "upgrade.registry_ca") {
		t.Fatalf("without the CA: %v, want ErrCertificate pointing at registry_ca", err)
	}
}

func TestInsecure(t *testing.T) {
	for _, tc := range []struct {
		host string
		list []string
		want bool
	}{
		{"10.0.2.2:5000", []string{"10.0.2.2"}, true},
		{"10.0.2.2:5000", []string{"10.0.2.2:5000"}, true},
		{"10.0.2.2:5001", []string{"10.0.2.2:5000"}, false},
		{"Registry.Local", []string{"registry.local"}, true},
		{"registry.local.evil", []string{"registry.local"}, false},
		{"127.0.0.1:80", nil, false},
	} {
		if got := installer.Insecure(tc.host, tc.list); got != tc.want {
			t.Errorf("Insecure(%s, %v) = %v", tc.host, tc.list, got)
		}
	}
}

// TestPullDamagedDownloads uses a wrapper around the real registry that damages the slot
// blob's bytes: the two failures a real registry will not produce on demand.
func TestPullDamagedDownloads(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
		want   error
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }, installer.ErrTruncated},
		{"corrupted", func(b []byte) []byte { b = bytes.Clone(b); b[len(b)/2] ^= 0xff; return b }, installer.ErrDigest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var slotDigest string
			addr := serve(t, func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.Method != http.MethodGet || slotDigest == "" || !strings.HasSuffix(r.URL.Path, slotDigest) {
						h.ServeHTTP(w, r)
						return
					}
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, r)
					body := tc.damage(rec.Body.Bytes())
					for k, v := range rec.Header() {
						w.Header()[k] = v
					}
					w.WriteHeader(rec.Code)
					w.Write(body) // Content-Length stays the real size: the client sees a short or wrong body
				})
			})
			img, _ := release.Build(release.BuildOptions{SlotPath: f.slot, Slot: f.manifest})
			layers, _ := img.Layers()
			d, _ := layers[len(layers)-1].Digest()
			ref, digest := push(t, addr, "keel:v2", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest})
			sign(t, addr, digest, digest, f.key)
			slotDigest = d.String()
			policy := installer.Policy{Arch: "amd64", TrustedKeys: []installer.TrustedKey{{Key: f.key.Public()}}}
			_, err := installer.Pull(context.Background(), ref, policy, local)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			// The write pass's stream fails the same way (or, where gzip cannot tell, yields
			// bytes whose SHA-256 the writer refuses).
			s, err := installer.Open(context.Background(), strings.TrimSuffix(ref, ":v2")+"@"+digest.String(), policy, local)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(s)
			s.Close()
			if err == nil && bytes.Equal(got, f.content) {
				t.Errorf("damaged download streamed the whole slot without an error")
			}
			if err != nil && !errors.Is(err, tc.want) {
				t.Errorf("stream error %v, want %v", err, tc.want)
			}
		})
	}
}

// serveCountingSlot serves a registry that counts the GETs of f's slot layer.
func serveCountingSlot(t *testing.T, f fixture) (string, *atomic.Int32) {
	img, _ := release.Build(release.BuildOptions{SlotPath: f.slot, Slot: f.manifest})
	layers, _ := img.Layers()
	d, _ := layers[len(layers)-1].Digest()
	var slotGets atomic.Int32
	addr := serve(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, d.String()) {
				slotGets.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	return addr, &slotGets
}

// TestPullVersionBeforeSlot: the version policy is asked once the signed manifest is read,
// and a refusal ends the pull before the slot's layer is requested.
func TestPullVersionBeforeSlot(t *testing.T) {
	f := newFixture(t)
	addr, slotGets := serveCountingSlot(t, f)
	ref, digest := push(t, addr, "keel:v2", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest})
	sign(t, addr, digest, digest, f.key)
	policy := installer.Policy{Arch: "amd64", TrustedKeys: []installer.TrustedKey{{Key: f.key.Public()}}}
	o := local
	var asked string
	refusal := errors.New("version check: v2 is older than the running v3")
	o.Version = func(v string) error { asked = v; return refusal }
	if _, err := installer.Pull(context.Background(), ref, policy, o); !errors.Is(err, refusal) {
		t.Fatalf("err = %v, want the policy's refusal", err)
	}
	if asked != "v2" || slotGets.Load() != 0 {
		t.Fatalf("policy asked about %q; slot layer requested %d times, want 0", asked, slotGets.Load())
	}
	o.Version = func(v string) error { return nil }
	if _, err := installer.Pull(context.Background(), ref, policy, o); err != nil || slotGets.Load() != 1 {
		t.Fatalf("accepted: %v, slot layer requested %d times, want 1", err, slotGets.Load())
	}
}

// TestInspect: the controller's check of an image reads its signature and manifest, never the
// slot, and refuses what a node would refuse.
func TestInspect(t *testing.T) {
	f := newFixture(t)
	addr, slotGets := serveCountingSlot(t, f)
	ref, digest := push(t, addr, "keel:v2", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest})
	unsigned, _ := push(t, addr, "other:v2", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest})
	sign(t, addr, digest, digest, f.key)
	policy := installer.Policy{Arch: "amd64", TrustedKeys: []installer.TrustedKey{{Name: "release", Key: f.key.Public()}}}
	got, err := installer.Inspect(context.Background(), ref, policy, local)
	if err != nil {
		t.Fatal(err)
	}
	if got.Manifest.Version != "v2" || got.Named != digest.String() || got.Digest != digest.String() || got.Signed.Key != "release" {
		t.Errorf("inspected %+v, want v2 named %s signed by release", got, digest)
	}
	if _, err := installer.Inspect(context.Background(), unsigned, policy, local); !errors.Is(err, installer.ErrUnsigned) {
		t.Errorf("unsigned: %v, want %v", err, installer.ErrUnsigned)
	}
	if n := slotGets.Load(); n != 0 {
		t.Errorf("the slot layer was requested %d times, want 0", n)
	}
}
