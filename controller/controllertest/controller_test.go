package controllertest

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"keel/controller/api"
	"keel/internal/testenv/controllerproc"
	"keel/internal/testenv/keelsim"
	"keel/upgrade"
)

// watch samples the fleet's own truth every 10 ms: how many control-plane nodes and workers
// are out of service (an upgrade in flight, or rebooting), and the worst seen.
type watch struct {
	e                   *env
	conc                int
	mu                  sync.Mutex
	maxCP, maxW         int
	cpBesideWorkers     bool
	firstCPOut, lastOut time.Time
	stop                chan struct{}
	done                chan struct{}
}

func (e *env) watch(conc int) *watch {
	w := &watch{e: e, conc: conc, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			cp, wk := 0, 0
			for name, n := range e.nodes {
				f := n.Facts()
				if f.Down || f.Record.Current.OutOfService() {
					if strings.HasPrefix(name, "cp") {
						cp++
					} else {
						wk++
					}
				}
			}
			w.mu.Lock()
			w.maxCP, w.maxW = max(w.maxCP, cp), max(w.maxW, wk)
			if cp > 0 && wk > 0 {
				w.cpBesideWorkers = true
			}
			if cp+wk > 0 {
				if w.firstCPOut.IsZero() {
					w.firstCPOut = time.Now()
				}
				w.lastOut = time.Now()
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *watch) end() {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.maxCP > 1 || w.maxW > w.conc || w.cpBesideWorkers {
		w.e.t.Errorf("out of service at once: up to %d control-plane nodes, %d workers (concurrency %d); a control-plane node beside workers: %v", w.maxCP, w.maxW, w.conc, w.cpBesideWorkers)
	}
}

// eventsUntil is the plan's events once each reason of want is among them at least that many
// times, or after a minute: the recorder sends each Event from its own goroutine, so the
// plan's last (PlanDone, PlanHalted) may land before a node's from the same pass.
func (e *env) eventsUntil(plan string, want map[string]int) map[string]int {
	reached := func(ev map[string]int) bool {
		for r, n := range want {
			if ev[r] < n {
				return false
			}
		}
		return true
	}
	ev := e.events(plan)
	for deadline := time.Now().Add(time.Minute); !reached(ev) && time.Now().Before(deadline); ev = e.events(plan) {
		time.Sleep(200 * time.Millisecond)
	}
	return ev
}

// events counts the plan's Events by reason: its own, and its nodes' (which regard the Node
// and name the plan as related).
func (e *env) events(plan string) map[string]int {
	var l eventsv1.EventList
	if err := e.c.List(context.Background(), &l); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int{}
	for _, ev := range l.Items {
		if ev.Regarding.Name == plan && ev.Regarding.Kind == api.Kind || ev.Related != nil && ev.Related.Name == plan && ev.Related.Kind == api.Kind {
			out[ev.Reason] += max(1, int(ev.DeprecatedCount))
			if ev.Series != nil {
				out[ev.Reason] += int(ev.Series.Count) - 1
			}
		}
	}
	return out
}

// TestRolloutWithFailover: the control plane first, one at a time, then the workers by the
// plan's concurrency; two replicas of the controller, the leader killed (SIGKILL, no hand-over)
// mid-rollout: the other resumes from the nodes' records and the plan's status, no node is
// upgraded twice, and never more nodes are out of service than the plan allows.
// KEEL_SIM_NODES sets the fleet's size (default 200; the README's figures are at 1,000) and
// KEEL_SIM_STEP each simulated effect's time (default 40ms).
func TestRolloutWithFailover(t *testing.T) {
	workers := 197
	if v, err := strconv.Atoi(os.Getenv("KEEL_SIM_NODES")); err == nil && v > 3 {
		workers = v - 3
	}
	const cps = 3
	conc := 25
	if v, err := strconv.Atoi(os.Getenv("KEEL_SIM_CONCURRENCY")); err == nil && v > 0 {
		conc = v
	}
	step := 40 * time.Millisecond
	if v, err := time.ParseDuration(os.Getenv("KEEL_SIM_STEP")); err == nil {
		step = v
	}
	e := newEnv(t, fleet{cps: cps, workers: workers, step: step, reboot: 300 * time.Millisecond})
	a := e.startController("a")
	b := e.startController("b")
	var leader, other *controllerproc.Proc
	for deadline := time.Now().Add(30 * time.Second); leader == nil; time.Sleep(100 * time.Millisecond) {
		switch {
		case a.Leads():
			leader, other = a, b
		case b.Leads():
			leader, other = b, a
		case time.Now().After(deadline):
			t.Fatal("no replica leads after 30 s")
		}
	}
	if other.Leads() {
		t.Fatal("both replicas lead")
	}
	w := e.watch(conc)
	start := time.Now()
	e.plan("fleet", api.UpgradePlanSpec{Image: "registry.test/keel:v2.0.0", Concurrency: conc})
	total := cps + workers
	e.waitPlan("fleet", 5*time.Minute, "a third done", func(s api.UpgradePlanStatus) bool { return s.Done >= total/3 })
	leader.Kill()
	killed := time.Now()
	for !other.Leads() {
		if time.Since(killed) > 30*time.Second {
			t.Fatal("the other replica did not take over within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	takeover := time.Since(killed)
	t.Logf("leader killed with %d/%d done; the other replica leads %.1f s later", e.get("fleet").Status.Done, total, takeover.Seconds())
	st := e.waitPlan("fleet", 10*time.Minute, "Done", func(s api.UpgradePlanStatus) bool { return s.Phase == "Done" })
	took := time.Since(start)
	w.end()
	if st.Done != total || st.Total != total || st.Target != "v2.0.0" || st.StartedAt == nil || st.FinishedAt == nil {
		t.Errorf("status: %+v", st)
	}
	var per []time.Duration
	for name, n := range e.nodes {
		f := n.Facts()
		if f.Version != "v2.0.0" || f.Upgrades != 1 || f.Boots != 2 {
			t.Errorf("%s: version %s after %d upgrades and %d boots, want v2.0.0 after 1 and 2", name, f.Version, f.Upgrades, f.Boots)
			continue
		}
		u := f.Record.Current
		if u == nil || u.State != upgrade.Done || u.Uncordon {
			t.Errorf("%s: record %+v", name, u)
			continue
		}
		per = append(per, u.FinishedAt.Sub(u.RequestedAt))
	}
	var sum time.Duration
	for _, d := range per {
		sum += d
	}
	mean := sum / time.Duration(max(1, len(per)))
	ideal := time.Duration(cps+(workers+conc-1)/conc) * mean
	// The figures (not asserts: a rollout's length is a measurement, not a contract here).
	t.Logf("%d nodes (%d control plane, concurrency %d): rollout %.1f s, %.1f s without the takeover; a node's upgrade %.2f s (mean, request → done, from the records); ideal (3 + ceil(workers/c)) × per node = %.1f s: %.2f×",
		total, cps, conc, took.Seconds(), (took - takeover).Seconds(), mean.Seconds(), ideal.Seconds(), float64(took-takeover)/float64(ideal))
	waves := cps + (workers+conc-1)/conc
	over := (took - takeover - ideal) / time.Duration(waves)
	t.Logf("the controller's time per wave beyond the nodes' own: %.2f s (%d waves); at a node upgrade of 3 min that is %.3f×", over.Seconds(), waves, float64(3*time.Minute+over)/float64(3*time.Minute))
	ev := e.eventsUntil("fleet", map[string]int{"PlanDone": 1, "UpgradeStarted": total - 2*conc, "NodeUpgraded": total - 2*conc})
	// Events are best effort: a replica killed with Events queued loses them (at most a
	// wave's starts and ends); the one that takes over reports what changed since the status
	// it reads, and a node whose status write the kill lost is reported again.
	if ev["UpgradeStarted"] < total-2*conc || ev["NodeUpgraded"] < total-2*conc || ev["PlanDone"] != 1 {
		t.Errorf("events: %v", ev)
	}
	t.Logf("events: %v", ev)
	if v, _ := other.Metric(`keel_upgradeplan_nodes{phase="upgraded",plan="fleet"}`); int(v) != total {
		t.Errorf("metric keel_upgradeplan_nodes upgraded = %v, want %d", v, total)
	}
	rsum, _ := other.Metric(`controller_runtime_reconcile_time_seconds_sum{controller="upgradeplan"}`)
	rcount, _ := other.Metric(`controller_runtime_reconcile_time_seconds_count{controller="upgradeplan"}`)
	t.Logf("surviving replica: %.0f passes, %.0f ms each on average", rcount, 1000*rsum/max(rcount, 1))
	reqs, _ := other.Metric("rest_client_requests_total")
	cpu, rss := other.Stats()
	t.Logf("surviving replica: %.0f API requests in %.0f s as leader (%.1f/s), CPU %.1f s, peak RSS %d MiB", reqs, time.Since(killed).Seconds(), reqs/time.Since(killed).Seconds(), cpu.Seconds(), rss>>20)
}

// TestFailureHalts: an image whose trial fails halts the plan at the first worker with its
// record's reason, the node back on its old version and uncordoned, the rest untouched; a
// spec edit naming a good image resumes it, and the failed node is tried again.
func TestFailureHalts(t *testing.T) {
	e := newEnv(t, fleet{cps: 0, workers: 6, step: 40 * time.Millisecond, reboot: 300 * time.Millisecond,
		faults: map[string]keelsim.Fault{"v3.0.0": keelsim.FailGate}})
	e.startController("a")
	w := e.watch(1)
	e.plan("bad", api.UpgradePlanSpec{Image: "registry.test/keel:v3.0.0", Concurrency: 1})
	st := e.waitPlan("bad", 2*time.Minute, "Halted", func(s api.UpgradePlanStatus) bool { return s.Phase == "Halted" })
	halted := time.Now()
	if !strings.Contains(st.Message, "node w0000 failed: rolled-back") || !strings.Contains(st.Message, "kubernetes-ready") {
		t.Errorf("halted with %q", st.Message)
	}
	f := e.nodes["w0000"].Facts()
	u := f.Record.Current
	if u == nil || u.State != upgrade.RolledBack || f.Version != "v1.0.0" {
		t.Fatalf("w0000: %s, record %+v", f.Version, u)
	}
	// The halt's delay: from the record's end (the node's clock is this machine's) to the
	// status the test read first.
	t.Logf("halted %.2f s after w0000's record ended (%s); poll 250 ms, status read every 50 ms", halted.Sub(u.FinishedAt).Seconds(), st.Message)
	node, err := e.cs.CoreV1().Nodes().Get(context.Background(), "w0000", metav1.GetOptions{})
	if err != nil || node.Spec.Unschedulable {
		t.Errorf("w0000 still cordoned: %v", err)
	}
	time.Sleep(time.Second) // a few passes: nothing else starts
	for _, name := range e.names[1:] {
		if f := e.nodes[name].Facts(); f.Upgrades != 0 {
			t.Errorf("%s was asked to upgrade after the halt", name)
		}
	}
	if ev := e.eventsUntil("bad", map[string]int{"NodeFailed": 1, "PlanHalted": 1}); ev["NodeFailed"] != 1 || ev["PlanHalted"] != 1 {
		t.Errorf("events %v", ev)
	}
	e.edit("bad", func(s *api.UpgradePlanSpec) { s.Image = "registry.test/keel:v2.0.0" })
	e.waitPlan("bad", 2*time.Minute, "Done after the fix", func(s api.UpgradePlanStatus) bool { return s.Phase == "Done" })
	w.end()
	for _, name := range e.names {
		f := e.nodes[name].Facts()
		want := 1
		if name == "w0000" {
			want = 2
		}
		if f.Version != "v2.0.0" || f.Upgrades != want {
			t.Errorf("%s: %s after %d upgrades, want v2.0.0 after %d", name, f.Version, f.Upgrades, want)
		}
	}
}

// TestWindows: a plan outside its maintenance window starts nothing and says when the next
// opens; a window that contains now lets it roll.
func TestWindows(t *testing.T) {
	e := newEnv(t, fleet{workers: 3, step: 20 * time.Millisecond, reboot: 100 * time.Millisecond})
	e.startController("a")
	now := time.Now().UTC()
	hm := func(t time.Time) string { return t.Format("15:04") }
	closed := api.Window{Start: hm(now.Add(3 * time.Hour)), End: hm(now.Add(4 * time.Hour)), TimeZone: "UTC"}
	e.plan("nightly", api.UpgradePlanSpec{Image: "registry.test/keel:v2.0.0", Windows: []api.Window{closed}})
	st := e.waitPlan("nightly", time.Minute, "Waiting", func(s api.UpgradePlanStatus) bool { return s.Phase == "Waiting" })
	if !strings.Contains(st.Message, "outside the maintenance windows; the next opens at") {
		t.Errorf("waiting with %q", st.Message)
	}
	time.Sleep(time.Second)
	for _, name := range e.names {
		if f := e.nodes[name].Facts(); f.Upgrades != 0 {
			t.Fatalf("%s upgraded outside the window", name)
		}
	}
	// A window in Berlin's clock around now.
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	e.edit("nightly", func(s *api.UpgradePlanSpec) {
		s.Windows = []api.Window{{Start: hm(now.In(loc).Add(-time.Hour)), End: hm(now.In(loc).Add(time.Hour)), TimeZone: "Europe/Berlin"}}
	})
	e.waitPlan("nightly", 2*time.Minute, "Done inside the window", func(s api.UpgradePlanStatus) bool { return s.Phase == "Done" })
}

// TestStagedRollout: a staged plan has its nodes write their slot in service ahead of their
// turn, also outside the maintenance window, at most stageConcurrency at once; once the
// window opens, each turn only cordons, drains, stops and reboots (each node's time out of
// service, activation → done, is logged from its record).
func TestStagedRollout(t *testing.T) {
	const workers, conc, stageConc = 12, 3, 4
	e := newEnv(t, fleet{cps: 1, workers: workers, step: 60 * time.Millisecond, reboot: 200 * time.Millisecond})
	e.startController("a")
	w := e.watch(conc)
	now := time.Now().UTC()
	hm := func(t time.Time) string { return t.Format("15:04") }
	closed := []api.Window{{Start: hm(now.Add(3 * time.Hour)), End: hm(now.Add(4 * time.Hour))}}
	e.plan("staged", api.UpgradePlanSpec{Image: "registry.test/keel:v2.0.0", Concurrency: conc, Stage: true, StageConcurrency: stageConc, Windows: closed})
	maxStaging := 0
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		staged, staging := 0, 0
		for _, n := range e.nodes {
			f := n.Facts()
			switch u := f.Record.Current; {
			case u != nil && u.State == upgrade.Staged:
				staged++
			case u != nil && (u.State == upgrade.Staging || u.State == upgrade.Pulling):
				staging++
			case f.Upgrades > 0:
				t.Fatalf("a node left staging outside the window: %+v", u)
			}
		}
		maxStaging = max(maxStaging, staging)
		if staged == workers+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d staged after 2 min", staged, workers+1)
		}
	}
	if maxStaging > stageConc {
		t.Errorf("%d nodes staging at once, stageConcurrency %d", maxStaging, stageConc)
	}
	st := e.get("staged").Status
	if st.Phase != "Waiting" || !strings.Contains(st.Message, "outside the maintenance windows") {
		t.Errorf("all staged outside the window: %s %q", st.Phase, st.Message)
	}
	e.edit("staged", func(s *api.UpgradePlanSpec) { s.Windows = nil })
	e.waitPlan("staged", 3*time.Minute, "Done", func(s api.UpgradePlanStatus) bool { return s.Phase == "Done" })
	w.end()
	var out time.Duration
	for name, n := range e.nodes {
		f := n.Facts()
		u := f.Record.Current
		if f.Version != "v2.0.0" || f.Upgrades != 1 || u == nil || !u.Stage || u.ActivatedAt.IsZero() || u.State != upgrade.Done {
			t.Fatalf("%s: %s after %d upgrades, record %+v", name, f.Version, f.Upgrades, u)
		}
		out += u.FinishedAt.Sub(u.ActivatedAt)
	}
	ev := e.eventsUntil("staged", map[string]int{"StagingStarted": workers + 1, "NodeStaged": workers + 1, "UpgradeStarted": workers + 1, "PlanDone": 1})
	if ev["StagingStarted"] != workers+1 || ev["NodeStaged"] != workers+1 || ev["UpgradeStarted"] != workers+1 || ev["PlanDone"] != 1 {
		t.Errorf("events %v", ev)
	}
	t.Logf("%d nodes staged (at most %d at once); out of service per node %.2f s (activation → done, mean)", workers+1, maxStaging, out.Seconds()/float64(workers+1))
}
