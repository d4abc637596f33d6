package installer_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

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
	pub      ed25519.PublicKey
	key      ed25519.PrivateKey
}

func newFixture(t *testing.T) fixture {
	dir := t.TempDir()
	content := bytes.Repeat([]byte("slot-bytes-"), 100000) // ~1 MB
	p := filepath.Join(dir, "slot.img")
	os.WriteFile(p, content, 0o644)
	pub, key, _ := release.GenerateKey()
	return fixture{slot: p, content: content, pub: pub, key: key,
		manifest: disk.Manifest{Version: "v2", Arch: "amd64", Files: []disk.File{disk.NewFile("vmlinuz", []byte("k"))}}}
}

func push(t *testing.T, addr, repoTag string, o release.BuildOptions) string {
	t.Helper()
	img, err := release.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := installer.ParseReference(addr+"/"+repoTag, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return ref.String()
}

func TestPull(t *testing.T) {
	f := newFixture(t)
	addr := serve(t, nil)
	policy := installer.Policy{Arch: "amd64", TrustedKeys: []ed25519.PublicKey{f.pub}, MaxSlotSize: 2 << 20}
	_, otherKey, _ := release.GenerateKey()

	good := push(t, addr, "keel:v2", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Key: f.key})
	unsigned := push(t, addr, "keel:unsigned", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest})
	wrongKey := push(t, addr, "keel:wrongkey", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Key: otherKey})
	arm := push(t, addr, "keel:arm", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Key: f.key, Arch: "arm64"})
	lying := push(t, addr, "keel:lying", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Key: f.key,
		Manifest: func(m *installer.Manifest) { m.SlotSHA256 = strings.Repeat("0", 64) }})
	short := push(t, addr, "keel:short", release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Key: f.key,
		Manifest: func(m *installer.Manifest) { m.SlotSize -= 10 }})

	// A port nothing listens on.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name   string
		ref    string
		policy installer.Policy
		want   error
	}{
		{"good", good, policy, nil},
		{"invalid reference", "127.0.0.1:1/UPPER CASE:x", policy, installer.ErrReference},
		{"not found", addr + "/keel:nope", policy, installer.ErrNotFound},
		{"refused", closed + "/keel:v2", policy, installer.ErrUnreachable},
		{"unsigned", unsigned, policy, installer.ErrUnsigned},
		{"unsigned allowed", unsigned, installer.Policy{Arch: "amd64", AllowUnsigned: true, MaxSlotSize: 2 << 20}, nil},
		{"untrusted key", wrongKey, policy, installer.ErrSignature},
		{"other architecture", arm, policy, installer.ErrArch},
		{"too large", good, installer.Policy{Arch: "amd64", TrustedKeys: policy.TrustedKeys, MaxSlotSize: 1000}, installer.ErrTooLarge},
		{"manifest digest lies", lying, policy, installer.ErrDigest},
		{"more bytes than declared", short, policy, installer.ErrDigest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := installer.Pull(context.Background(), tc.ref, tc.policy, installer.PullOptions{})
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if p.Manifest.Version != "v2" || !strings.HasPrefix(p.Digest, "sha256:") {
					t.Errorf("manifest %+v, digest %s", p.Manifest, p.Digest)
				}
				// The write pass streams the same bytes again, by digest.
				repo, _, _ := strings.Cut(tc.ref, ":v2")
				repo, _, _ = strings.Cut(repo, ":unsigned")
				s, err := installer.Open(context.Background(), repo+"@"+p.Digest, tc.policy, installer.PullOptions{})
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
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
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
			img, _ := release.Build(release.BuildOptions{SlotPath: f.slot, Slot: f.manifest, Key: f.key})
			layers, _ := img.Layers()
			d, _ := layers[len(layers)-1].Digest()
			ref, _ := installer.ParseReference(addr+"/keel:v2", false)
			if err := remote.Write(ref, img); err != nil {
				t.Fatal(err)
			}
			slotDigest = d.String()
			policy := installer.Policy{Arch: "amd64", TrustedKeys: []ed25519.PublicKey{f.pub}}
			_, err := installer.Pull(context.Background(), ref.String(), policy, installer.PullOptions{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			// The write pass's stream fails the same way (or, where gzip cannot tell, yields
			// bytes whose SHA-256 the writer refuses).
			s, err := installer.Open(context.Background(), ref.String(), policy, installer.PullOptions{})
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
