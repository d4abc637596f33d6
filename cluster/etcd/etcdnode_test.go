package etcd_test

// Integration tests against real etcd clusters: separate processes of build/bin/etcd (the
// binary the node image carries) on 127.0.0.1, stopped, killed and paused for real.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	etcdnode "keel/cluster/etcd"
	"keel/cluster/etcd/quorum"
	"keel/internal/testenv/etcdtest"
	"keel/pki"
)

const probeTimeout = 2 * time.Second

// budget is the checks': the host's etcd elects within its default 1 s.
var budget = etcdnode.BudgetFor(probeTimeout, time.Second)

func TestMain(m *testing.M) {
	// Re-executed as a lock holder that a test kills (see TestHolderKilled).
	if eps := os.Getenv("ETCDNODE_HOLD"); eps != "" {
		os.Exit(hold(strings.Split(eps, ","), os.Getenv("ETCDNODE_TTL"), os.Getenv("ETCDNODE_PKI")))
	}
	os.Exit(m.Run())
}

func hold(endpoints []string, ttl, pkiDir string) int {
	t, err := etcdnode.ClientTLS(filepath.Join(pkiDir, pki.EtcdCA), filepath.Join(pkiDir, pki.EtcdAdmin), filepath.Join(pkiDir, pki.EtcdAdminKey))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	cli, err := etcdnode.Connect(endpoints, t)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	ctx := context.Background()
	n, _ := strconv.Atoi(ttl)
	id, err := etcdnode.Grant(ctx, cli, n)
	if err == nil {
		_, err = etcdnode.Acquire(ctx, cli, id, etcdnode.Holder{Node: "doomed", Since: time.Now()}, func(etcdnode.Holder) {}, nil)
	}
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("held")
	select {} // until killed
}

func check(t *testing.T, c *etcdtest.Cluster, self string, op quorum.Op) quorum.Decision {
	t.Helper()
	d, ms, err := etcdnode.Check(context.Background(), c.Client(), self, op, budget)
	if err != nil {
		t.Fatalf("check %s %s: %v", self, op, err)
	}
	t.Logf("%d members, %s %s: ok=%v outage=%v: %s", len(ms), op, self, d.OK, d.Outage, d.Reason)
	return d
}

