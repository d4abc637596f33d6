package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"keel/controller/api"
	"keel/netapi"
	"keel/netapi/client"
	"keel/upgrade"
)

// simNode is a node at the API level, time-scaled: an upgrade takes upTicks passes (the last
// rebootTicks of them unreachable, as a node rebooting into its new slot), then health
// takes healthTicks more. A simulation: a cluster of 1,000 real nodes does not fit here.
type simNode struct {
	version  string
	rec      *upgrade.Upgrade
	left     int // ticks until the upgrade in flight ends
	unhealty int // ticks until healthy after it ended
	down     int // ticks its status does not answer (a slow node)
	fail     bool
	calls    int
	cp       bool // runs an etcd member: its status says so
}

type simFleet struct {
	nodes                     map[string]*simNode
	upTicks, rebootTicks, hTk int
	stageTicks                int // of upTicks, what a staged upgrade does in service
	target                    string
	seq                       int
	activations, cancels      int
}

func (f *simFleet) Status(_ context.Context, name string) (netapi.Status, error) {
	n := f.nodes[name]
	if n.rec.OutOfService() && n.left <= f.rebootTicks || n.down > 0 {
		return netapi.Status{}, errors.New("connection refused")
	}
	st := netapi.Status{Version: n.version, ControlPlane: n.cp}
	if n.rec != nil {
		r := *n.rec
		st.Upgrade = &r
	}
	return st, nil
}

func (f *simFleet) Upgrade(_ context.Context, name string, req netapi.UpgradeRequest) (string, error) {
	n := f.nodes[name]
	if n.rec != nil && !n.rec.State.Terminal() {
		return "", errors.New("409: an upgrade is in progress")
	}
	n.calls++
	f.seq++
	n.rec = &upgrade.Upgrade{ID: fmt.Sprintf("u%d", f.seq), State: upgrade.Pulling, Image: req.Image, ToVersion: f.target}
	n.left = f.upTicks
	if req.Stage {
		n.rec.Stage, n.rec.State, n.left = true, upgrade.Staging, f.stageTicks
	}
	return n.rec.ID, nil
}

func (f *simFleet) Activate(_ context.Context, name, id string) (string, error) {
	n := f.nodes[name]
	if n.rec == nil || n.rec.State != upgrade.Staged || id != "" && id != n.rec.ID {
		return "", &client.NodeError{Node: name, Status: 409, Code: "conflict", Msg: "no staged upgrade to activate"}
	}
	n.rec.State, n.left = upgrade.Cordoning, f.upTicks-f.stageTicks
	f.activations++
	return n.rec.ID, nil
}

func (f *simFleet) Cancel(_ context.Context, name string) error {
	n := f.nodes[name]
	if n.rec == nil || !(n.rec.State == upgrade.Staging || n.rec.State == upgrade.Staged || n.rec.State == upgrade.Pulling) {
		return &client.NodeError{Node: name, Status: 409, Code: "conflict", Msg: "too late to cancel"}
	}
	n.rec.State, n.rec.Reason = upgrade.Aborted, "discarded: by operator"
	f.cancels++
	return nil
}

func (f *simFleet) Healthy(_ context.Context, name string, _ netapi.Status) (bool, string) {
	if n := f.nodes[name]; n.unhealty > 0 {
		return false, "pods not Ready"
	}
	return true, ""
}

// tick advances every node one step.
func (f *simFleet) tick() {
	for _, n := range f.nodes {
		switch {
		case n.rec != nil && n.rec.State == upgrade.Staged:
		case n.rec != nil && n.rec.State == upgrade.Staging:
			if n.left--; n.left == 0 {
				n.rec.State = upgrade.Staged
			}
		case n.rec != nil && !n.rec.State.Terminal():
			if n.left--; n.left == 0 {
				if n.fail {
					n.rec.State, n.rec.Reason = upgrade.RolledBack, "health gate failed: kubernetes-ready"
				} else {
					n.rec.State, n.version, n.unhealty = upgrade.Done, f.target, f.hTk
				}
			} else {
				n.rec.State = upgrade.Writing
			}
		case n.unhealty > 0:
			n.unhealty--
		}
		if n.down > 0 {
			n.down--
		}
	}
}

