// Package vmtest boots real keel disk images under QEMU (OVMF + GRUB, TCG by default) for
// end-to-end tests: it builds or reuses the images, runs each VM on its own copy of the disk
// and OVMF variables, waits for console patterns, calls the endpoint through hostfwd with
// mTLS, reboots and cuts power through QMP, and always cleans up. Only tests import it.
package vmtest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"keel/config"
	"keel/initramfs/nodeimage"
	"keel/internal/testenv"
	"keel/pki"
)

// Image is a built disk image a VM boots a copy of.
type Image struct {
	Disk   string // the pristine image; never booted directly
	PKIDir string // CA and client certificates for the endpoint
	SlotA  nodeimage.Slot
	SlotB  *nodeimage.Slot
}

// ImageOptions choose what goes into an image.
type ImageOptions struct {
	VersionA string
	VersionB string // empty: slot B left empty
	FaultA   string // a test fault baked into slot A's init
	// TestSvc packs internal/testenv/vmtest/testsvc as /bin/testsvc into slot A, for service tests.
	TestSvc bool
	// Config is the node's config.json; the harness adds its cosign key to the trusted keys,
	// and lists the host (10.0.2.2, any port) as an insecure registry unless the config lists
	// registries of its own.
	Config config.Config
	// StateFiles go onto STATE next to config.json (e.g. a kubeconfig).
	StateFiles map[string][]byte
	// Etcd packs build/bin/etcd into the slots' system image (control-plane nodes).
	Etcd bool
	// Kube packs the kubelet, containerd, runc and the CNI plugins too (Kubernetes nodes).
	// Images without either carry no system image: they boot and upgrade faster.
	Kube bool
	// HTTPSOnly: the harness lists no insecure registry (the node reaches registries over
	// HTTPS only, NewTLSRegistry's).
	HTTPSOnly bool
}

func (o ImageOptions) key() string {
	b, _ := json.Marshal(o)
	h := sha256.Sum256(b)
	return fmt.Sprintf("%s_%s_%x", o.VersionA, o.VersionB, h[:4])
}

var (
	buildMu sync.Mutex
	built   = map[string]*Image{}
)

// BuildDir is where the harness keeps images, logs and the test PKI: build/vmtest.
func BuildDir() (string, error) {
	dir, err := testenv.BuildDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "vmtest"), nil
}

// BuildImage builds the image for o once per test binary (later calls reuse it). The Go build
// cache makes a rebuild of unchanged code cheap.
func BuildImage(ctx context.Context, o ImageOptions) (*Image, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	if img, ok := built[o.key()]; ok {
		return img, nil
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, "build", "vmtest")
	k, err := nodeimage.FindKernel(filepath.Join(root, "build", "cache"))
	if err != nil {
		return nil, err
	}
	pkiDir := filepath.Join(dir, "pki")
	if _, err := pki.EnsureDev(pkiDir, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 2, 15)}, []string{"localhost"}, time.Now()); err != nil {
		return nil, err
	}
	imgDir := filepath.Join(dir, "images")
	img := &Image{PKIDir: pkiDir, Disk: filepath.Join(dir, "disk-"+o.key()+".img")}
	dirA := imgDir
	if o.FaultA != "" {
		dirA = filepath.Join(imgDir, "fault-"+o.FaultA)
	}
	var gobins map[string]string
	if o.TestSvc {
		dirA = filepath.Join(dirA, "testsvc")
		gobins = map[string]string{"/bin/testsvc": "./internal/testenv/vmtest/testsvc"}
	}
	sys, sub, err := systemImage(o.Etcd, o.Kube)
	if err != nil {
		return nil, err
	}
	dirA = filepath.Join(dirA, sub)
	img.SlotA, err = buildSlotOnce(ctx, nodeimage.SlotOptions{RepoRoot: root, Version: o.VersionA, Kernel: k, OutDir: dirA, Fault: o.FaultA, GoBinaries: gobins, System: sys})
	if err != nil {
		return nil, err
	}
	if o.VersionB != "" {
		dirB := filepath.Join(imgDir, sub)
		b, err := buildSlotOnce(ctx, nodeimage.SlotOptions{RepoRoot: root, Version: o.VersionB, Kernel: k, OutDir: dirB, System: sys})
		if err != nil {
			return nil, err
		}
		img.SlotB = &b
	}
	cfg, err := HarnessConfig(o.Config, o.HTTPSOnly)
	if err != nil {
		return nil, err
	}
	err = nodeimage.BuildDisk(ctx, nodeimage.DiskOptions{
		Path: img.Disk, SlotA: img.SlotA, SlotB: img.SlotB, PKIDir: pkiDir, Config: cfg, StateFiles: o.StateFiles, WorkDir: dir,
	})
	if err != nil {
		return nil, err
	}
	built[o.key()] = img
	return img, nil
}

// systemImage is the system image a test image carries, and the image directory's subfolder
// for it: nothing, etcd only (`make etcd-bin`), or with kube everything a Kubernetes node runs
// (`make node-bins`).
func systemImage(etcd, kube bool) (nodeimage.System, string, error) {
	var names []string
	sub := ""
	switch {
	case kube:
		sub = "kube"
		if !etcd {
			names = []string{"kubelet", "containerd", "containerd-shim-runc-v2", "runc", "bridge", "host-local", "loopback"}
			sub = "kube-worker"
		}
	case etcd:
		names, sub = []string{"etcd"}, "etcd"
	default:
		return nodeimage.System{}, "", nil
	}
	bin, err := testenv.Bin("etcd")
	if err != nil {
		return nodeimage.System{}, "", err
	}
	sys, missing := nodeimage.NodeSystem(filepath.Dir(bin), names...)
	if len(missing) > 0 {
		return nodeimage.System{}, "", fmt.Errorf("system image: missing %s (make node-bins)", strings.Join(missing, ", "))
	}
	return sys, sub, nil
}

// safeName turns a test name into a file name.
func safeName(s string) string {
	return strings.NewReplacer("/", "_", " ", "_", ":", "_").Replace(s)
}
