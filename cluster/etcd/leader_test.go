package etcd_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	etcdnode "keel/cluster/etcd"
	"keel/internal/testenv/etcdtest"
)

// leader returns the member that leads, as the cluster reports it.
func leader(t testing.TB, c *etcdtest.Cluster, cli *clientv3.Client) *etcdtest.Member {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ms, err := etcdnode.List(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Members {
		st, err := cli.Status(ctx, m.ClientURL)
		if err != nil {
			continue
		}
		for _, x := range ms {
			if x.ID == st.Leader {
				for _, mm := range c.Members {
					if mm.Name == x.Name {
						return mm
					}
				}
			}
		}
	}
	t.Fatal("no leader")
	return nil
}

// TestHandOver: the leader hands leadership to another voter, which then leads; a follower
// and a non-member have nothing to hand over; the only voter of a cluster says so.
func TestHandOver(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client()
	ctx := context.Background()
	l := leader(t, c, cli)
	note, err := etcdnode.HandOver(ctx, cli, l.Name, l.ClientURL)
	if err != nil || !strings.Contains(note, "leadership handed over to") {
		t.Fatalf("hand over from %s: %q %v", l.Name, note, err)
	}
	t.Log(note)
	l2 := leader(t, c, cli)
	if l2 == l || !strings.Contains(note, l2.Name) {
		t.Errorf("after the hand-over %s leads; note %q", l2.Name, note)
	}
	if note, err := etcdnode.HandOver(ctx, cli, l.Name, ""); err != nil || !strings.Contains(note, "does not lead ("+l2.Name+" does)") {
		t.Errorf("follower: %q %v", note, err)
	}
	if note, err := etcdnode.HandOver(ctx, cli, "nobody", ""); err != nil || !strings.Contains(note, "not a voting member") {
		t.Errorf("non-member: %q %v", note, err)
	}
	solo := etcdtest.Start(t, 1)
	if note, err := etcdnode.HandOver(ctx, solo.Client(), "m0", ""); err != nil || !strings.Contains(note, "the only voter") {
		t.Errorf("single member: %q %v", note, err)
	}
}

// readProber does a quorum read every 20 ms through the given client.
type readProber struct {
	mu     sync.Mutex
	lat    []time.Duration
	failed []string
}

func (p *readProber) run(ctx context.Context, cli *clientv3.Client) {
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		t0 := time.Now()
		_, err := cli.Get(rctx, "/probe")
		d := time.Since(t0)
		cancel()
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		p.lat = append(p.lat, d)
		if err != nil {
			p.failed = append(p.failed, err.Error())
		}
		p.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *readProber) max() (time.Duration, int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := append([]time.Duration(nil), p.lat...)
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	if len(l) == 0 {
		return 0, 0, len(p.failed)
	}
	return l[len(l)-1], len(l), len(p.failed)
}

// TestLeaderLeaves: the leader of a 3-member cluster leaves it (MemberRemove, as a
// preserve=false upgrade does), once without and once after a hand-over, with a prober's
// quorum reads every 20 ms through the two members that stay. Without the hand-over the
// cluster has no leader until an election timeout passes (etcd's default, 1 s) and the
// slowest read shows it; with it, the reads do not notice. The figures are logged, and the
// hand-over run must see no failed read and a slowest read under the election timeout.
func TestLeaderLeaves(t *testing.T) {
	run := func(handOver bool) (time.Duration, int, int, string) {
		c := etcdtest.Start(t, 3)
		cli := c.Client()
		l := leader(t, c, cli)
		var stay []string
		for _, m := range c.Members {
			if m != l {
				stay = append(stay, m.ClientURL)
			}
		}
		p := &readProber{}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go p.run(ctx, c.ClientFor(stay...))
		time.Sleep(500 * time.Millisecond)
		note := "no hand-over"
		if handOver {
			var err error
			if note, err = etcdnode.HandOver(ctx, cli, l.Name, l.ClientURL); err != nil {
				t.Fatal(err)
			}
		}
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		defer rcancel()
		if err := etcdnode.Remove(rctx, cli, l.Name); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		cancel()
		worst, n, failed := p.max()
		c.StopAll()
		return worst, n, failed, note
	}
	worstNo, nNo, failedNo, _ := run(false)
	worst, n, failed, note := run(true)
	t.Logf("leader leaves without a hand-over: %d reads, %d failed, slowest %v", nNo, failedNo, worstNo.Round(time.Millisecond))
	t.Logf("leader leaves after a hand-over (%s): %d reads, %d failed, slowest %v (%.1fx less)", note, n, failed, worst.Round(time.Millisecond), float64(worstNo)/float64(max(worst, 1)))
	if failed > 0 || worst >= time.Second {
		t.Errorf("with the hand-over: %d failed reads, slowest %v", failed, worst)
	}
}

// BenchmarkHandOver: the cost of TLS on a hand-over, against a plain-HTTP cluster of the same
// size in the same run (leadership moves from whoever leads to the most caught-up voter).
func BenchmarkHandOver(b *testing.B) {
	for _, mode := range []struct {
		name string
		o    etcdtest.Options
	}{{"plain", etcdtest.Options{Insecure: true}}, {"tls", etcdtest.Options{}}} {
		c := etcdtest.StartWith(b, 3, mode.o)
		cli := c.Client()
		b.Run(mode.name, func(b *testing.B) {
			for range b.N {
				l := leader(b, c, cli)
				if _, err := etcdnode.HandOver(context.Background(), cli, l.Name, l.ClientURL); err != nil {
					b.Fatal(fmt.Errorf("%s: %w", mode.name, err))
				}
			}
		})
		c.StopAll()
	}
}
