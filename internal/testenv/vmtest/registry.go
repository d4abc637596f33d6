package vmtest

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"keel/initramfs/nodeimage"
	"keel/initramfs/release"
	"keel/installer"
	"keel/internal/testenv"
	"keel/internal/testenv/registrytest"
)

// Registry is a real OCI registry (go-containerregistry's) on 127.0.0.1 for the test's
// lifetime. Guests reach it as 10.0.2.2:Port through QEMU's user networking.
type Registry struct {
	Addr string // 127.0.0.1:PORT
	Port int

	mu   sync.Mutex
	wrap func(http.Handler) http.Handler

	// A TLS registry (NewTLSRegistry): its CA, for the node's upgrade.registry_ca.
	CAPEM  []byte
	caFile string
	remote []remote.Option
}

// NewTLSRegistry starts Debian's docker-registry (CNCF distribution) over HTTPS with a CA of
// the test's own (registrytest.StartDistribution): the registry a node pulls from in
// production, reached the way production reaches it. Wrap does not apply to it.
func NewTLSRegistry(t testing.TB) *Registry {
	t.Helper()
	d := registrytest.StartDistribution(t)
	caFile := filepath.Join(t.TempDir(), "registry-ca.pem")
	if err := os.WriteFile(caFile, d.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return &Registry{Addr: d.Addr, Port: d.Port, CAPEM: d.CAPEM, caFile: caFile, remote: []remote.Option{remote.WithTransport(d.Client.Transport)}}
}

// NewRegistry starts a registry.
func NewRegistry(t testing.TB) *Registry {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Registry{Addr: ln.Addr().String(), Port: ln.Addr().(*net.TCPAddr).Port}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		wrap := r.wrap
		r.mu.Unlock()
		if wrap != nil {
			wrap(inner).ServeHTTP(w, req)
			return
		}
		inner.ServeHTTP(w, req)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return r
}

// Wrap puts a handler in front of the registry, to damage or slow what it serves: the
// failures a real registry does not produce on demand. nil removes it.
func (r *Registry) Wrap(w func(http.Handler) http.Handler) {
	if r.CAPEM != nil {
		panic("vmtest: Wrap on a TLS registry")
	}
	r.mu.Lock()
	r.wrap = w
	r.mu.Unlock()
}

// GuestRef is repoTag as a guest names it.
func (r *Registry) GuestRef(repoTag string) string {
	return "10.0.2.2:" + strconv.Itoa(r.Port) + "/" + repoTag
}

// InstallerOptions describe an installer image to push.
type InstallerOptions struct {
	Version  string
	Fault    string // a test fault baked into the new slot's init
	Unsigned bool
	Key      string // a cosign private key file; default: the harness key every test image trusts
	// SignatureOf stores the signatures of another image of this registry (a repo:tag) as
	// this one's, instead of signing it: the substitution anyone with write access can make.
	SignatureOf string
	Arch        string
	Manifest    func(*installer.Manifest)
	// Etcd and Kube choose the slot's system image, as in ImageOptions.
	Etcd, Kube bool
}

// PushInstaller builds an installer image and pushes it as repoTag; it returns the guest's
// reference.
func (r *Registry) PushInstaller(t testing.TB, repoTag string, o InstallerOptions) string {
	t.Helper()
	root, k := kernel(t)
	outDir := filepath.Join(root, "build", "vmtest", "images")
	if o.Fault != "" {
		outDir = filepath.Join(outDir, "fault-"+o.Fault)
	}
	sys, sub, err := systemImage(o.Etcd, o.Kube)
	if err != nil {
		t.Fatal(err)
	}
	outDir = filepath.Join(outDir, sub)
	slot, err := buildSlotOnce(context.Background(), nodeimage.SlotOptions{RepoRoot: root, Version: o.Version, Kernel: k, OutDir: outDir, Fault: o.Fault, System: sys})
	if err != nil {
		t.Fatal(err)
	}
	// Each push its own digest: a signature is of a digest, so two tags of one image share
	// their signatures, and an "unsigned" image must not be another test image signed.
	img, err := release.Build(release.BuildOptions{SlotPath: slot.Path, Slot: slot.Manifest, Arch: o.Arch, Manifest: o.Manifest,
		Labels: map[string]string{"dev.keel.test.tag": repoTag}})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.Addr+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, r.remote...); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	switch {
	case o.SignatureOf != "":
		other, err := name.ParseReference(r.Addr+"/"+o.SignatureOf, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		od, err := remote.Head(other, r.remote...)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := remote.Image(installer.SignatureTag(other.Context(), od.Digest), r.remote...)
		if err != nil {
			t.Fatalf("signature of %s: %v", o.SignatureOf, err)
		}
		if err := remote.Write(installer.SignatureTag(ref.Context(), d), sig, r.remote...); err != nil {
			t.Fatal(err)
		}
	case !o.Unsigned:
		key := o.Key
		if key == "" {
			if key, _, err = HarnessKey(); err != nil {
				t.Fatal(err)
			}
		}
		c, err := Cosign()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Sign(context.Background(), ref.Context().Digest(d.String()).String(), release.SignOptions{Key: key, HTTP: r.CAPEM == nil, CAFile: r.caFile}); err != nil {
			t.Fatal(err)
		}
	}
	return r.GuestRef(repoTag)
}

// kernel is the repository root and the kernel unpacked in its build cache (make deps).
func kernel(t testing.TB) (string, nodeimage.Kernel) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	k, err := nodeimage.FindKernel(filepath.Join(root, "build", "cache"))
	if err != nil {
		t.Fatal(err)
	}
	return root, k
}

var (
	slotMu    sync.Mutex
	slotBuilt = map[string]nodeimage.Slot{}
)

// buildSlotOnce builds each (version, fault) slot once per test binary.
func buildSlotOnce(ctx context.Context, o nodeimage.SlotOptions) (nodeimage.Slot, error) {
	slotMu.Lock()
	defer slotMu.Unlock()
	key := o.OutDir + "/" + o.Version + "/" + o.Fault
	if s, ok := slotBuilt[key]; ok {
		return s, nil
	}
	s, err := nodeimage.BuildSlot(ctx, o)
	if err != nil {
		return s, err
	}
	slotBuilt[key] = s
	return s, nil
}

var keyMu sync.Mutex

// HarnessKey is the cosign key pair that signs test installer images (build/vmtest/keys);
// every test disk trusts it. It returns the private key's path and the public key (PEM).
func HarnessKey() (string, string, error) {
	keyMu.Lock()
	defer keyMu.Unlock()
	dir, err := BuildDir()
	if err != nil {
		return "", "", err
	}
	c, err := Cosign()
	if err != nil {
		return "", "", err
	}
	dir = filepath.Join(dir, "keys")
	pub, err := c.EnsureKey(context.Background(), dir)
	return filepath.Join(dir, release.CosignKeyFile), pub, err
}

// Cosign is the cosign binary (make cosign-bin).
func Cosign() (release.Cosign, error) {
	bin, err := testenv.Bin("cosign")
	if err != nil {
		return release.Cosign{}, fmt.Errorf("%w (make cosign-bin)", err)
	}
	return release.Cosign{Bin: bin}, nil
}
