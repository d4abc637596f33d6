package plan

import (
	"errors"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"keel/netapi"
	"keel/upgrade"
)

var monday = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC) // a Monday

func nodes(spec string) []Node {
	// "cp0:done cp1:pending w0:upgrading w1:unhealthy w2:failed"
	var out []Node
	for _, f := range strings.Fields(spec) {
		name, ph, _ := strings.Cut(f, ":")
		n := Node{Name: name, ControlPlane: strings.HasPrefix(name, "cp")}
		switch ph {
		case "done":
			n.Phase, n.Healthy = Upgraded, true
		case "unhealthy":
			n.Phase = Upgraded
		case "failed":
			n.Phase, n.Reason = Failed, "health gate failed: kubernetes-ready"
		case "blocked":
			n.Phase, n.Blocked = Pending, true
		default:
			n.Phase = Phase(ph)
		}
		out = append(out, n)
	}
	return out
}

func TestDecide(t *testing.T) {
	for _, c := range []struct {
		name, nodes string
		spec        Spec
		start       []string
		want        string // Waiting or Halted substring; "done"
	}{
		{"control plane first, one", "w0:pending cp1:pending cp0:pending", Spec{Concurrency: 5}, []string{"cp0"}, ""},
		{"one control-plane node at a time", "cp0:upgrading cp1:pending w0:pending", Spec{Concurrency: 5}, nil, "one at a time"},
		{"a cp node upgraded but not healthy holds the next", "cp0:unhealthy cp1:pending", Spec{}, nil, "one at a time"},
		{"no worker before the control plane is done", "cp0:done cp1:upgrading w0:pending", Spec{Concurrency: 5}, nil, "one at a time"},
		{"a worker out of service holds the control plane", "cp0:pending w0:upgrading", Spec{Concurrency: 5}, nil, "one at a time"},
		{"workers by concurrency", "cp0:done w3:pending w1:pending w0:pending w2:pending", Spec{Concurrency: 2}, []string{"w0", "w1"}, ""},
		{"in flight counts", "cp0:done w0:upgrading w1:unhealthy w2:pending w3:pending", Spec{Concurrency: 3}, []string{"w2"}, ""},
		{"full", "w0:upgrading w1:pending", Spec{Concurrency: 1}, nil, "1 worker(s) out of service, concurrency 1"},
		{"concurrency 0 means 1", "w0:pending w1:pending", Spec{}, []string{"w0"}, ""},
		{"a failure halts", "cp0:done w0:failed w1:pending", Spec{Concurrency: 4}, nil, "node w0 failed: health gate failed"},
		{"paused", "w0:pending", Spec{Paused: true}, nil, "paused"},
		{"done", "cp0:done w0:done", Spec{}, nil, "done"},
		{"last unhealthy is not done", "cp0:done w0:unhealthy", Spec{}, nil, "1 worker(s) out of service, concurrency 1"},
		{"no nodes", "", Spec{}, nil, "done"},
	} {
		d, err := Decide(c.spec, nodes(c.nodes), monday)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := d.Waiting + d.Halted
		if d.Done {
			got = "done"
		}
		if !slices.Equal(d.Start, c.start) || c.want != "" && !strings.Contains(got, c.want) || c.want == "" && got != "" {
			t.Errorf("%s: start %v, %q; want %v, %q", c.name, d.Start, got, c.start, c.want)
		}
	}
}

