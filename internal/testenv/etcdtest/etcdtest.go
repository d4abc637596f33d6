// Package etcdtest runs real etcd clusters on 127.0.0.1 for tests: each member a separate
// process of the etcd binary the node image carries (build/bin/etcd, from `make k8s-bins`), so
// a test can stop, kill, pause and restart members. Members run with the node's own mutual-TLS
// flags (etcd.TLSArgs) and certificates issued as the image build issues them, from a PKI of
// the cluster's own. Only tests import it.
package etcdtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"keel/cluster/etcd"
	"keel/internal/testenv"
	"keel/pki"
)

// Cluster is a running cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	dir     string
	Members []*Member
	// PKIDir is the cluster's development PKI (package pki's layout: etcd/ca.crt, etcd/ca.key,
	// etcd/admin.crt, ...); TLS is a client configuration with its etcd admin certificate.
	PKIDir string
	TLS    *tls.Config
	o      Options
}

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	dataDir   string
	logPath   string
	// Files are the member's certificates, as a node keeps them.
	Files    etcd.Files
	insecure bool
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
}

// Start runs an n-member cluster and waits until every member answers a linearizable read.
// Members are named m0, m1, ...; everything stops when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartWith(t, n, Options{})
}

// Options vary a cluster.
type Options struct {
	// Insecure runs the members over plain HTTP without client certificates (etcd's own
	// default; a node does so only with etcd.insecure): for comparisons with TLS.
	Insecure bool
	// Restore makes each member's data dir from this snapshot file with the real etcdutl
	// (`etcdutl snapshot restore`, the README's recipe) before it starts: a new cluster with
	// the snapshot's keys and revision.
	Restore string
	// HeartbeatMS and ElectionMS replace etcd's raft timings (100 and 1000 ms) when set: a
	// slow election, as on emulated nodes, on demand.
	HeartbeatMS, ElectionMS int
}

