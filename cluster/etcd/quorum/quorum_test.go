package quorum

import (
	"fmt"
	"strings"
	"testing"
)

func members(spec string) []Member {
	// "H" healthy voter, "U" unhealthy voter, "h" healthy learner, "u" unhealthy learner;
	// member i is named n<i>, and n0 is self.
	var out []Member
	for i, c := range spec {
		out = append(out, Member{Name: fmt.Sprintf("n%d", i), Learner: c == 'h' || c == 'u', Healthy: c == 'H' || c == 'h'})
	}
	return out
}

func TestNamedCases(t *testing.T) {
	for _, tc := range []struct {
		spec         string
		op           Op
		ok, outage   bool
		reasonSubstr string
	}{
		{"H", Restart, true, true, "only voter"},
		{"H", Leave, false, false, "only voter"},
		{"HH", Restart, false, false, "leaves 1 of 2 voters healthy, quorum 2"},
		{"HHH", Restart, true, false, "leaves 2 of 3"},
		{"HHU", Restart, false, false, "leaves 1 of 3 voters healthy, quorum 2; unhealthy voters: n2"},
		{"UHH", Restart, true, false, "leaves 2 of 3"}, // self already down: nothing more is lost
		{"HHH", Leave, true, false, "leaves 2 healthy voters, quorum 2"},
		{"HHU", Leave, false, false, "leaves 1 of 2 voters healthy, quorum 2; unhealthy voters: n2"},
		{"HUU", Restart, false, false, "no quorum now: 1 of 3"},
		{"HHHHH", Restart, true, false, "leaves 4 of 5"},
		{"HHHUU", Restart, false, false, "leaves 2 of 5 voters healthy, quorum 3"},
		{"HHHHU", Leave, false, false, "unhealthy cluster"},
		{"HHHHH", Leave, true, false, "leaves 4 healthy voters, quorum 3"},
		{"Hh", Restart, true, true, "only voter"},           // a learner does not vote
		{"hH", Restart, true, false, "learner"},             // self is a learner
		{"uHH", Leave, true, false, "learner"},              // an unhealthy learner may leave
		{"HHHhhhh", Restart, true, false, "leaves 2 of 3"},  // learners change nothing
		{"HHUUhhh", Restart, false, false, "quorum 3"},      // nor do healthy learners rescue it
		{"HHHHUUU", Restart, false, false, "leaves 3 of 7"}, // 4 of 7 healthy: quorum now, not after
	} {
		t.Run(fmt.Sprintf("%s/%s", tc.spec, tc.op), func(t *testing.T) {
			d := Check(members(tc.spec), "n0", tc.op)
			if d.OK != tc.ok || d.Outage != tc.outage || !strings.Contains(d.Reason, tc.reasonSubstr) {
				t.Errorf("Check = %+v, want ok %v outage %v reason containing %q", d, tc.ok, tc.outage, tc.reasonSubstr)
			}
		})
	}
	if d := Check(members("HHH"), "nope", Restart); d.OK || !strings.Contains(d.Reason, "not a member") {
		t.Errorf("non-member: %+v", d)
	}
}

// TestEveryMix checks every cluster of 1 to 7 members, every mix of healthy and unhealthy
// voters and learners, every choice of self, both ops, against the definition: after the op,
// the voters that remain up must be a majority of the voters that remain (and for a leave,
// all of them), the cluster must have quorum before it, and a single voter may only restart.
func TestEveryMix(t *testing.T) {
	kinds := []byte{'H', 'U', 'h', 'u'}
	n := 0
	for size := 1; size <= 7; size++ {
		spec := make([]byte, size)
		var rec func(i int)
		rec = func(i int) {
			if i == size {
				for self := 0; self < size; self++ {
					for _, op := range []Op{Restart, Leave} {
						check(t, string(spec), self, op)
						n++
					}
				}
				return
			}
			for _, k := range kinds {
				spec[i] = k
				rec(i + 1)
			}
		}
		rec(0)
	}
	t.Logf("%d cases", n)
}

func check(t *testing.T, spec string, self int, op Op) {
	t.Helper()
	ms := members(spec)
	name := ms[self].Name
	d := Check(ms, name, op)
	// The oracle: count directly.
	voters, up := 0, 0
	for _, m := range ms {
		if !m.Learner {
			voters++
			if m.Healthy {
				up++
			}
		}
	}
	me := ms[self]
	var want bool
	switch {
	case me.Learner:
		want = true
	case up*2 <= voters: // no quorum before
		want = false
	case op == Restart && voters == 1:
		want = true
	case op == Restart:
		after := up
		if me.Healthy {
			after--
		}
		want = after*2 > voters
	default: // Leave
		rest, restUp := voters-1, up
		if me.Healthy {
			restUp--
		}
		want = rest > 0 && restUp == rest
	}
	if d.OK != want {
		t.Fatalf("%s self n%d %s: OK %v, want %v (%s)", spec, self, op, d.OK, want, d.Reason)
	}
	if !d.OK && !strings.ContainsAny(d.Reason, "0123456789") {
		t.Fatalf("%s self n%d %s: refusal without numbers: %q", spec, self, op, d.Reason)
	}
	if d.Outage != (d.OK && op == Restart && !me.Learner && voters == 1) {
		t.Fatalf("%s self n%d %s: outage %v", spec, self, op, d.Outage)
	}
}
