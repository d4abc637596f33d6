// Package registrytest runs the real parts of image trust for tests: Debian's docker-registry
// (CNCF distribution) over TLS with a CA of the test's own, and the cosign binary that signs
// installer images. Only tests import it.
package registrytest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"keel/initramfs/release"
	"keel/internal/testenv"
	"keel/pki"
)

// DistributionBin is Debian's docker-registry (make deps installs it).
const DistributionBin = "/usr/bin/docker-registry"

// Distribution is a docker-registry serving HTTPS on 127.0.0.1 (guests reach it as
// 10.0.2.2:Port) with a certificate from CA, storing under the test's temporary directory.
type Distribution struct {
	Addr   string // 127.0.0.1:PORT
	Port   int
	CAPEM  []byte         // the test CA, for upgrade.registry_ca
	Pool   *x509.CertPool // the same, for host clients
	Client *http.Client   // trusts CA
}

// GuestRef is repoTag as a guest names it.
func (d *Distribution) GuestRef(repoTag string) string {
	return "10.0.2.2:" + strconv.Itoa(d.Port) + "/" + repoTag
}

// StartDistribution starts the registry and waits until it answers over TLS.
func StartDistribution(t testing.TB) *Distribution {
	t.Helper()
	if _, err := os.Stat(DistributionBin); err != nil {
		t.Fatalf("%s missing: make deps installs Debian's docker-registry", DistributionBin)
	}
	dir := t.TempDir()
	now := time.Now()
	ca, err := pki.NewCA("keel test registry CA", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue(pki.Request{CommonName: "registry", Server: true, Now: now, Validity: 24 * time.Hour,
		IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 2, 2)}, DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(crt, pair.CertPEM, 0o644)
	os.WriteFile(key, pair.KeyPEM, 0o600)
	port := testenv.FreePort()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: 127.0.0.1:%d
  tls:
    certificate: %s
    key: %s
`, filepath.Join(dir, "data"), port, crt, key)
	cfgPath := filepath.Join(dir, "config.yml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(DistributionBin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	d := &Distribution{Addr: "127.0.0.1:" + strconv.Itoa(port), Port: port, CAPEM: ca.CertPEM, Pool: pool,
		Client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := d.Client.Get("https://" + d.Addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			t.Fatalf("docker-registry did not answer on %s: %v\n%s", d.Addr, err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Cosign is the cosign binary `make cosign-bin` builds.
func Cosign(t testing.TB) release.Cosign {
	t.Helper()
	bin, err := testenv.Bin("cosign")
	if err != nil {
		t.Fatalf("%v (make cosign-bin)", err)
	}
	return release.Cosign{Bin: bin}
}

// Key is a cosign key pair in a directory.
type Key struct {
	Dir, Private, Public string
	PublicPEM            string
}

// NewKey makes a cosign key pair with cosign generate-key-pair, in a directory of the test's.
func NewKey(t testing.TB, c release.Cosign) Key {
	t.Helper()
	dir := t.TempDir()
	pub, err := c.EnsureKey(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return Key{Dir: dir, Private: filepath.Join(dir, release.CosignKeyFile), Public: filepath.Join(dir, release.CosignPubFile), PublicPEM: pub}
}
