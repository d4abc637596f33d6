package vmtest

import (
	"context"
	"crypto/ed25519"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"keel/initramfs/nodeimage"
	"keel/initramfs/release"
	"keel/installer"
	"keel/internal/testenv"
)

// Registry is a real OCI registry (go-containerregistry's) on 127.0.0.1 for the test's
// lifetime. Guests reach it as 10.0.2.2:Port through QEMU's user networking.
type Registry struct {
	Addr string // 127.0.0.1:PORT
	Port int

	mu   sync.Mutex
	wrap func(http.Handler) http.Handler
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
	Key      ed25519.PrivateKey // default: the harness key every test image trusts
	Arch     string
	Manifest func(*installer.Manifest)
	// Etcd and Kube choose the slot's system image, as in ImageOptions.
	Etcd, Kube bool
}

// PushInstaller builds an installer image and pushes it as repoTag; it returns the guest's
// reference.
func (r *Registry) PushInstaller(t testing.TB, repoTag string, o InstallerOptions) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	k, err := nodeimage.FindKernel(filepath.Join(root, "build", "cache"))
	if err != nil {
		t.Fatal(err)
	}
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
	key := o.Key
	if key == nil && !o.Unsigned {
		if key, err = harnessKey(); err != nil {
			t.Fatal(err)
		}
	}
	img, err := release.Build(release.BuildOptions{SlotPath: slot.Path, Slot: slot.Manifest, Key: key, Arch: o.Arch, Manifest: o.Manifest})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := installer.ParseReference(r.Addr+"/"+repoTag, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return r.GuestRef(repoTag)
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

// harnessKey is the signing key of test installer images; every test disk trusts it.
func harnessKey() (ed25519.PrivateKey, error) {
	dir, err := BuildDir()
	if err != nil {
		return nil, err
	}
	k, _, err := release.EnsureSigningKey(filepath.Join(dir, "keys"))
	return k, err
}