// TestQuorumChecksOnRealClusters: the arithmetic fed by real measurements, on clusters of 1,
// 2, 3 and 5 members with members stopped and frozen.
func TestQuorumChecksOnRealClusters(t *testing.T) {
	t.Run("1", func(t *testing.T) {
		c := etcdtest.Start(t, 1)
		if d := check(t, c, "m0", quorum.Restart); !d.OK || !d.Outage || !strings.Contains(d.Reason, "only voter") {
			t.Errorf("restart of a single member: %+v, want allowed with the outage stated", d)
		}
		if d := check(t, c, "m0", quorum.Leave); d.OK || !strings.Contains(d.Reason, "only voter") {
			t.Errorf("leave of a single member: %+v, want refused", d)
		}
	})
	t.Run("2", func(t *testing.T) {
		c := etcdtest.Start(t, 2)
		if d := check(t, c, "m0", quorum.Restart); d.OK || !strings.Contains(d.Reason, "leaves 1 of 2 voters healthy, quorum 2") {
			t.Errorf("restart in a 2-member cluster: %+v, want refused with the numbers", d)
		}
		if d := check(t, c, "m0", quorum.Leave); !d.OK {
			t.Errorf("leave in a healthy 2-member cluster: %+v, want allowed (1 remains, quorum 1)", d)
		}
	})
	t.Run("3", func(t *testing.T) {
		c := etcdtest.Start(t, 3)
		for _, op := range []quorum.Op{quorum.Restart, quorum.Leave} {
			if d := check(t, c, "m0", op); !d.OK {
				t.Errorf("%s in a healthy 3-member cluster: %+v", op, d)
			}
		}
		c.Stop(c.Members[2])
		d := check(t, c, "m0", quorum.Restart)
		if d.OK || !strings.Contains(d.Reason, "leaves 1 of 3 voters healthy, quorum 2") || !strings.Contains(d.Reason, "unhealthy voters: m2") {
			t.Errorf("restart with m2 stopped: %+v, want refused naming m2 and the numbers", d)
		}
		if d := check(t, c, "m0", quorum.Leave); d.OK || !strings.Contains(d.Reason, "m2") {
			t.Errorf("leave with m2 stopped: %+v, want refused", d)
		}
		// A node holding the lock re-checks until its deadline, and then says why.
		wctx, wcancel := context.WithTimeout(context.Background(), 3*probeTimeout)
		_, err := etcdnode.WaitCheck(wctx, c.Client(), "m0", quorum.Restart, budget, 500*time.Millisecond, nil)
		wcancel()
		if err == nil || !strings.Contains(err.Error(), "unhealthy voters: m2") || !strings.Contains(err.Error(), "gave up") {
			t.Errorf("WaitCheck with m2 stopped: %v, want the last refusal and that it gave up", err)
		}
		// The stopped member itself costs nothing more by restarting.
		if d := check(t, c, "m2", quorum.Restart); !d.OK {
			t.Errorf("restart of the stopped member: %+v", d)
		}
		c.Restart(c.Members[2])
		c.WaitHealthy(c.Members[2], 30*time.Second)
		if d := check(t, c, "m0", quorum.Restart); !d.OK {
			t.Errorf("restart once m2 is back: %+v", d)
		}
	})
	t.Run("5", func(t *testing.T) {
		c := etcdtest.Start(t, 5)
		c.Stop(c.Members[4])
		if d := check(t, c, "m0", quorum.Restart); !d.OK {
			t.Errorf("restart with one of 5 down: %+v, want allowed (3 of 5 remain)", d)
		}
		if d := check(t, c, "m0", quorum.Leave); d.OK {
			t.Errorf("leave with one of 5 down: %+v, want refused (the remaining cluster would be unhealthy)", d)
		}
		// A frozen member: its port accepts connections but nothing answers.
		c.Pause(c.Members[3])
		t0 := time.Now()
		d := check(t, c, "m0", quorum.Restart)
		if d.OK || !strings.Contains(d.Reason, "leaves 2 of 5 voters healthy, quorum 3") || !strings.Contains(d.Reason, "m3, m4") {
			t.Errorf("restart with m3 frozen and m4 stopped: %+v", d)
		}
		// Not a performance assert: a check that waits on a frozen member without its timeout
		// would hang for minutes (gRPC's own deadlines), not take a few seconds too many.
		if took := time.Since(t0); took > 10*probeTimeout {
			t.Errorf("a frozen member made the check take %v (probe timeout %v): it waited without a bound", took, probeTimeout)
		}
		c.Resume(c.Members[3])
	})
}

