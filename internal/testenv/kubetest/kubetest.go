// Package kubetest runs a real control plane on 127.0.0.1 for tests — etcd, kube-apiserver,
// and with ControlPlane also kube-controller-manager and kube-scheduler — from the binaries
// `make k8s-bins` builds into build/bin (tools/k8s). Only tests import it. Kubelets are real
// too: they run in QEMU guests (keel nodes) and reach the API server as 10.0.2.2.
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

	"keel/cluster/etcd"
	"keel/internal/testenv"
	"keel/pki"
)

// APIServer is a running kube-apiserver with its etcd (and, with ControlPlane, the
// controller-manager and scheduler).
type APIServer struct {
	Port   int
	CAPEM  []byte
	Token  string
	Config *rest.Config // for 127.0.0.1
	ca     *pki.CA
	dir    string
	procs  []*exec.Cmd
	done   []chan struct{}
}

// Options choose what runs besides etcd and the API server.
type Options struct {
	// ControlPlane also runs kube-controller-manager and kube-scheduler: ReplicaSets,
	// DaemonSets, scheduling, PDB status, node lifecycle and garbage collection are real.
	ControlPlane bool
}

// Start runs etcd and kube-apiserver until the test ends.
func Start(t testing.TB, o ...Options) *APIServer {
	t.Helper()
	a, err := Run(t.TempDir(), o...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

// Run starts etcd and kube-apiserver with their files in dir and waits until the API server
// is ready; Stop ends both. For a TestMain shared by a package's tests.
func Run(dir string, opts ...Options) (_ *APIServer, err error) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
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

	// etcd as a control-plane node runs it (mutual TLS, the node's flags and certificates);
	// the API server is its client with the kube-apiserver certificate `make pki` makes.
	cport, pport := testenv.FreePort(), testenv.FreePort()
	etcdURL := "https://127.0.0.1:" + strconv.Itoa(cport)
	peerURL := "https://127.0.0.1:" + strconv.Itoa(pport)
	pkiDir := filepath.Join(dir, "pki")
	files, err := etcdPKI(pkiDir)
	if err != nil {
		return nil, err
	}
	if err := a.run("etcd", etcdBin, append([]string{"--name", "default", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default=" + peerURL, "--log-level", "warn"}, etcd.TLSArgs(files)...)...); err != nil {
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
	a.CAPEM, a.ca = ca.CertPEM, ca
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
	admission := []string{"--enable-admission-plugins", "NodeRestriction"}
	if !o.ControlPlane {
		// No controller-manager creates the default ServiceAccount: without this, pods are refused.
		admission = append(admission, "--disable-admission-plugins", "ServiceAccount")
	}
	saKeyFile := write("sa.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	caFile := write("ca.crt", ca.CertPEM)
	if err := a.run("kube-apiserver", apiBin, append(admission,
		"--etcd-servers", etcdURL, "--etcd-cafile", files.CA,
		"--etcd-certfile", filepath.Join(pkiDir, pki.EtcdAPIServer), "--etcd-keyfile", filepath.Join(pkiDir, pki.EtcdAPIServerK),
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(a.Port),
		"--tls-cert-file", write("apiserver.crt", srv.CertPEM), "--tls-private-key-file", write("apiserver.key", srv.KeyPEM),
		"--token-auth-file", write("tokens.csv", []byte(a.Token+",admin,admin-uid,system:masters\n")),
		"--authorization-mode", "Node,RBAC",
		"--service-account-key-file", write("sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder})),
		"--service-account-signing-key-file", saKeyFile,
		"--client-ca-file", caFile, // kubelets authenticate with node certificates
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--endpoint-reconciler-type", "none", // 127.0.0.1 is loopback: it would exit otherwise
		"--cert-dir", filepath.Join(dir, "certs"))...); err != nil {
		return nil, err
	}
	a.Config = &rest.Config{Host: a.URL("127.0.0.1"), BearerToken: a.Token, TLSClientConfig: rest.TLSClientConfig{CAData: a.CAPEM}, Timeout: 30 * time.Second}
	if err := a.waitReady(); err != nil {
		return nil, err
	}
	if o.ControlPlane {
		if err := a.runControlPlane(saKeyFile, caFile); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// runControlPlane starts kube-controller-manager and kube-scheduler as admin, without leader
// election, serving only on loopback. The node monitor's grace is short so that a node whose
// kubelet stopped turns NotReady within a test's patience.
func (a *APIServer) runControlPlane(saKey, caFile string) error {
	cm, err := testenv.Bin("kube-controller-manager")
	if err != nil {
		return err
	}
	sched, err := testenv.Bin("kube-scheduler")
	if err != nil {
		return err
	}
	kc := filepath.Join(a.dir, "admin.kubeconfig")
	if err := os.WriteFile(kc, a.Kubeconfig("127.0.0.1"), 0o600); err != nil {
		return err
	}
	if err := a.run("kube-controller-manager", cm, "--kubeconfig", kc, "--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(testenv.FreePort()),
		"--service-account-private-key-file", saKey, "--root-ca-file", caFile,
		"--use-service-account-credentials=false", "--controllers", "*",
		"--node-monitor-grace-period", "20s", "--node-monitor-period", "2s",
		"--concurrent-gc-syncs", "5"); err != nil {
		return err
	}
	return a.run("kube-scheduler", sched, "--kubeconfig", kc, "--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(testenv.FreePort()))
}

// NodeKubeconfig is a kubeconfig for a kubelet: a client certificate for system:node:NAME in
// system:nodes (the Node authorizer and NodeRestriction admission apply), reaching the server
// as host.
func (a *APIServer) NodeKubeconfig(host, node string) ([]byte, error) {
	now := time.Now()
	c, err := a.ca.Issue(pki.Request{CommonName: "system:node:" + node, Orgs: []string{"system:nodes"}, Client: true, Now: now, Validity: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	return a.kubeconfig(host, "node", fmt.Sprintf("client-certificate-data: %s\n    client-key-data: %s", b64(c.CertPEM), b64(c.KeyPEM))), nil
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
	return a.kubeconfig(host, "admin", "token: "+a.Token)
}

// TokenKubeconfig reaches the server as host with a bearer token (a ServiceAccount's).
func (a *APIServer) TokenKubeconfig(host, user, token string) []byte {
	return a.kubeconfig(host, user, "token: "+token)
}

// kubeconfig reaches the server as host with user's credentials (YAML lines under user:).
func (a *APIServer) kubeconfig(host, user, creds string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    %s
contexts:
- name: test
  context: {cluster: test, user: %s}
current-context: test
`, a.URL(host), b64(a.CAPEM), user, creds, user))
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

// etcdPKI makes a development PKI in dir with one etcd member's certificates for loopback.
func etcdPKI(dir string) (etcd.Files, error) {
	now := time.Now()
	if _, err := pki.EnsureDev(dir, nil, nil, now); err != nil {
		return etcd.Files{}, err
	}
	ca, err := pki.LoadEtcdCA(dir)
	if err != nil {
		return etcd.Files{}, err
	}
	m, err := pki.EtcdMember(ca, "default", nil, nil, now)
	if err != nil {
		return etcd.Files{}, err
	}
	for name, b := range m {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return etcd.Files{}, err
		}
	}
	return etcd.NodeFiles(dir), nil
}