// outOfService counts, from the nodes' own truth, control-plane and worker nodes not in service.
func (f *simFleet) outOfService(cps map[string]bool) (cp, workers int) {
	for name, n := range f.nodes {
		if n.rec.OutOfService() || n.rec != nil && n.rec.State == upgrade.Done && n.unhealty > 0 {
			if cps[name] {
				cp++
			} else {
				workers++
			}
		}
	}
	return
}

func newFleet(cps, workers int) (*simFleet, []Node, map[string]bool) {
	f := &simFleet{nodes: map[string]*simNode{}, upTicks: 6, rebootTicks: 2, hTk: 2, stageTicks: 3, target: "v2"}
	var nodes []Node
	isCP := map[string]bool{}
	for i := 0; i < cps+workers; i++ {
		name := fmt.Sprintf("w%04d", i)
		if i < cps {
			name = fmt.Sprintf("cp%d", i)
			isCP[name] = true
		}
		f.nodes[name] = &simNode{version: "v1", cp: i < cps}
		nodes = append(nodes, Node{Name: name, ControlPlane: i < cps})
	}
	return f, nodes, isCP
}

// TestRolloutAtScale: 3 control-plane nodes and 1,000 workers from v1 to v2 at concurrency
// 50. At every pass: never more than 50 workers and 1 control-plane node out of service,
// control plane alone and first; every node upgraded exactly once; the rollout takes within
// 1.1× of ceil(N / concurrency) × the per-node time.
func TestRolloutAtScale(t *testing.T) {
	const cps, workers, conc = 3, 1000, 50
	f, nodes, isCP := newFleet(cps, workers)
	spec := api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: conc}
	var st api.UpgradePlanStatus
	ctx := context.Background()
	passes := 0
	t0 := time.Now()
	for ; st.Phase != "Done"; passes++ {
		if passes > 10000 {
			t.Fatalf("no end: %+v", st.Message)
		}
		st = Pass(ctx, Plan{Spec: spec, Generation: 1, Target: Target{Image: spec.Image, Version: "v2"}}, nodes, st, f, f, time.Now())
		cp, w := f.outOfService(isCP)
		cpLeft := false
		for name := range isCP {
			if n := f.nodes[name]; n.version != "v2" || n.unhealty > 0 {
				cpLeft = true
			}
		}
		if cp > 1 || w > conc || cpLeft && w > 0 {
			t.Fatalf("pass %d: %d control-plane and %d workers out of service", passes, cp, w)
		}
		f.tick()
	}
	for name, n := range f.nodes {
		if n.calls != 1 || n.version != "v2" {
			t.Fatalf("%s: %d upgrade calls, version %s", name, n.calls, n.version)
		}
	}
	// Per node: from the request to the pass that sees it healthy (and starts the next).
	per := f.upTicks + f.hTk
	ideal := cps*per + (workers+conc-1)/conc*per
	ratio := float64(passes) / float64(ideal)
	t.Logf("%d nodes in %d passes (ideal %d: %.3f×); %d passes took %s (%.1f ms each)", cps+workers, passes, ideal, ratio, passes, time.Since(t0).Round(time.Millisecond), float64(time.Since(t0).Milliseconds())/float64(passes))
	if ratio > 1.1 {
		t.Errorf("rollout took %.2f× the ideal", ratio)
	}
	if st.Done != cps+workers || st.Total != cps+workers {
		t.Errorf("status: done %d of %d", st.Done, st.Total)
	}
}