// TestLockOneAtATime: 2 and 5 nodes racing for the upgrade lock hold it one at a time, every
// one gets it, and the waiters are told who holds it.
func TestLockOneAtATime(t *testing.T) {
	c := etcdtest.Start(t, 3)
	for _, n := range []int{2, 5} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			var holding, maxHolding atomic.Int32
			var mu sync.Mutex
			var order []string
			var released, acquired []time.Time
			waited := map[string][]string{}
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := 0; i < n; i++ {
				name := fmt.Sprintf("node%d", i)
				wg.Add(1)
				go func() {
					defer wg.Done()
					cli := c.Client()
					ctx := context.Background()
					<-start
					id, err := etcdnode.Grant(ctx, cli, 10)
					if err != nil {
						t.Error(err)
						return
					}
					l, err := etcdnode.Acquire(ctx, cli, id, etcdnode.Holder{Node: name, UpgradeID: "u-" + name, Since: time.Now()}, func(h etcdnode.Holder) {
						mu.Lock()
						waited[name] = append(waited[name], h.Node)
						mu.Unlock()
					}, nil)
					if err != nil {
						t.Error(err)
						return
					}
					now := time.Now()
					if h := holding.Add(1); h > maxHolding.Load() {
						maxHolding.Store(h)
					}
					mu.Lock()
					order = append(order, name)
					acquired = append(acquired, now)
					mu.Unlock()
					h, ok, err := etcdnode.CurrentHolder(ctx, cli)
					if err != nil || !ok || h.Node != name {
						t.Errorf("%s holds the lock but CurrentHolder says %+v %v %v", name, h, ok, err)
					}
					time.Sleep(800 * time.Millisecond) // the "upgrade": long enough for waiters to poll the holder
					holding.Add(-1)
					mu.Lock()
					released = append(released, time.Now())
					mu.Unlock()
					if err := l.Release(ctx); err != nil {
						t.Error(err)
					}
				}()
			}
			close(start)
			wg.Wait()
			if maxHolding.Load() != 1 || len(order) != n {
				t.Fatalf("max holders at once %d (want 1), %d of %d got the lock: %v", maxHolding.Load(), len(order), n, order)
			}
			var lat []time.Duration
			for i := 1; i < len(acquired); i++ {
				lat = append(lat, acquired[i].Sub(released[i-1]))
			}
			waits := 0
			for _, w := range waited {
				waits += len(w)
				for _, h := range w {
					if h != "" && !slices.Contains(order, h) {
						t.Errorf("told of holder %q that never held it", h)
					}
				}
			}
			if waits == 0 {
				t.Error("no waiter was told who held the lock")
			}
			t.Logf("order %v; hand-over latencies (release → next holds) %v; waiters told of holders %d times", order, lat, waits)
		})
	}
}

