package etcd_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	etcdnode "keel/cluster/etcd"
	"keel/internal/testenv/etcdtest"
	"keel/pki"
)

// TestMutualTLS: a cluster run with the node's flags and certificates serves only clients with
// a certificate from its etcd CA. A client without a certificate, one with a certificate from
// another CA (the node endpoint's own CA among them), and a plain-HTTP client can neither read
// nor write, nor delete the upgrade lock, nor revoke its lease, nor touch the member list; the
// keys and the lock are exactly as they were.
func TestMutualTLS(t *testing.T) {
	c := etcdtest.Start(t, 3)
	good := c.Client()
	ctx := context.Background()
	if _, err := good.Put(ctx, "/app/key", "v1"); err != nil {
		t.Fatalf("the admin certificate: %v", err)
	}
	lease, err := etcdnode.Grant(ctx, good, 60)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := etcdnode.Acquire(ctx, good, lease, etcdnode.Holder{Node: "m0", UpgradeID: "u1"}, func(etcdnode.Holder) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release(ctx)

	caPEM, _ := os.ReadFile(filepath.Join(c.PKIDir, pki.EtcdCA))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	other := t.TempDir()
	if _, err := pki.EnsureDev(other, nil, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	pair := func(dir, cert, key string) tls.Certificate {
		p, err := tls.LoadX509KeyPair(filepath.Join(dir, cert), filepath.Join(dir, key))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	https := c.Endpoints()
	var plain []string
	for _, e := range https {
		plain = append(plain, "http://"+strings.TrimPrefix(e, "https://"))
	}
	// The attempts run at once (each waits out its 3 s timeouts); the group ends when all have.
	t.Run("attempts", func(t *testing.T) {
		for _, bad := range []struct {
			name      string
			endpoints []string
			tls       *tls.Config
		}{
			{"no client certificate", https, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}},
			{"a certificate from another etcd CA", https, &tls.Config{RootCAs: roots, GetClientCertificate: send(pair(other, pki.EtcdAdmin, pki.EtcdAdminKey))}},
			{"the node endpoint's admin certificate (its CA, not etcd's)", https, &tls.Config{RootCAs: roots, GetClientCertificate: send(pair(c.PKIDir, "admin.crt", "admin.key"))}},
			{"plain HTTP", plain, nil},
			{"TLS 1.1", https, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair(c.PKIDir, pki.EtcdAdmin, pki.EtcdAdminKey)}, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}},
		} {
			t.Run(bad.name, func(t *testing.T) {
				t.Parallel()
				// What the server says, seen over its HTTP API: the refusal is the TLS layer's.
				if why := httpGet(bad.endpoints[0]+"/version", bad.tls); why == "200 OK" {
					t.Errorf("GET /version: %s", why)
				} else {
					t.Logf("GET /version: %s", why)
				}
				cli, err := clientv3.New(clientv3.Config{Endpoints: bad.endpoints, TLS: bad.tls, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
				if err != nil {
					t.Logf("refused at once: %v", err)
					return
				}
				defer cli.Close()
				ms, _ := etcdnode.List(ctx, good)
				ops := map[string]func(context.Context) error{
					"read":  func(ctx context.Context) error { _, err := cli.Get(ctx, "/app/key"); return err },
					"write": func(ctx context.Context) error { _, err := cli.Put(ctx, "/app/key", "evil"); return err },
					"delete lock": func(ctx context.Context) error {
						_, err := cli.Delete(ctx, etcdnode.LockPrefix+"/", clientv3.WithPrefix())
						return err
					},
					"revoke lease": func(ctx context.Context) error { _, err := cli.Revoke(ctx, clientv3.LeaseID(lease)); return err },
					"member list":  func(ctx context.Context) error { _, err := cli.MemberList(ctx); return err },
					"remove m2":    func(ctx context.Context) error { _, err := cli.MemberRemove(ctx, ms[2].ID); return err },
				}
				var mu sync.Mutex
				var wg sync.WaitGroup
				for name, op := range ops {
					wg.Add(1)
					go func() {
						defer wg.Done()
						ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
						defer cancel()
						err := op(ctx)
						mu.Lock()
						defer mu.Unlock()
						if err == nil {
							t.Errorf("%s: allowed", name)
						} else if name == "read" {
							t.Logf("%s refused: %v", name, err)
						}
					}()
				}
				wg.Wait()
			})
		}
	})
	// The same request with the admin certificate is answered.
	if why := httpGet(https[0]+"/version", c.TLS); why != "200 OK" {
		t.Errorf("GET /version with the admin certificate: %s", why)
	}
	// Nothing changed.
	resp, err := good.Get(ctx, "/app/key")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Errorf("/app/key after the attempts: %v %v", resp, err)
	}
	if h, ok, err := etcdnode.CurrentHolder(ctx, good); err != nil || !ok || h.Node != "m0" || h.UpgradeID != "u1" {
		t.Errorf("lock holder after the attempts: %+v %v %v", h, ok, err)
	}
	if ms, err := etcdnode.List(ctx, good); err != nil || len(ms) != 3 {
		t.Errorf("members after the attempts: %v %v", ms, err)
	}
}

// BenchmarkQuorumRead: the cost of TLS on a quorum read, against a plain-HTTP cluster of the
// same size in the same run: over an established connection ("read"), and with a new client
// each time ("connect+read": the handshake included, as a client that reconnects pays it).
func BenchmarkQuorumRead(b *testing.B) {
	for _, mode := range []struct {
		name string
		o    etcdtest.Options
	}{{"plain", etcdtest.Options{Insecure: true}}, {"tls", etcdtest.Options{}}} {
		c := etcdtest.StartWith(b, 3, mode.o)
		ep := c.Members[1].ClientURL // a follower or the leader: either way a ReadIndex round
		b.Run(mode.name+"/read", func(b *testing.B) {
			cli := c.ClientFor(ep)
			ctx := context.Background()
			cli.Get(ctx, "warm")
			b.ResetTimer()
			for range b.N {
				if _, err := cli.Get(ctx, "k"); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(mode.name+"/connect+read", func(b *testing.B) {
			for range b.N {
				cli, err := etcdnode.Connect([]string{ep}, c.TLS)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := cli.Get(context.Background(), "k"); err != nil {
					b.Fatal(fmt.Errorf("%s: %w", mode.name, err))
				}
				cli.Close()
			}
		})
		c.StopAll()
	}
}

// httpGet is the status of a GET, or why there was none.
func httpGet(url string, t *tls.Config) string {
	cl := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: t}}
	resp, err := cl.Get(url)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	if resp.StatusCode != 200 {
		return resp.Status + ": " + strings.TrimSpace(string(b))
	}
	return resp.Status
}

// send presents cert whatever CAs the server asks for (Go's client otherwise sends none that
// does not match them).
func send(cert tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
}