// StartWith is Start with options.
func StartWith(t testing.TB, n int, o Options) *Cluster {
	t.Helper()
	bin, err := testenv.Bin("etcd")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, bin: bin, dir: t.TempDir(), o: o}
	c.PKIDir = filepath.Join(c.dir, "pki")
	if _, err := pki.EnsureDev(c.PKIDir, nil, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadEtcdCA(c.PKIDir)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS, err = etcd.ClientTLS(filepath.Join(c.PKIDir, pki.EtcdCA), filepath.Join(c.PKIDir, pki.EtcdAdmin), filepath.Join(c.PKIDir, pki.EtcdAdminKey)); err != nil {
		t.Fatal(err)
	}
	scheme := "https"
	if o.Insecure {
		scheme, c.TLS = "http", nil
	}
	var initial []string
	for i := 0; i < n; i++ {
		m := &Member{Name: fmt.Sprintf("m%d", i),
			ClientURL: scheme + "://127.0.0.1:" + strconv.Itoa(testenv.FreePort()),
			PeerURL:   scheme + "://127.0.0.1:" + strconv.Itoa(testenv.FreePort())}
		m.insecure = o.Insecure
		m.dataDir = filepath.Join(c.dir, m.Name)
		m.logPath = filepath.Join(c.dir, m.Name+".log")
		nodePKI := filepath.Join(c.dir, m.Name+"-pki")
		files, err := pki.EtcdMember(ca, m.Name, []string{"127.0.0.1"}, []string{"127.0.0.1"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			p := filepath.Join(nodePKI, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		m.Files = etcd.NodeFiles(nodePKI)
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	t.Cleanup(c.StopAll)
	if o.Restore != "" {
		if err := c.restore(o.Restore, strings.Join(initial, ",")); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range c.Members {
		if err := c.run(m, strings.Join(initial, ","), "new"); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range c.Members {
		c.WaitHealthy(m, 30*time.Second)
	}
	return c
}

// Args are the flags a member runs with: timings as etcd's defaults, logs at warn, the node's
// TLS flags.
func (c *Cluster) args(m *Member, initial, state string) []string {
	return append([]string{"--name", m.Name, "--data-dir", m.dataDir,
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", initial, "--initial-cluster-state", state,
		"--initial-cluster-token", "keel-test", "--log-level", "warn"}, append(c.raftArgs(), c.tlsArgs(m)...)...)
}

func (c *Cluster) raftArgs() []string {
	var a []string
	if c.o.HeartbeatMS > 0 {
		a = append(a, "--heartbeat-interval", strconv.Itoa(c.o.HeartbeatMS))
	}
	if c.o.ElectionMS > 0 {
		a = append(a, "--election-timeout", strconv.Itoa(c.o.ElectionMS))
	}
	return a
}

func (c *Cluster) tlsArgs(m *Member) []string {
	if m.insecure {
		return nil
	}
	return etcd.TLSArgs(m.Files)
}

func (c *Cluster) run(m *Member, initial, state string) error {
	f, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, c.args(m, initial, state)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
	return nil
}

// Endpoints are every member's client URL.
func (c *Cluster) Endpoints() []string {
	var e []string
	for _, m := range c.Members {
		e = append(e, m.ClientURL)
	}
	return e
}

// Client returns a client for every member, closed when the test ends.
func (c *Cluster) Client() *clientv3.Client {
	return c.ClientFor(c.Endpoints()...)
}

// ClientFor returns a client for the given endpoints, closed when the test ends.
func (c *Cluster) ClientFor(endpoints ...string) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: c.TLS, DialTimeout: 3 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// WaitHealthy waits until m answers a linearizable read.
func (c *Cluster) WaitHealthy(m *Member, timeout time.Duration) {
	c.t.Helper()
	cli := c.ClientFor(m.ClientURL)
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("etcd %s not healthy after %v: %v\n%s", m.Name, timeout, err, c.Log(m))
}

// Stop stops m with SIGTERM and waits.
func (c *Cluster) Stop(m *Member) { c.signal(m, syscall.SIGTERM, true) }

// Kill kills m with SIGKILL and waits.
func (c *Cluster) Kill(m *Member) { c.signal(m, syscall.SIGKILL, true) }

// Pause freezes m (SIGSTOP): its connections stay open but nothing answers, as with a hung
// machine. Resume continues it.
func (c *Cluster) Pause(m *Member) { c.signal(m, syscall.SIGSTOP, false) }

// Resume continues a paused member.
func (c *Cluster) Resume(m *Member) { c.signal(m, syscall.SIGCONT, false) }

func (c *Cluster) signal(m *Member, sig syscall.Signal, wait bool) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	if wait {
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		m.mu.Lock()
		m.cmd = nil
		m.mu.Unlock()
	}
}

// Restart starts a stopped member again with its data.
func (c *Cluster) Restart(m *Member) {
	c.t.Helper()
	if err := c.run(m, m.Name+"="+m.PeerURL, "existing"); err != nil {
		c.t.Fatal(err)
	}
}

// Join starts m (stopped, removed from the cluster) again with an empty data dir, as a new
// member joining an existing cluster with the given --initial-cluster.
func (c *Cluster) Join(m *Member, initial string) {
	c.t.Helper()
	if err := os.RemoveAll(m.dataDir); err != nil {
		c.t.Fatal(err)
	}
	if err := c.run(m, initial, "existing"); err != nil {
		c.t.Fatal(err)
	}
}

// StopAll kills every member (a paused one is continued first so it can die).
func (c *Cluster) StopAll() {
	for _, m := range c.Members {
		c.signal(m, syscall.SIGCONT, false)
		c.Kill(m)
	}
}

// Log is the tail of m's log.
func (c *Cluster) Log(m *Member) string {
	b, _ := os.ReadFile(m.logPath)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// restore runs etcdutl snapshot restore for every member.
func (c *Cluster) restore(snapshot, initial string) error {
	bin, err := testenv.Bin("etcdutl")
	if err != nil {
		return err
	}
	for _, m := range c.Members {
		out, err := exec.Command(bin, "snapshot", "restore", snapshot, "--name", m.Name, "--data-dir", m.dataDir,
			"--initial-cluster", initial, "--initial-cluster-token", "keel-test", "--initial-advertise-peer-urls", m.PeerURL).CombinedOutput()
		if err != nil {
			return fmt.Errorf("etcdutl snapshot restore for %s: %w: %s", m.Name, err, out)
		}
	}
	return nil
}