// TestDecideStaging: with staging, turns go to staged nodes only; pending nodes are staged
// (control plane first) up to the stage concurrency, also outside the windows; paused stages
// nothing.
func TestDecideStaging(t *testing.T) {
	closed := []Window{{Start: "01:00", End: "02:00"}} // monday is 12:00 UTC
	for _, c := range []struct {
		name, nodes  string
		spec         Spec
		start, stage []string
		want         string
	}{
		{"stage the control plane first", "w0:pending cp0:pending cp1:pending", Spec{Stage: true, StageConcurrency: 2}, nil, []string{"cp0", "cp1"}, "staged"},
		{"a staged control-plane node goes", "cp0:staged cp1:staging w0:pending", Spec{Stage: true, StageConcurrency: 2}, []string{"cp0"}, []string{"w0"}, ""},
		{"staging counts against the bound", "cp0:done w0:staging w1:staging w2:pending", Spec{Stage: true, StageConcurrency: 2, Concurrency: 3}, nil, nil, "waiting for workers to be staged"},
		{"bound defaults to concurrency", "cp0:done w0:pending w1:pending w2:pending", Spec{Stage: true, Concurrency: 2}, nil, []string{"w0", "w1"}, "staged"},
		{"staged workers go by concurrency", "cp0:done w0:staged w1:staged w2:staged w3:pending", Spec{Stage: true, Concurrency: 2, StageConcurrency: 1}, []string{"w0", "w1"}, []string{"w3"}, ""},
		{"staged nodes are in service", "cp0:done w0:staged w1:staging w2:upgrading", Spec{Stage: true, Concurrency: 2}, []string{"w0"}, nil, ""},
		{"outside the windows: staged, not started", "cp0:done w0:pending w1:staged", Spec{Stage: true, Concurrency: 2, Windows: closed}, nil, []string{"w0"}, "outside the maintenance windows"},
		{"paused stages nothing", "w0:pending", Spec{Stage: true, Paused: true}, nil, nil, "paused"},
		{"a pending node waits for its stage, not started whole", "cp0:done w0:pending", Spec{Stage: true, StageConcurrency: 1}, nil, []string{"w0"}, "staged"},
		{"a blocked node is neither staged nor started", "cp0:done w0:blocked w1:pending w2:pending", Spec{Stage: true, StageConcurrency: 1}, nil, []string{"w1"}, "staged"},
		{"a blocked node is not started whole", "cp0:done w0:blocked w1:pending", Spec{Concurrency: 2}, []string{"w1"}, nil, ""},
		{"staging turned off: staged nodes still go, pending ones whole", "cp0:done w0:staged w1:pending w2:staging", Spec{Concurrency: 2}, []string{"w0", "w1"}, nil, ""},
	} {
		d, err := Decide(c.spec, nodes(c.nodes), monday)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := d.Waiting + d.Halted
		if !slices.Equal(d.Start, c.start) || !slices.Equal(d.Stage, c.stage) || c.want != "" && !strings.Contains(got, c.want) || c.want == "" && got != "" {
			t.Errorf("%s: start %v stage %v %q; want %v %v %q", c.name, d.Start, d.Stage, got, c.start, c.stage, c.want)
		}
	}
}