// TestRolloutStaged: with staging, nodes write their slot in service ahead of their turn,
// at most stageConcurrency at once; a turn only activates a staged node. The bounds hold as
// without staging, every node is asked once and activated once, and the rollout is shorter by
// the staged part of each turn.
func TestRolloutStaged(t *testing.T) {
	const cps, workers, conc, stageConc = 3, 200, 10, 30
	run := func(stage bool) int {
		f, nodes, isCP := newFleet(cps, workers)
		spec := api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: conc, Stage: stage, StageConcurrency: stageConc}
		var st api.UpgradePlanStatus
		passes := 0
		for ; st.Phase != "Done"; passes++ {
			if passes > 5000 || st.Phase == "Halted" || st.Phase == "Invalid" {
				t.Fatalf("stage %v: pass %d: %s %q", stage, passes, st.Phase, st.Message)
			}
			st = Pass(context.Background(), Plan{Spec: spec, Generation: 1, Target: Target{Image: spec.Image, Version: "v2"}}, nodes, st, f, f, time.Now())
			cp, w := f.outOfService(isCP)
			cpLeft, staging := false, 0
			for name, n := range f.nodes {
				if isCP[name] && (n.version != "v2" || n.unhealty > 0) {
					cpLeft = true
				}
				if n.rec != nil && n.rec.State == upgrade.Staging {
					staging++
				}
			}
			if cp > 1 || w > conc || cpLeft && w > 0 || staging > stageConc {
				t.Fatalf("stage %v, pass %d: %d control-plane and %d workers out of service, %d staging", stage, passes, cp, w, staging)
			}
			f.tick()
		}
		for name, n := range f.nodes {
			if n.calls != 1 || n.version != "v2" {
				t.Fatalf("%s: %d upgrade calls, version %s", name, n.calls, n.version)
			}
		}
		if want := 0; stage && f.activations != cps+workers || !stage && f.activations != want {
			t.Fatalf("stage %v: %d activations", stage, f.activations)
		}
		return passes
	}
	whole, staged := run(false), run(true)
	t.Logf("%d nodes at concurrency %d: %d passes whole, %d staged (%.2f×)", cps+workers, conc, whole, staged, float64(staged)/float64(whole))
	if staged >= whole {
		t.Errorf("staging saved nothing: %d passes staged, %d whole", staged, whole)
	}
}

// TestStagedForAnEarlierTarget: nodes this plan staged for v2 are discarded when the target
// becomes v3 (not activated into v2, not counted as failed), staged again, and the plan ends
// on v3.
func TestStagedForAnEarlierTarget(t *testing.T) {
	f, nodes, _ := newFleet(0, 4)
	spec := api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: 1, Stage: true, StageConcurrency: 4}
	p := Plan{Spec: spec, Generation: 1, Target: Target{Image: spec.Image, Version: "v2"}}
	var st api.UpgradePlanStatus
	for i := 0; i < 2*f.stageTicks+2; i++ { // everything staged, one activated perhaps
		st = Pass(context.Background(), p, nodes, st, f, f, time.Now())
		f.tick()
	}
	staged := 0
	for _, n := range f.nodes {
		if n.rec != nil && n.rec.State == upgrade.Staged {
			staged++
		}
	}
	if staged == 0 {
		t.Fatalf("nothing staged: %+v", st)
	}
	f.target = "v3"
	p.Spec.Image, p.Target, p.Generation = "r/keel:v3", Target{Image: "r/keel:v3", Version: "v3"}, 2
	for pass := 0; st.Phase != "Done"; pass++ {
		if pass > 500 || st.Phase == "Halted" {
			t.Fatalf("pass %d: %s %q", pass, st.Phase, st.Message)
		}
		st = Pass(context.Background(), p, nodes, st, f, f, time.Now())
		f.tick()
	}
	for name, n := range f.nodes {
		if n.version != "v3" || n.rec.ToVersion != "v3" {
			t.Errorf("%s: on %s, record %+v", name, n.version, n.rec)
		}
	}
	if f.cancels == 0 {
		t.Error("nothing staged for v2 was discarded")
	}
}

