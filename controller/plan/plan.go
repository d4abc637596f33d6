// Package plan decides, for a cluster upgrade plan, which nodes start their upgrade now: the
// pure core of the cluster controller (issue: a controller that keeps a fleet updated). Given
// the plan's rules and every selected node's state as the controller last saw it (each node's
// META record is the truth; the controller only reads it), Decide returns the nodes to start,
// or why none starts. No I/O and no clock: the caller passes now.
//
// The rules, in order:
//   - a paused plan starts nothing;
//   - a failed node halts the plan (it names the node and its record's reason) until the spec
//     changes;
//   - control-plane nodes go first and strictly one at a time: no worker starts while a
//     control-plane node is not yet on the target and healthy;
//   - workers go by the plan's concurrency, counting every node out of service (upgrading, or
//     upgraded and not yet healthy: the health gates between nodes);
//   - outside every maintenance window nothing starts; what is in flight finishes.
package plan

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	// Windows name IANA zones: the controller carries the zone database, so it needs none
	// where it runs (a distroless image has none).
	_ "time/tzdata"
)

// Phase is where a node is in the plan.
type Phase string

// Node phases.
const (
	Pending   Phase = "pending"   // not on the target yet, not started
	Upgrading Phase = "upgrading" // its upgrade runs (requested, or found running on the node)
	Upgraded  Phase = "upgraded"  // on the target version; Healthy says whether the gates passed
	Failed    Phase = "failed"    // its upgrade ended aborted or rolled back
	// With staging, a node writes its slot in service ahead of its turn (staging), then
	// waits (staged) until the plan activates it; both are in service.
	Staging Phase = "staging"
	Staged  Phase = "staged"
)

// Node is one selected node as the controller sees it.
type Node struct {
	Name         string
	ControlPlane bool
	Phase        Phase
	// Healthy: the gates between nodes passed (node Ready, its pods Ready again, the plan's
	// HTTP check); only meaningful once Upgraded.
	Healthy bool
	Reason  string // a failed node's record reason
	// Blocked: in service, but busy with an upgrade that is not this plan's (staged by
	// someone else): neither started nor staged until it is discarded.
	Blocked bool
}

// Window is a maintenance window: on Days (none: every day), from Start to End ("HH:MM", End
// before Start runs past midnight) in the time zone Zone (an IANA name; empty: UTC).
type Window struct {
	Days  []time.Weekday
	Start string
	End   string
	Zone  string
}

// Spec is what Decide needs of a plan.
type Spec struct {
	Concurrency int // workers out of service at once; 0 means 1
	Windows     []Window
	Paused      bool
	// Stage: nodes download and write their slot ahead of their turn, in service, at any
	// time (windows bound activations, not staging), StageConcurrency at once (0: as many as
	// Concurrency); a node's turn then activates it.
	Stage            bool
	StageConcurrency int
}

// Decision is what to do now.
type Decision struct {
	// Start are the nodes whose turn it is, in order: their upgrade starts, or, with staging,
	// their staged upgrade is activated.
	Start []string
	// Stage are the nodes to stage now (in service).
	Stage []string
	// Halted names the failed node and its reason; Waiting says why nothing (more) starts.
	Halted  string
	Waiting string
	Done    bool // every node upgraded and healthy
}

// ErrSpec wraps a plan that cannot be followed (a bad window).
var ErrSpec = errors.New("plan")

