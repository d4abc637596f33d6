package e2e

// The control-plane test's instruments: a quorum-read prober and a watch of the upgrade lock
// from the host, moving the leadership, restoring a node's snapshot.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	etcdnode "keel/cluster/etcd"
	"keel/internal/testenv/etcdtest"
)

// prober does a quorum read (linearizable Get) against the cluster every 200 ms through all
// three members' forwarded client ports, as a client of the control plane would.
type prober struct {
	mu       sync.Mutex
	reads    int
	failures []string
	slow     []string // reads over 1 s
	max      time.Duration
	lat      []time.Duration
}

func (p *prober) run(ctx context.Context, cli *clientv3.Client) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		t0 := time.Now()
		_, err := cli.Get(rctx, "/e2e/probe")
		d := time.Since(t0)
		cancel()
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		p.reads++
		p.lat = append(p.lat, d)
		p.max = max(p.max, d)
		if err != nil {
			p.failures = append(p.failures, fmt.Sprintf("%s: %v", t0.Format("15:04:05.000"), err))
		} else if d > time.Second {
			p.slow = append(p.slow, fmt.Sprintf("%s: %v", t0.Format("15:04:05.000"), d.Round(time.Millisecond)))
		}
		p.mu.Unlock()
	}
}

func (p *prober) summary() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := append([]time.Duration(nil), p.lat...)
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	pct := func(q float64) time.Duration {
		if len(l) == 0 {
			return 0
		}
		return l[int(q*float64(len(l)-1))].Round(time.Millisecond)
	}
	return fmt.Sprintf("%d quorum reads, %d failed, %d over 1 s; p50 %v p99 %v max %v; failures %v; slow %v",
		p.reads, len(p.failures), len(p.slow), pct(0.5), pct(0.99), p.max.Round(time.Millisecond), p.failures, p.slow)
}

// lockWatch records, from the host, every change of the upgrade lock's keys: a holder marking
// its key (it holds the lock and starts) and a key deleted (its lease revoked: released).
type lockWatch struct {
	mu     sync.Mutex
	events []lockEvent
}

type lockEvent struct {
	at   time.Time
	node string
	kind string // "holds" or "released"
}

func (w *lockWatch) run(ctx context.Context, cli *clientv3.Client) {
	for resp := range cli.Watch(ctx, etcdnode.LockPrefix+"/", clientv3.WithPrefix(), clientv3.WithPrevKV()) {
		now := time.Now()
		for _, ev := range resp.Events {
			var h etcdnode.Holder
			switch {
			case ev.Type == clientv3.EventTypeDelete && ev.PrevKv != nil:
				json.Unmarshal(ev.PrevKv.Value, &h)
				w.add(lockEvent{now, h.Node, "released"})
			case ev.Type == clientv3.EventTypePut && len(ev.Kv.Value) > 0 && ev.Kv.Version == 2:
				json.Unmarshal(ev.Kv.Value, &h)
				w.add(lockEvent{now, h.Node, "holds"})
			}
		}
	}
}

func (w *lockWatch) add(e lockEvent) {
	w.mu.Lock()
	w.events = append(w.events, e)
	w.mu.Unlock()
}

// check fails the test if a read failed: an error, or no answer within the client's 3 s, is
// the cluster unavailable to its clients. Slow reads (over 1 s) are reported with the summary,
// not failed: their latency under TCG on 2 cores depends on whatever else the machine runs (a
// CI run once saw four reads of 1.0-1.5 s while a -race build ran beside the three VMs), and a
// latency is a figure to report, not an assert.
func (p *prober) check(t *testing.T, during string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.failures) > 0 {
		t.Errorf("quorum reads during %s: %d failed: %v (and %d over 1 s: %v)", during, len(p.failures), p.failures, len(p.slow), p.slow)
	}
}

// moveLeader makes n's member the leader (from the host, through the current leader).
func moveLeader(t *testing.T, ctx context.Context, cli *clientv3.Client, nodes []*cpNode, n *cpNode) {
	t.Helper()
	ids := memberIDs(t, cli)
	for _, m := range nodes {
		ep := fmt.Sprintf("https://127.0.0.1:%d", m.cport)
		st, err := cli.Status(ctx, ep)
		if err != nil || st.Leader != st.Header.MemberId {
			continue
		}
		if m == n {
			return
		}
		lc, err := etcdnode.Connect([]string{ep}, n.vm.EtcdTLS())
		if err != nil {
			t.Fatal(err)
		}
		defer lc.Close()
		if _, err := lc.MoveLeader(ctx, ids[n.name]); err != nil {
			t.Fatalf("move leader %s → %s: %v", m.name, n.name, err)
		}
		t.Logf("leadership moved from %s to %s", m.name, n.name)
		return
	}
	t.Fatal("no member says it leads")
}

// restoreFromNode: the node lists its snapshots in status; the newest, downloaded through the
// endpoint, has the SHA-256 status gives and restores with etcdutl into a new cluster holding
// the key written before the upgrades.
func restoreFromNode(t *testing.T, n *cpNode) {
	t.Helper()
	st := n.vm.Status()
	if len(st.EtcdSnapshots) == 0 {
		t.Fatalf("%s lists no etcd snapshot", n.name)
	}
	s := st.EtcdSnapshots[0]
	code, b, err := n.vm.Call("admin", "GET", "/v1/etcd/snapshots/"+s.Name, nil)
	sum := sha256.Sum256(b)
	if err != nil || code != http.StatusOK || int64(len(b)) != s.Size || hex.EncodeToString(sum[:]) != s.SHA256 {
		t.Fatalf("download %s: %d %v, %d bytes (want %d, sha256 %s)", s.Name, code, err, len(b), s.Size, s.SHA256)
	}
	if code, _, _ := n.vm.Call("operator", "GET", "/v1/etcd/snapshots/"+s.Name, nil); code != http.StatusForbidden {
		t.Errorf("an operator downloaded an etcd snapshot: %d", code)
	}
	f := filepath.Join(t.TempDir(), s.Name)
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := etcdtest.StartWith(t, 1, etcdtest.Options{Restore: f})
	resp, err := r.Client().Get(context.Background(), "/e2e/marker")
	if err != nil {
		t.Fatalf("restored from %s: %v", s.Name, err)
	}
	if len(resp.Kvs) != 1 || resp.Header.Revision != s.Revision {
		t.Fatalf("restored from %s: %d keys, revision %d (snapshot's %d)", s.Name, len(resp.Kvs), resp.Header.Revision, s.Revision)
	}
	t.Logf("%s: %d snapshots listed; %s (revision %d, %d KiB) downloaded and restored", n.name, len(st.EtcdSnapshots), s.Name, s.Revision, s.Size>>10)
}
