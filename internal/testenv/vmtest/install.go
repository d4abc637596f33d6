package vmtest

import (
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"keel/config"
	"keel/install"
	"keel/pki"
)

// Direct boots a kernel and initramfs without a bootloader (QEMU -kernel, -initrd, -append;
// OVMF starts them before any disk): how a netbooted or USB-booted server starts install mode.
type Direct struct {
	Kernel, Initrd, Append string
}

// Direct is direct boot of img's slot A kernel and initramfs with the command line args.
func (img *Image) Direct(t testing.TB, args string) *Direct {
	t.Helper()
	_, k := kernel(t)
	return &Direct{Kernel: k.Vmlinuz(), Initrd: filepath.Join(filepath.Dir(img.SlotA.Path), "initramfs-"+img.SlotA.Manifest.Version), Append: args}
}

// NewBlank prepares a VM whose disk is sizeMiB of zeros (sparse) instead of a copy of img's
// disk; img still gives the endpoint's PKI (an install document carries it) and the kernel
// and initramfs to boot install mode from.
func NewBlank(t testing.TB, img *Image, sizeMiB int64) *VM {
	t.Helper()
	blank := *img
	blank.Disk = filepath.Join(t.TempDir(), "blank.img")
	f, err := os.Create(blank.Disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(sizeMiB << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return New(t, &blank)
}

// HarnessConfig is cfg as every test image's: it trusts the harness key and, unless it lists
// registries or httpsOnly, reaches the host's registries (10.0.2.2) over plain HTTP.
func HarnessConfig(cfg config.Config, httpsOnly bool) (config.Config, error) {
	_, pub, err := HarnessKey()
	if err != nil {
		return cfg, err
	}
	cfg.Upgrade.TrustedKeys = append([]config.TrustedKey{{Name: "harness", PublicKey: pub}}, cfg.Upgrade.TrustedKeys...)
	if len(cfg.Upgrade.InsecureRegistries) == 0 && !httpsOnly {
		cfg.Upgrade.InsecureRegistries = []string{"10.0.2.2"}
	}
	return cfg, nil
}

// InstallServer serves install documents over HTTPS with a CA of its own, as an operator's
// provisioning server would; guests reach it at 10.0.2.2.
type InstallServer struct {
	Port int
	Pin  string // keel.config.ca's value: sha256 of the CA's public key
	Hits func() int
	docs map[string][]byte
}

// ServeInstall serves docs (path → document) until the test ends.
func ServeInstall(t testing.TB, docs map[string][]byte) *InstallServer {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA("keel-test-provisioning", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.Request{CommonName: "provisioning", IPs: []net.IP{net.IPv4(10, 0, 2, 2), net.IPv4(127, 0, 0, 1)}, Server: true, Now: now, Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cert.Certificate = append(cert.Certificate, ca.Cert.Raw) // the pin is checked against it
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	s := &InstallServer{Port: ln.Addr().(*net.TCPAddr).Port, Pin: "sha256:" + hex.EncodeToString(install.PinHash(ca.Cert)), docs: docs}
	var hits atomic.Int64
	done := make(chan struct{})
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := docs[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	srv := &http.Server{Handler: mux}
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	s.Hits = func() int { return int(hits.Load()) }
	return s
}

// Args is the install mode command line for the document at path and the disk selector.
func (s *InstallServer) Args(path, selector string) string {
	return strings.Join([]string{"keel.install=" + selector,
		fmt.Sprintf("keel.config=https://10.0.2.2:%d%s", s.Port, path),
		"keel.config.ca=" + s.Pin}, " ")
}