// TestControlPlaneByItsOwnWord: control-plane nodes whose Node objects carry no role label
// are known by their own status, and remembered while they reboot (unreachable): no worker
// starts beside one, and they go one at a time.
func TestControlPlaneByItsOwnWord(t *testing.T) {
	f, nodes, isCP := newFleet(3, 10)
	for i := range nodes {
		nodes[i].ControlPlane = false
	}
	spec := api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: 5}
	var st api.UpgradePlanStatus
	for passes := 0; st.Phase != "Done"; passes++ {
		if passes > 1000 {
			t.Fatalf("no end: %+v", st.Message)
		}
		st = Pass(context.Background(), Plan{Spec: spec, Generation: 1, Target: Target{Image: spec.Image, Version: "v2"}}, nodes, st, f, f, time.Now())
		cp, w := f.outOfService(isCP)
		cpLeft := false
		for name := range isCP {
			if n := f.nodes[name]; n.version != "v2" || n.unhealty > 0 {
				cpLeft = true
			}
		}
		if cp > 1 || cpLeft && w > 0 {
			t.Fatalf("pass %d: %d control-plane and %d workers out of service", passes, cp, w)
		}
		f.tick()
	}
	for _, n := range st.Nodes {
		if n.ControlPlane != isCP[n.Name] {
			t.Errorf("%s: control plane %v in the status", n.Name, n.ControlPlane)
		}
	}
}

// TestDoneNeverGoesBack: the plan's done count does not fall when nodes that passed their
// gates are briefly unhealthy again (pods displaced by another node's drain) or do not answer
// (a slow node): every few passes each such node is one or the other for a while.
func TestDoneNeverGoesBack(t *testing.T) {
	f, nodes, _ := newFleet(3, 4)
	spec := api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: 1}
	var st api.UpgradePlanStatus
	last, dips := 0, 0
	for passes := 0; st.Phase != "Done"; passes++ {
		if passes > 1000 {
			t.Fatalf("no end: %+v", st.Message)
		}
		st = Pass(context.Background(), Plan{Spec: spec, Generation: 1, Target: Target{Image: spec.Image, Version: "v2"}}, nodes, st, f, f, time.Now())
		if st.Done < last {
			t.Fatalf("pass %d: done %d after %d", passes, st.Done, last)
		}
		last = st.Done
		if passes%3 == 0 && passes < 60 {
			for _, n := range f.nodes {
				if n.rec != nil && n.rec.State == upgrade.Done && n.unhealty == 0 && n.down == 0 {
					if dips%2 == 0 {
						n.unhealty = 2
					} else {
						n.down = 2
					}
					dips++
				}
			}
		}
		f.tick()
	}
	if st.Done != len(nodes) || dips == 0 {
		t.Fatalf("done %d of %d; %d dips made", st.Done, len(nodes), dips)
	}
}

// TestRolloutHaltsAndResumes: a worker whose upgrade rolls back halts the plan within one
// pass, naming the node and its record's reason; nothing starts after; the nodes in flight
// finish. Editing the spec resumes it: the failed node is tried again, and a node that was
// upgraded is never asked again.
func TestRolloutHaltsAndResumes(t *testing.T) {
	f, nodes, _ := newFleet(1, 20)
	f.nodes["w0007"].fail = true
	spec := api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: 4}
	p := Plan{Spec: spec, Generation: 1, Target: Target{Image: spec.Image, Version: "v2"}}
	var st api.UpgradePlanStatus
	ctx := context.Background()
	halted := -1
	for pass := 0; pass < 200 && halted < 0; pass++ {
		st = Pass(ctx, p, nodes, st, f, f, time.Now())
		if st.Phase == "Halted" {
			halted = pass
			break
		}
		f.tick()
		if n := f.nodes["w0007"]; n.rec != nil && n.rec.State == upgrade.RolledBack {
			// The very next pass must halt.
			st = Pass(ctx, p, nodes, st, f, f, time.Now())
			if st.Phase != "Halted" {
				t.Fatalf("the pass after the rollback: %s %s", st.Phase, st.Message)
			}
			halted = pass
		}
	}
	if halted < 0 || st.Message != "node w0007 failed: rolled-back: health gate failed: kubernetes-ready" {
		t.Fatalf("halt: %d %q", halted, st.Message)
	}
	calls := 0
	for _, n := range f.nodes {
		calls += n.calls
	}
	// Halted passes start nothing while those in flight finish.
	for i := 0; i < 20; i++ {
		f.tick()
		st = Pass(ctx, p, nodes, st, f, f, time.Now())
		if st.Phase != "Halted" {
			t.Fatalf("after the halt: %s", st.Phase)
		}
	}
	after := 0
	for _, n := range f.nodes {
		after += n.calls
	}
	if after != calls {
		t.Fatalf("%d upgrades started after the halt", after-calls)
	}
	// Resume: the operator fixed what failed (here: the node) and edited the spec (a new
	// generation), same target: the failed node is tried again, the rest are not.
	f.nodes["w0007"].fail = false
	p.Generation = 2
	for pass := 0; st.Phase != "Done"; pass++ {
		if pass > 500 {
			t.Fatalf("no end after resuming: %s", st.Message)
		}
		st = Pass(ctx, p, nodes, st, f, f, time.Now())
		f.tick()
	}
	for name, n := range f.nodes {
		want := 1
		if name == "w0007" {
			want = 2
		}
		if n.version != "v2" || n.calls != want {
			t.Errorf("%s on %s after %d upgrade calls, want v2 after %d", name, n.version, n.calls, want)
		}
	}
}

