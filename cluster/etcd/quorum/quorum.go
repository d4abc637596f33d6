// Package quorum decides whether a control-plane node may take its etcd member down for an
// upgrade: restart it (preserve=true) or remove it from the cluster (preserve=false), so that
// the cluster never loses its quorum. Pure: the caller measures the members (a quorum read
// against each, with a timeout) and hands the result in.
package quorum

import (
	"fmt"
	"sort"
	"strings"
)

// Member is one etcd member as the pre-upgrade check saw it.
type Member struct {
	Name    string
	Learner bool // learners do not vote and do not count towards quorum
	Healthy bool // answered a quorum read within the timeout
}

// Op is what the upgrade will do to this node's member.
type Op int

// Operations.
const (
	Restart Op = iota // preserve=true: the member stops for the reboot and comes back with its data
	Leave             // preserve=false: the member is removed, its data wiped, and it rejoins later
)

func (o Op) String() string {
	if o == Leave {
		return "leave"
	}
	return "restart"
}

// Decision is the verdict with its arithmetic.
type Decision struct {
	OK bool
	// Outage says the cluster is unavailable while the member is down (a single-member
	// cluster restarting: allowed, and said).
	Outage bool
	// Reason names the members and the numbers, for a refusal and for the record alike.
	Reason string
}

// Majority is the quorum of n voters.
func Majority(n int) int { return n/2 + 1 }

// Check decides whether self may undergo op.
func Check(members []Member, self string, op Op) Decision {
	var me *Member
	voters, healthy := 0, 0
	var down []string
	for i := range members {
		m := &members[i]
		if m.Name == self {
			me = m
		}
		if m.Learner {
			continue
		}
		voters++
		if m.Healthy {
			healthy++
		} else {
			down = append(down, m.Name)
		}
	}
	sort.Strings(down)
	downTxt := ""
	if len(down) > 0 {
		downTxt = "; unhealthy voters: " + strings.Join(down, ", ")
	}
	if me == nil {
		return Decision{Reason: fmt.Sprintf("%s is not a member of the cluster (%d members)", self, len(members))}
	}
	if me.Learner {
		// A learner's absence costs nothing; a learner may leave freely too.
		return Decision{OK: true, Reason: fmt.Sprintf("%s is a learner: it does not count towards quorum (%d of %d voters healthy)", self, healthy, voters)}
	}
	q := Majority(voters)
	// Whatever the op, the cluster must have quorum now: etcd commits a member removal through
	// it, and a cluster without quorum is no place to start an upgrade.
	if healthy < q {
		return Decision{Reason: fmt.Sprintf("the cluster has no quorum now: %d of %d voters healthy, quorum %d%s", healthy, voters, q, downTxt)}
	}
	remaining := healthy
	if me.Healthy {
		remaining--
	}
	switch op {
	case Restart:
		if voters == 1 {
			return Decision{OK: true, Outage: true, Reason: fmt.Sprintf("%s is the only voter: the cluster is unavailable until it is back", self)}
		}
		if remaining < q {
			return Decision{Reason: fmt.Sprintf("restarting %s leaves %d of %d voters healthy, quorum %d%s", self, remaining, voters, q, downTxt)}
		}
		return Decision{OK: true, Reason: fmt.Sprintf("restarting %s leaves %d of %d voters healthy, quorum %d", self, remaining, voters, q)}
	default: // Leave
		if voters == 1 {
			return Decision{Reason: fmt.Sprintf("%s is the only voter: removing it would end the cluster", self)}
		}
		after := voters - 1
		qa := Majority(after)
		if remaining < qa {
			return Decision{Reason: fmt.Sprintf("removing %s leaves %d of %d voters healthy, quorum %d%s", self, remaining, after, qa, downTxt)}
		}
		if remaining < after {
			// etcd would accept it, but the issue asks for a healthy cluster after a leave: the
			// rejoin depends on every remaining member.
			return Decision{Reason: fmt.Sprintf("removing %s leaves an unhealthy cluster: %d of %d remaining voters healthy%s", self, remaining, after, downTxt)}
		}
		return Decision{OK: true, Reason: fmt.Sprintf("removing %s leaves %d healthy voters, quorum %d", self, after, qa)}
	}
}