func TestWindows(t *testing.T) {
	at := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	weekdays := []time.Weekday{time.Monday, time.Tuesday, time.Wednesday, time.Thursday, time.Friday}
	for _, c := range []struct {
		name string
		ws   []Window
		now  string
		open bool
		next string
	}{
		{"none: always", nil, "2026-11-30T12:00:00Z", true, ""},
		{"inside", []Window{{Start: "10:00", End: "14:00"}}, "2026-11-30T12:00:00Z", true, ""},
		{"end is exclusive", []Window{{Start: "10:00", End: "12:00"}}, "2026-11-30T12:00:00Z", false, "2026-12-01T10:00:00Z"},
		{"before", []Window{{Start: "22:00", End: "04:00"}}, "2026-11-30T12:00:00Z", false, "2026-11-30T22:00:00Z"},
		{"past midnight, opened yesterday", []Window{{Start: "22:00", End: "04:00"}}, "2026-12-01T03:59:00Z", true, ""},
		{"weekdays only: saturday", []Window{{Days: weekdays, Start: "01:00", End: "05:00"}}, "2026-12-05T02:00:00Z", false, "2026-12-07T01:00:00Z"},
		// 02:00-04:00 in Berlin is 01:00-03:00 UTC in winter.
		{"time zone", []Window{{Start: "02:00", End: "04:00", Zone: "Europe/Berlin"}}, "2026-11-30T01:30:00Z", true, ""},
		{"time zone, outside", []Window{{Start: "02:00", End: "04:00", Zone: "Europe/Berlin"}}, "2026-11-30T03:30:00Z", false, "2026-12-01T01:00:00Z"},
		// Summer time: 02:00 Berlin is 00:00 UTC.
		{"time zone in summer", []Window{{Start: "02:00", End: "04:00", Zone: "Europe/Berlin"}}, "2026-07-01T00:30:00Z", true, ""},
		{"second window", []Window{{Start: "01:00", End: "02:00"}, {Start: "11:00", End: "13:00"}}, "2026-11-30T12:00:00Z", true, ""},
	} {
		open, next, err := InWindow(c.ws, at(c.now))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var wantNext time.Time
		if c.next != "" {
			wantNext = at(c.next)
		}
		if open != c.open || !next.Equal(wantNext) {
			t.Errorf("%s: open %v next %v; want %v %v", c.name, open, next, c.open, wantNext)
		}
	}
	// New York springs forward at 02:00 on 2026-03-08: 01:30-02:30 is an hour (02:30 does not
	// exist that night), not a day.
	ny := []Window{{Start: "01:30", End: "02:30", Zone: "America/New_York"}}
	for _, c := range []struct {
		at   string
		open bool
	}{{"2026-03-08T06:45:00Z", true}, {"2026-03-08T12:00:00Z", false}, {"2026-03-08T20:00:00Z", false}} {
		if open, _, _ := InWindow(ny, at(c.at)); open != c.open {
			t.Errorf("DST night, %s: open %v, want %v", c.at, open, c.open)
		}
	}
	for _, bad := range []Window{{Start: "01:00", End: "01:00"}, {Start: "01:00", End: "02:00", Zone: "Local"}, {Start: "24:00", End: "01:00"}, {Start: "1:00", End: "02:00"}, {Start: "01:00", End: "02:60"}, {Start: "01:00", End: "02:00", Zone: "Mars/Olympus"}} {
		if _, _, err := InWindow([]Window{bad}, monday); !errors.Is(err, ErrSpec) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	// A node in flight when the window closes finishes (nothing stops it); the next does not
	// start until the window opens again.
	closed := Spec{Concurrency: 2, Windows: []Window{{Start: "22:00", End: "23:00"}}}
	if d, _ := Decide(closed, nodes("w0:upgrading w1:pending"), monday); len(d.Start) != 0 {
		t.Errorf("closed window started %v", d.Start)
	}
	if d, _ := Decide(closed, nodes("w0:upgrading w1:pending"), monday.Add(10*time.Hour+30*time.Minute)); !slices.Equal(d.Start, []string{"w1"}) {
		t.Errorf("open window: %+v", d)
	}
	// Outside the window nothing starts, and the decision says when it opens.
	d, _ := Decide(Spec{Windows: []Window{{Start: "22:00", End: "23:00"}}}, nodes("w0:pending"), monday)
	if len(d.Start) != 0 || !strings.Contains(d.Waiting, "the next opens at 2026-11-30T22:00:00Z") {
		t.Errorf("outside the window: %+v", d)
	}
}

// TestRandomRollouts drives random fleets through Decide with random outcomes and checks the
// plan's promises at every instant: never more than concurrency workers and one control-plane
// node out of service, never a worker and a control-plane node out together while the control
// plane is not done, nothing started after a failure, and every fleet without failures ends done.
func TestRandomRollouts(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for run := 0; run < 2000; run++ {
		var fleet []Node
		cps, workers := rng.Intn(4), rng.Intn(12)
		for i := 0; i < cps; i++ {
			fleet = append(fleet, Node{Name: "cp" + string(rune('a'+i)), ControlPlane: true, Phase: Pending})
		}
		for i := 0; i < workers; i++ {
			fleet = append(fleet, Node{Name: "w" + string(rune('a'+i)), Phase: Pending})
		}
		conc := rng.Intn(4)
		failAt := -1
		if rng.Intn(4) == 0 && len(fleet) > 0 {
			failAt = rng.Intn(len(fleet))
		}
		for step := 0; ; step++ {
			if step > 1000 {
				t.Fatalf("run %d: no end", run)
			}
			d, err := Decide(Spec{Concurrency: conc}, fleet, monday)
			if err != nil {
				t.Fatal(err)
			}
			if d.Done || d.Halted != "" {
				if d.Halted != "" && failAt < 0 {
					t.Fatalf("run %d: halted without a failure", run)
				}
				break
			}
			for _, name := range d.Start {
				i := slices.IndexFunc(fleet, func(n Node) bool { return n.Name == name })
				if fleet[i].Phase != Pending {
					t.Fatalf("run %d: started %s in phase %s", run, name, fleet[i].Phase)
				}
				fleet[i].Phase = Upgrading
			}
			outCP, outW, cpDone := 0, 0, true
			for _, n := range fleet {
				out := n.Phase == Upgrading || n.Phase == Upgraded && !n.Healthy
				if n.ControlPlane && out {
					outCP++
				} else if out {
					outW++
				}
				if n.ControlPlane && !(n.Phase == Upgraded && n.Healthy) {
					cpDone = false
				}
			}
			if outCP > 1 || outW > max(conc, 1) || !cpDone && outW > 0 {
				t.Fatalf("run %d: %d control-plane and %d workers out of service (concurrency %d)", run, outCP, outW, conc)
			}
			// Time passes: one node in flight moves on.
			var moving []int
			for i, n := range fleet {
				if n.Phase == Upgrading || n.Phase == Upgraded && !n.Healthy {
					moving = append(moving, i)
				}
			}
			if len(moving) == 0 {
				t.Fatalf("run %d: nothing moves and nothing starts: %+v", run, d)
			}
			i := moving[rng.Intn(len(moving))]
			switch {
			case fleet[i].Phase == Upgrading && i == failAt:
				fleet[i].Phase, fleet[i].Reason = Failed, "rolled back"
			case fleet[i].Phase == Upgrading:
				fleet[i].Phase = Upgraded
			default:
				fleet[i].Healthy = true
			}
		}
	}
}

func TestObserve(t *testing.T) {
	rec := func(id string, s upgrade.State, reason string) *upgrade.Upgrade {
		return &upgrade.Upgrade{ID: id, State: s, Reason: reason, Image: "r/keel:v2", ToVersion: "v2"}
	}
	for _, c := range []struct {
		name      string
		st        netapi.Status
		requested string
		want      Phase
		reason    string
	}{
		{"never upgraded", netapi.Status{Version: "v1"}, "", Pending, ""},
		{"ours running", netapi.Status{Version: "v1", Upgrade: rec("u1", upgrade.Draining, "")}, "u1", Upgrading, ""},
		{"someone else's running: out of service all the same", netapi.Status{Version: "v1", Upgrade: rec("x", upgrade.Trial, "")}, "", Upgrading, ""},
		{"done", netapi.Status{Version: "v2", Upgrade: rec("u1", upgrade.Done, "")}, "u1", Upgraded, ""},
		{"already on the target (never started: not upgraded twice)", netapi.Status{Version: "v2"}, "", Upgraded, ""},
		{"ours rolled back", netapi.Status{Version: "v1", Upgrade: rec("u1", upgrade.RolledBack, "health gate failed: etcd")}, "u1", Failed, "rolled-back: health gate failed: etcd"},
		{"ours aborted", netapi.Status{Version: "v1", Upgrade: rec("u1", upgrade.Aborted, "drain: PDB")}, "u1", Failed, "aborted: drain: PDB"},
		{"an older failure does not halt", netapi.Status{Version: "v1", Upgrade: rec("old", upgrade.RolledBack, "x")}, "u1", Pending, ""},
		{"a failure nobody here asked for", netapi.Status{Version: "v1", Upgrade: rec("old", upgrade.Aborted, "x")}, "", Pending, ""},
		{"staging: in service", netapi.Status{Version: "v1", Upgrade: rec("u1", upgrade.Staging, "")}, "u1", Staging, ""},
		{"staged", netapi.Status{Version: "v1", Upgrade: rec("u1", upgrade.Staged, "")}, "", Staged, ""},
		{"a staged request still pulling: in service", netapi.Status{Version: "v1", Upgrade: &upgrade.Upgrade{ID: "u1", Image: "r/keel:v2", State: upgrade.Pulling, Stage: true}}, "u1", Staging, ""},
		{"staged from another image of the same version", netapi.Status{Version: "v1", Upgrade: &upgrade.Upgrade{ID: "x", Image: "r/keel:v2@sha256:0ld", State: upgrade.Staged, ToVersion: "v2"}}, "", Pending, "upgrade x of r/keel:v2@sha256:0ld is staged (not this plan's: discard it to go on)"},
		{"staged by us for an earlier target: blocked (the pass discards it)", netapi.Status{Version: "v1", Upgrade: &upgrade.Upgrade{ID: "u0", Image: "r/keel:v1.5", State: upgrade.Staged, ToVersion: "v1.5"}}, "u0", Pending, "upgrade u0 of r/keel:v1.5 is staged (not this plan's: discard it to go on)"},
		{"someone's staged upgrade on a node already on the target", netapi.Status{Version: "v2", Upgrade: &upgrade.Upgrade{ID: "x", Image: "r/keel:v3", State: upgrade.Staged, ToVersion: "v3"}}, "", Upgraded, ""},
		{"our staged upgrade discarded: not a failure", netapi.Status{Version: "v1", Upgrade: &upgrade.Upgrade{ID: "u1", State: upgrade.Aborted, Stage: true, Reason: "discarded: by operator"}}, "u1", Pending, ""},
		{"our staged upgrade failed", netapi.Status{Version: "v1", Upgrade: &upgrade.Upgrade{ID: "u1", State: upgrade.Aborted, Stage: true, Reason: "pull: 404"}}, "u1", Failed, "aborted: pull: 404"},
	} {
		n := Observe("n", false, c.st, "r/keel:v2", "v2", c.requested)
		if n.Phase != c.want || n.Reason != c.reason || n.Healthy || n.Blocked != strings.Contains(c.reason, "not this plan's") {
			t.Errorf("%s: %+v, want %s %q", c.name, n, c.want, c.reason)
		}
	}
}