// TestChannelMovesOn: a channel plan halted on its target resumes, without a spec edit, when
// the channel's newer release becomes the target; every node ends on it, the halted one and
// those already on the old target upgraded once more, none more.
func TestChannelMovesOn(t *testing.T) {
	f, nodes, _ := newFleet(1, 12)
	f.nodes["w0005"].fail = true
	spec := api.UpgradePlanSpec{Channel: "r/keel", Concurrency: 3}
	p := Plan{Spec: spec, Generation: 1, Target: Target{Image: "r/keel:v2@sha256:aa", Version: "v2"}}
	var st api.UpgradePlanStatus
	ctx := context.Background()
	for pass := 0; st.Phase != "Halted"; pass++ {
		if pass > 200 {
			t.Fatalf("no halt: %s %s", st.Phase, st.Message)
		}
		st = Pass(ctx, p, nodes, st, f, f, time.Now())
		f.tick()
	}
	for i := 0; i < 20; i++ { // the same target: halted it stays, those in flight end
		f.tick()
		if st = Pass(ctx, p, nodes, st, f, f, time.Now()); st.Phase != "Halted" {
			t.Fatalf("halted plan, same target: %s", st.Phase)
		}
	}
	onV2 := map[string]bool{}
	for name, n := range f.nodes {
		onV2[name] = n.version == "v2"
	}
	// The channel's v3 (which does not fail) becomes the target; the generation is the same.
	f.target, f.nodes["w0005"].fail = "v3", false
	p.Target = Target{Image: "r/keel:v3@sha256:bb", Version: "v3"}
	for pass := 0; st.Phase != "Done"; pass++ {
		if pass > 500 {
			t.Fatalf("no end on the new target: %s %s", st.Phase, st.Message)
		}
		st = Pass(ctx, p, nodes, st, f, f, time.Now())
		f.tick()
	}
	if st.Target != "v3" || st.Image != "r/keel:v3@sha256:bb" {
		t.Errorf("status target %s image %s", st.Target, st.Image)
	}
	for name, n := range f.nodes {
		want := 1
		if onV2[name] || name == "w0005" {
			want = 2
		}
		if n.version != "v3" || n.calls != want || n.rec.Image != p.Target.Image {
			t.Errorf("%s on %s after %d calls (last %s), want v3 after %d", name, n.version, n.calls, n.rec.Image, want)
		}
	}
}

// lossyFleet loses the answer to the first upgrade request it takes: the node starts it, the
// controller hears an error (a timeout after the node took the request).
type lossyFleet struct {
	*simFleet
	lost bool
}

