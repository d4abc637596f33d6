// Package kubetest runs a real etcd and a real kube-apiserver on 127.0.0.1 for tests, from the
// binaries `make k8s-bins` builds into build/bin (tools/k8s). Only tests import it.
//
// There is no controller-manager and no kubelet: tests do what those would (mark pods
// Running, delete terminating pods, set PDB status), and say so.
package kubetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"keel/internal/testenv"
	"keel/pki"
)

// APIServer is a running kube-apiserver with its etcd.
type APIServer struct {
	Port   int
	CAPEM  []byte
	Token  string
	Config *rest.Config // for 127.0.0.1
	dir    string
	procs  []*exec.Cmd
	done   []chan struct{}
}

// Start runs etcd and kube-apiserver until the test ends.
func Start(t testing.TB) *APIServer {
	t.Helper()
	a, err := Run(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

// Run starts etcd and kube-apiserver with their files in dir and waits until the API server
// is ready; Stop ends both. For a TestMain shared by a package's tests.
func Run(dir string) (_ *APIServer, err error) {
	etcdBin, err := testenv.Bin("etcd")
	if err != nil {
		return nil, err
	}
	apiBin, err := testenv.Bin("kube-apiserver")
	if err != nil {
		return nil, err
	}
	a := &APIServer{dir: dir, Token: "keel-test-admin-token"}
	defer func() {
		if err != nil {
			a.Stop()
		}
	}()

	cport, pport := testenv.FreePort(), testenv.FreePort()
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(cport)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(pport)
	if err := a.run("etcd", etcdBin, "--name", "default", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL, "--log-level", "warn"); err != nil {
		return nil, err
	}

	// Serving certificate valid from the host and from QEMU guests (10.0.2.2).
	now := time.Now()
	ca, err := pki.NewCA("kubetest CA", now, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	srv, err := ca.Issue(pki.Request{CommonName: "kube-apiserver", IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 2, 2)},
		DNSNames: []string{"localhost", "kubernetes.default.svc"}, Server: true, Now: now, Validity: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	a.CAPEM = ca.CertPEM
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if werr := os.WriteFile(p, b, 0o600); werr != nil && err == nil {
			err = werr
		}
		return p
	}
	saKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kder, _ := x509.MarshalECPrivateKey(saKey)
	pder, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	a.Port = testenv.FreePort()
	if err := a.run("kube-apiserver", apiBin,
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(a.Port),
		"--tls-cert-file", write("apiserver.crt", srv.CertPEM), "--tls-private-key-file", write("apiserver.key", srv.KeyPEM),
		"--token-auth-file", write("tokens.csv", []byte(a.Token+",admin,admin-uid,system:masters\n")),
		"--authorization-mode", "Node,RBAC",
		"--service-account-key-file", write("sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder})),
		"--service-account-signing-key-file", write("sa.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})),
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--endpoint-reconciler-type", "none", // 127.0.0.1 is loopback: it would exit otherwise
		// No controller-manager creates the default ServiceAccount: without this, pods are refused.
		"--disable-admission-plugins", "ServiceAccount",
		"--cert-dir", filepath.Join(dir, "certs")); err != nil {
		return nil, err
	}
	a.Config = &rest.Config{Host: a.URL("127.0.0.1"), BearerToken: a.Token, TLSClientConfig: rest.TLSClientConfig{CAData: a.CAPEM}, Timeout: 30 * time.Second}
	if err := a.waitReady(); err != nil {
		return nil, err
	}
	return a, nil
}

// Stop kills the API server and etcd and waits for them.
func (a *APIServer) Stop() {
	for i := len(a.procs) - 1; i >= 0; i-- {
		a.procs[i].Process.Kill()
		<-a.done[i]
	}
	a.procs, a.done = nil, nil
}

// Log returns the tail of a component's log ("etcd" or "kube-apiserver").
func (a *APIServer) Log(name string) string {
	b, _ := os.ReadFile(filepath.Join(a.dir, name+".log"))
	return string(tail(b, 3000))
}

// URL is the server's address as seen from host ("127.0.0.1", or "10.0.2.2" in a guest).
func (a *APIServer) URL(host string) string { return "https://" + host + ":" + strconv.Itoa(a.Port) }

// Kubeconfig is an admin kubeconfig reaching the server as host.
func (a *APIServer) Kubeconfig(host string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, a.URL(host), b64(a.CAPEM), a.Token))
}

func (a *APIServer) waitReady() error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(a.CAPEM)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 2 * time.Second}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", a.URL("127.0.0.1")+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+a.Token)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after 90s; log tail:\n%s", a.Log("kube-apiserver"))
}

func (a *APIServer) run(name, bin string, args ...string) error {
	logf, err := os.Create(filepath.Join(a.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	a.procs = append(a.procs, cmd)
	a.done = append(a.done, done)
	return nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