// Decide applies the rules to nodes at now.
func Decide(s Spec, nodes []Node, now time.Time) (Decision, error) {
	var d Decision
	open, next, err := InWindow(s.Windows, now)
	if err != nil {
		return d, err
	}
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	for _, n := range nodes {
		if n.Phase == Failed {
			d.Halted = fmt.Sprintf("node %s failed: %s", n.Name, n.Reason)
			return d, nil
		}
	}
	outCP, outWorkers, cpLeft := 0, 0, false
	allDone := true
	for _, n := range nodes {
		out := n.Phase == Upgrading || n.Phase == Upgraded && !n.Healthy
		if n.Phase != Upgraded || !n.Healthy {
			allDone = false
		}
		if n.ControlPlane {
			if out {
				outCP++
			}
			if n.Phase != Upgraded || !n.Healthy {
				cpLeft = true
			}
		} else if out {
			outWorkers++
		}
	}
	switch {
	case allDone:
		d.Done = true
		return d, nil
	case s.Paused:
		d.Waiting = "the plan is paused"
		return d, nil
	}
	// ready: whose turn may come. A staged node is ready; a pending one only without staging
	// (with it, it is staged first).
	ready := func(n Node) bool { return n.Phase == Staged || n.Phase == Pending && !s.Stage && !n.Blocked }
	if s.Stage {
		d.Stage = toStage(s, nodes)
	}
	switch {
	case !open:
		d.Waiting = "outside the maintenance windows"
		if !next.IsZero() {
			d.Waiting += "; the next opens at " + next.Format(time.RFC3339)
		}
		return d, nil
	}
	if cpLeft {
		if outCP > 0 || outWorkers > 0 {
			d.Waiting = "a node is out of service; control-plane nodes go one at a time, alone"
			return d, nil
		}
		for _, n := range nodes {
			if n.ControlPlane && ready(n) {
				d.Start = []string{n.Name}
				return d, nil
			}
		}
		d.Waiting = "control-plane nodes are not all healthy"
		if s.Stage {
			d.Waiting = "waiting for a control-plane node to be staged"
		}
		return d, nil
	}
	conc := max(s.Concurrency, 1)
	for _, n := range nodes {
		if outWorkers+len(d.Start) >= conc {
			break
		}
		if !n.ControlPlane && ready(n) {
			d.Start = append(d.Start, n.Name)
		}
	}
	if len(d.Start) == 0 {
		// Out of service counts a node that passed its gates and is unhealthy again (its pods
		// displaced by another's drain): more than the concurrency can be out that way.
		d.Waiting = fmt.Sprintf("%d worker(s) out of service, concurrency %d", outWorkers, conc)
		if s.Stage && outWorkers < conc {
			d.Waiting += "; waiting for workers to be staged"
		}
	}
	return d, nil
}

// toStage are the pending nodes to stage now, control-plane nodes first, then by name, as
// many as keep StageConcurrency nodes staging.
func toStage(s Spec, nodes []Node) []string {
	limit := s.StageConcurrency
	if limit <= 0 {
		limit = max(s.Concurrency, 1)
	}
	staging := 0
	for _, n := range nodes {
		if n.Phase == Staging {
			staging++
		}
	}
	var out []string
	for _, cp := range []bool{true, false} {
		for _, n := range nodes {
			if n.ControlPlane == cp && n.Phase == Pending && !n.Blocked && staging+len(out) < limit {
				out = append(out, n.Name)
			}
		}
	}
	return out
}

// InWindow reports whether now is inside one of the windows (no windows: always), and, when
// it is not, when the next one opens (zero if none does within a week).
func InWindow(ws []Window, now time.Time) (bool, time.Time, error) {
	if len(ws) == 0 {
		return true, time.Time{}, nil
	}
	var next time.Time
	for i, w := range ws {
		loc, sh, sm, eh, em, err := w.parse()
		if err != nil {
			return false, time.Time{}, fmt.Errorf("%w: window %d: %w", ErrSpec, i, err)
		}
		t := now.In(loc)
		// A window lasts its clock length from its start (past midnight when End is before
		// Start): on a night the clocks change a wall time may not exist, and the end is not
		// taken from one.
		length := time.Duration((eh*60+em-sh*60-sm+24*60)%(24*60)) * time.Minute
		// A window that opened yesterday may still be open past midnight.
		for day := -1; day <= 7; day++ {
			y, m, dd := t.Date()
			start := time.Date(y, m, dd+day, sh, sm, 0, 0, loc)
			end := start.Add(length)
			if len(w.Days) > 0 && !slices.Contains(w.Days, start.Weekday()) {
				continue
			}
			if !now.Before(start) && now.Before(end) {
				return true, time.Time{}, nil
			}
			if start.After(now) && (next.IsZero() || start.Before(next)) {
				next = start
			}
		}
	}
	return false, next, nil
}

func (w Window) parse() (loc *time.Location, sh, sm, eh, em int, err error) {
	loc = time.UTC
	switch w.Zone {
	case "", "UTC":
	case "Local":
		// The controller's own zone would make the plan mean different things where it runs.
		err = errors.New(`time zone "Local" is the controller's: name the zone`)
		return
	default:
		if loc, err = time.LoadLocation(w.Zone); err != nil {
			return
		}
	}
	if sh, sm, err = clock(w.Start); err != nil {
		return
	}
	if eh, em, err = clock(w.End); err != nil {
		return
	}
	if sh == eh && sm == em {
		err = fmt.Errorf("start and end are both %s: an empty window (for always, give no window)", w.Start)
	}
	return
}

// clock reads HH:MM.
func clock(s string) (int, int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || len(h) != 2 || len(m) != 2 || err1 != nil || err2 != nil || hh > 23 || mm > 59 || hh < 0 || mm < 0 {
		return 0, 0, fmt.Errorf("%q is not HH:MM", s)
	}
	return hh, mm, nil
}