func (l *lossyFleet) Upgrade(ctx context.Context, name string, req netapi.UpgradeRequest) (string, error) {
	id, err := l.simFleet.Upgrade(ctx, name, req)
	if err == nil && !l.lost {
		l.lost = true
		return "", errors.New("context deadline exceeded")
	}
	return id, err
}

// TestRolloutAdoptsLostUpgrades: an upgrade the node took but whose answer was lost is still
// this plan's: its failure halts the plan, and nothing is started twice.
func TestRolloutAdoptsLostUpgrades(t *testing.T) {
	sim, nodes, _ := newFleet(0, 3)
	sim.nodes["w0000"].fail = true
	f := &lossyFleet{simFleet: sim}
	p := Plan{Spec: api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: 1}, Generation: 1, Target: Target{Image: "r/keel:v2", Version: "v2"}}
	var st api.UpgradePlanStatus
	for pass := 0; st.Phase != "Halted"; pass++ {
		if pass > 50 {
			t.Fatalf("never halted: %s %+v", st.Phase, st.Nodes)
		}
		st = Pass(context.Background(), p, nodes, st, f, sim, time.Now())
		sim.tick()
	}
	if !strings.Contains(st.Message, "node w0000 failed: rolled-back") || sim.nodes["w0000"].calls != 1 || sim.nodes["w0001"].calls != 0 {
		t.Fatalf("%q; calls %d %d", st.Message, sim.nodes["w0000"].calls, sim.nodes["w0001"].calls)
	}
}

// refusingFleet refuses every upgrade of one node: for good (400), or while its etcd cluster
// cannot spare the member (412, refusals times).
type refusingFleet struct {
	*simFleet
	node     string
	status   int
	refusals int
}

func (r *refusingFleet) Upgrade(ctx context.Context, name string, req netapi.UpgradeRequest) (string, error) {
	if name == r.node && r.status == 400 {
		return "", &client.NodeError{Node: name, Status: 400, Code: "bad_request", Msg: "drain_timeout_s must be 0-3600"}
	}
	if name == r.node && r.refusals > 0 {
		r.refusals--
		return "", &client.NodeError{Node: name, Status: 412, Code: "precondition_failed", Msg: "restarting cp1 leaves 1 of 3 voters healthy, quorum 2; unhealthy voters: cp2"}
	}
	return r.simFleet.Upgrade(ctx, name, req)
}

// staleFleet refuses the first activation of one node as a node does whose staged upgrade can
// never be activated (412 stale_staged: its key expired, a floor raised since the staging).
type staleFleet struct {
	*simFleet
	node    string
	refused bool
}

func (r *staleFleet) Activate(ctx context.Context, name, id string) (string, error) {
	if name == r.node && !r.refused {
		r.refused = true
		return "", &client.NodeError{Node: name, Status: 412, Code: "stale_staged", Msg: "upgrade: refused: the staged upgrade can no longer be activated: signature check: ... expired at ...: discard it (POST /v1/upgrade/cancel)"}
	}
	return r.simFleet.Activate(ctx, name, id)
}

// TestStaleStagedIsDiscarded: a staged upgrade its node refuses to activate for good is
// discarded (not retried each pass, not a failure); the node is staged again and the plan
// finishes with every node upgraded once.
func TestStaleStagedIsDiscarded(t *testing.T) {
	sim, nodes, _ := newFleet(0, 3)
	f := &staleFleet{simFleet: sim, node: "w0001"}
	spec := api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: 1, Stage: true}
	p := Plan{Spec: spec, Generation: 1, Target: Target{Image: spec.Image, Version: "v2"}}
	saw := runUntilDone(t, p, nodes, f, sim, "discarded upgrade")
	if !f.refused || !saw || sim.cancels != 1 || sim.nodes["w0001"].calls != 2 || sim.nodes["w0001"].version != "v2" {
		t.Fatalf("refused %v, discard seen %v, %d cancels, w0001 staged %d times, on %s", f.refused, saw, sim.cancels, sim.nodes["w0001"].calls, sim.nodes["w0001"].version)
	}
}