// TestHolderKilled: a node holding the lock dies mid-upgrade (its process is SIGKILLed, its
// etcd member stopped). The next node gets the lock only when the TTL has run out, and goes on
// only when the cluster is healthy again.
func TestHolderKilled(t *testing.T) {
	c := etcdtest.Start(t, 3)
	const ttl = 3
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), "ETCDNODE_HOLD="+strings.Join(c.Endpoints(), ","), "ETCDNODE_TTL="+strconv.Itoa(ttl), "ETCDNODE_PKI="+c.PKIDir)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "held" {
		t.Fatalf("holder: %q", line)
	}
	cli := c.ClientFor(c.Members[1].ClientURL, c.Members[2].ClientURL)
	ctx := context.Background()
	id, err := etcdnode.Grant(ctx, cli, 10)
	if err != nil {
		t.Fatal(err)
	}
	var told []string
	got := make(chan *etcdnode.Lock, 1)
	go func() {
		l, err := etcdnode.Acquire(ctx, cli, id, etcdnode.Holder{Node: "m1", Since: time.Now()}, func(h etcdnode.Holder) { told = append(told, h.String()) }, nil)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	time.Sleep(1500 * time.Millisecond)
	select {
	case <-got:
		t.Fatal("got the lock while the holder was alive")
	default:
	}
	// The holder dies in its upgrade: its process and its member.
	c.Stop(c.Members[0])
	cmd.Process.Kill()
	killed := time.Now()
	l := <-got
	if l == nil {
		t.FailNow()
	}
	after := time.Since(killed)
	if after < (ttl-1)*time.Second {
		t.Errorf("lock taken %v after the holder died, before its TTL of %d s", after, ttl)
	}
	if len(told) == 0 || !strings.Contains(told[0], "doomed since") {
		t.Errorf("waiter was told %v, want the holder named", told)
	}
	// Re-check before going on: m0 is down, so restarting m1 would lose quorum. Bring m0
	// back after a while: the check must pass only then.
	var reports []string
	var back time.Time
	go func() {
		time.Sleep(3 * time.Second)
		back = time.Now()
		c.Restart(c.Members[0])
	}()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	d, err := etcdnode.WaitCheck(wctx, cli, "m1", quorum.Restart, budget, 500*time.Millisecond, func(r string) { reports = append(reports, r) })
	if err != nil {
		t.Fatal(err)
	}
	if back.IsZero() || time.Now().Before(back) {
		t.Errorf("check passed before m0 was back: %s", d.Reason)
	}
	if len(reports) == 0 || !strings.Contains(reports[0], "m0") {
		t.Errorf("refusals while m0 was down: %v, want one naming m0", reports)
	}
	t.Logf("lock taken %v after the holder was killed (TTL %d s); told %v; waited for: %v; then %s", after.Round(10*time.Millisecond), ttl, told, reports, d.Reason)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLeaveAndRejoin: remove a member right after the cluster started (etcd calls itself
// unhealthy then: retried), through a client that knows only that member; remove again (not
// found = done); add it back as a learner twice (the second finds the first), start it with an
// empty data dir, promote it once caught up.
func TestLeaveAndRejoin(t *testing.T) {
	c := etcdtest.Start(t, 3)
	m2 := c.Members[2]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	own := c.ClientFor(m2.ClientURL)
	t0 := time.Now()
	if err := etcdnode.Remove(ctx, own, "m2"); err != nil {
		t.Fatal(err)
	}
	t.Logf("removed m2 in %v", time.Since(t0).Round(time.Millisecond))
	c.Kill(m2)
	cli := c.ClientFor(c.Members[0].ClientURL, c.Members[1].ClientURL)
	ms, err := etcdnode.List(ctx, cli)
	if err != nil || len(ms) != 2 {
		t.Fatalf("members after remove: %+v %v", ms, err)
	}
	if err := etcdnode.Remove(ctx, cli, "m2"); err != nil {
		t.Fatalf("second remove: %v (want not found = done)", err)
	}
	initial, err := etcdnode.AddLearner(ctx, cli, "m2", m2.PeerURL)
	if err != nil {
		t.Fatal(err)
	}
	again, err := etcdnode.AddLearner(ctx, cli, "m2", m2.PeerURL)
	if err != nil || again != initial {
		t.Fatalf("second add: %q %v, want %q", again, err, initial)
	}
	ms, _ = etcdnode.List(ctx, cli)
	if _, how := etcdnode.Find(ms, "m2", m2.PeerURL); len(ms) != 3 || how != etcdnode.Learner {
		t.Fatalf("members after add: %+v (m2 %v)", ms, how)
	}
	// An unstarted learner does not count towards quorum: restarting m0 is still refused
	// (2 voters, quorum 2), and the learner is named.
	if d, _, _ := etcdnode.Check(ctx, cli, "m0", quorum.Restart, budget); d.OK {
		t.Errorf("restart with 2 voters and an unstarted learner: %+v", d)
	}
	c.Join(m2, initial)
	t1 := time.Now()
	if err := etcdnode.Promote(ctx, cli, "m2", m2.PeerURL); err != nil {
		t.Fatalf("%v\n%s", err, c.Log(m2))
	}
	promoted := time.Since(t1)
	if err := etcdnode.WaitHealthy(ctx, m2.ClientURL, c.TLS); err != nil {
		t.Fatal(err)
	}
	ms, _ = etcdnode.List(ctx, cli)
	voters := 0
	for _, m := range ms {
		if !m.Learner && m.Name != "" {
			voters++
		}
	}
	if voters != 3 {
		t.Fatalf("members after rejoin: %+v", ms)
	}
	if d := check(t, c, "m0", quorum.Restart); !d.OK {
		t.Errorf("restart once m2 is back: %+v", d)
	}
	t.Logf("initial cluster %s; learner promoted %v after its start", initial, promoted.Round(time.Millisecond))
}
