package etcd_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	etcdnode "keel/cluster/etcd"
	"keel/internal/testenv/etcdtest"
)

// lockedBuffer is a log sink the lock's goroutines write while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// keepFromOutside renews lease id through cli every 500 ms until the returned func is called:
// the cluster goes on holding a lease whose own keep-alive hears nothing.
func keepFromOutside(t *testing.T, cli *clientv3.Client, id int64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if _, err := cli.KeepAliveOnce(ctx, clientv3.LeaseID(id)); err != nil {
				t.Logf("outside keep-alive of %x: %v", id, err)
			}
			cancel()
			select {
			case <-done:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// TestLeaseOutlivesItsKeepAlive: the lock's client talks to one follower only, and that member
// is frozen (SIGSTOP) longer than the lease's TTL while the test renews the lease through the
// other members. The cluster holds the lease; the lock's keep-alive stream hears nothing and
// etcd's client ends it (the five-VM fleet run lost a lease that way: a starved member, the
// upgrade aborted). The lock must not count that as lost: it asks the cluster once the member
// answers, keeps the lease alive anew, and still holds the lock three TTLs later with nobody
// else renewing. The same while waiting for the lock: the wait ends holding it. A lease revoked
// from outside is lost, at once, saying so.
func TestLeaseOutlivesItsKeepAlive(t *testing.T) {
	c := etcdtest.Start(t, 3)
	lead := leader(t, c, c.Client())
	var f *etcdtest.Member
	var others []string
	for _, m := range c.Members {
		if m != lead && f == nil {
			f = m
		} else {
			others = append(others, m.ClientURL)
		}
	}
	cli := c.ClientFor(f.ClientURL)
	outside := c.ClientFor(others...)
	ctx := context.Background()
	const ttl = 6
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	// freeze stops f for 8 s (more than a TTL: the stream ends; less than two: the lock asks
	// again before it would give up) while the lease is renewed from outside.
	freeze := func(id int64) {
		stop := keepFromOutside(t, outside, id)
		c.Pause(f)
		time.Sleep(8 * time.Second)
		c.Resume(f)
		stop()
	}
	renewed := func(want int) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for strings.Count(logs.String(), "kept alive anew") < want && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if n := strings.Count(logs.String(), "kept alive anew"); n != want {
			t.Fatalf("keep-alives renewed %d times, want %d (the stream did not end, or was not renewed); log:\n%s", n, want, logs.String())
		}
	}

	// Held.
	id, err := etcdnode.Grant(ctx, cli, ttl)
	if err != nil {
		t.Fatal(err)
	}
	l, err := etcdnode.Acquire(ctx, cli, id, etcdnode.Holder{Node: "m1", UpgradeID: "u1"}, func(etcdnode.Holder) {}, log)
	if err != nil {
		t.Fatal(err)
	}
	freeze(id)
	renewed(1)
	time.Sleep(3 * ttl * time.Second) // nobody else renews it now
	select {
	case <-l.Lost():
		t.Fatalf("lock lost: %s", l.Reason())
	default:
	}
	if h, ok, err := etcdnode.CurrentHolder(ctx, outside); err != nil || !ok || h.Lease != id || h.Node != "m1" {
		t.Fatalf("holder %+v %v %v, want m1 under %x", h, ok, err, id)
	}

	// Waiting: m1 holds, m2 waits through a frozen member, then m1 releases.
	id2, err := etcdnode.Grant(ctx, cli, ttl)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	var l2 *etcdnode.Lock
	go func() {
		var err error
		l2, err = etcdnode.Acquire(ctx, cli, id2, etcdnode.Holder{Node: "m2", UpgradeID: "u2"}, func(etcdnode.Holder) {}, log)
		got <- err
	}()
	time.Sleep(time.Second)
	freeze(id2)
	renewed(2)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("waiting through a frozen member: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the lock was not taken after its holder released it")
	}

	// Revoked from outside: lost, and said why.
	revoked := time.Now()
	if err := etcdnode.Revoke(ctx, outside, id2); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l2.Lost():
	case <-time.After(2 * ttl * time.Second):
		t.Fatal("a revoked lease was not reported lost")
	}
	if !strings.Contains(l2.Reason(), "gone") {
		t.Errorf("reason %q, want the lease gone", l2.Reason())
	}
	t.Logf("revoked lease reported lost after %v: %s", time.Since(revoked).Round(10*time.Millisecond), l2.Reason())
	t.Logf("log:\n%s", logs.String())
}