// runUntilDone passes the plan over fleet (sim's nodes) until it is done, failing on a halt or
// after 200 passes; it says whether the plan's message ever contained msg.
func runUntilDone(t *testing.T, p Plan, nodes []Node, fleet Nodes, sim *simFleet, msg string) bool {
	t.Helper()
	var st api.UpgradePlanStatus
	saw := false
	for pass := 0; st.Phase != "Done"; pass++ {
		if pass > 200 || st.Phase == "Halted" {
			t.Fatalf("pass %d: %s %q", pass, st.Phase, st.Message)
		}
		st = Pass(context.Background(), p, nodes, st, fleet, sim, time.Now())
		if strings.Contains(st.Message, msg) {
			saw = true
		}
		sim.tick()
	}
	return saw
}

// TestQuorumRefusalWaits: a control-plane node refused because its cluster cannot spare the
// member now (412) waits, and goes when the cluster can.
func TestQuorumRefusalWaits(t *testing.T) {
	sim, nodes, _ := newFleet(3, 2)
	f := &refusingFleet{simFleet: sim, node: "cp1", status: 412, refusals: 5}
	p := Plan{Spec: api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: 1}, Generation: 1, Target: Target{Image: "r/keel:v2", Version: "v2"}}
	sawWait := runUntilDone(t, p, nodes, f, sim, "quorum 2")
	if !sawWait || f.refusals != 0 || sim.nodes["cp1"].calls != 1 {
		t.Fatalf("saw the wait %v, refusals left %d, cp1 upgraded %d times", sawWait, f.refusals, sim.nodes["cp1"].calls)
	}
}

// TestRolloutRefusalHalts: a node that refuses its upgrade for good halts the plan (it would
// otherwise take a slot every pass), and stays failed on the next pass; an invalid spec in the
// middle keeps what the plan knew.
func TestRolloutRefusalHalts(t *testing.T) {
	sim, nodes, _ := newFleet(0, 3)
	f := &refusingFleet{simFleet: sim, node: "w0001", status: 400}
	p := Plan{Spec: api.UpgradePlanSpec{Image: "r/keel:v2", Concurrency: 1}, Generation: 1, Target: Target{Image: "r/keel:v2", Version: "v2"}}
	var st api.UpgradePlanStatus
	for pass := 0; st.Phase != "Halted"; pass++ {
		if pass > 50 {
			t.Fatalf("never halted: %s", st.Message)
		}
		st = Pass(context.Background(), p, nodes, st, f, sim, time.Now())
		sim.tick()
	}
	if !strings.Contains(st.Message, "node w0001 failed: upgrade refused") {
		t.Fatalf("%q", st.Message)
	}
	st = Pass(context.Background(), p, nodes, st, f, sim, time.Now())
	if st.Phase != "Halted" || sim.nodes["w0002"].calls != 0 {
		t.Fatalf("the next pass: %s, w0002 calls %d", st.Phase, sim.nodes["w0002"].calls)
	}
	bad := p
	bad.Spec.Concurrency, bad.Generation = -1, 2
	inv := Pass(context.Background(), bad, nodes, st, f, sim, time.Now())
	if inv.Phase != "Invalid" || len(inv.Nodes) != len(st.Nodes) || inv.Nodes[0].UpgradeID != st.Nodes[0].UpgradeID || inv.Nodes[0].UpgradeID == "" {
		t.Fatalf("invalid mid-rollout lost the nodes: %+v", inv)
	}
}

// TestInvalidPlan: a spec that breaks the rules starts nothing and says why.
func TestInvalidPlan(t *testing.T) {
	f, nodes, _ := newFleet(0, 3)
	st := Pass(context.Background(), Plan{Spec: api.UpgradePlanSpec{Concurrency: 2}}, nodes, api.UpgradePlanStatus{}, f, f, time.Now())
	if st.Phase != "Invalid" || st.Message == "" {
		t.Fatalf("%+v", st)
	}
	for _, n := range f.nodes {
		if n.calls != 0 {
			t.Fatal("an invalid plan started an upgrade")
		}
	}
}
