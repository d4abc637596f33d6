package etcd

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A leader that stops or leaves without handing over leaves the cluster leaderless until an
// election timeout passes: every quorum read and write waits or fails meanwhile. A leader that
// moves leadership first costs its clients one round of the transfer (the old leader stops
// accepting proposals only while the transferee catches up, which a caught-up voter does at
// once).

// ErrNoTransferee is HandOver's answer when no other voter can take over.
var ErrNoTransferee = errors.New("etcd: no healthy voter to hand leadership to")

// memberStatus is one voter's answer to Status.
type memberStatus struct {
	Member
	st  *clientv3.StatusResponse
	err error
}

// HandOver moves leadership away from the member named self if it leads: to the healthy voter
// that has applied the most of the log (the one that needs no catching up), and returns once
// that member says it leads. local is self's client URL as the node reaches it ("" for the
// advertised one). The note says what happened, for the record; a member that does not lead,
// or is not a member, has nothing to hand over.
func HandOver(ctx context.Context, cli *clientv3.Client, self, local string) (string, error) {
	var last error
	for {
		note, retry, err := handOverOnce(ctx, cli, self, local)
		if err == nil {
			return note, nil
		}
		last = err
		if !retry {
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("etcd: hand leadership over: %w (last: %v)", ctx.Err(), last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func handOverOnce(ctx context.Context, cli *clientv3.Client, self, local string) (note string, retry bool, err error) {
	t0 := time.Now()
	if local != "" {
		// First the member's own view, which needs no quorum: a member that does not answer
		// or does not lead has nothing to hand over (and a cluster that lost its quorum is
		// not asked for a member list it cannot give).
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, local)
		cancel()
		if err != nil {
			return fmt.Sprintf("leadership: %s does not answer (%v), nothing to hand over", self, err), false, nil
		}
		if st.Leader != st.Header.MemberId {
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			ms, _ := List(lctx, cli) // only to name the leader
			cancel()
			return fmt.Sprintf("leadership: %s does not lead (%s does)", self, nameOf(ms, st.Leader)), false, nil
		}
	}
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	ms, err := List(lctx, cli)
	cancel()
	if err != nil {
		return "", true, err
	}
	me, how := Find(ms, self, "")
	if how != Voter {
		return fmt.Sprintf("leadership: %s is not a voting member, nothing to hand over", self), false, nil
	}
	if local == "" && len(me.ClientURLs) > 0 {
		local = me.ClientURLs[0]
	}
	sts := statuses(ctx, cli, ms, me, local)
	var leader uint64
	for _, s := range sts {
		if s.err == nil && s.st.Leader != 0 {
			leader = s.st.Leader
			if s.ID == me.ID {
				break // our own view first
			}
		}
	}
	if leader != me.ID {
		return fmt.Sprintf("leadership: %s does not lead (%s does)", self, nameOf(ms, leader)), false, nil
	}
	var cands []memberStatus
	for _, s := range sts {
		if s.ID != me.ID && s.err == nil && !s.st.IsLearner {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		if len(sts) == 1 {
			return fmt.Sprintf("leadership: %s is the only voter, nothing to hand over", self), false, nil
		}
		return "", true, fmt.Errorf("%w (%s leads; voters: %s)", ErrNoTransferee, self, describe(sts))
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i].st, cands[j].st
		if a.RaftAppliedIndex != b.RaftAppliedIndex {
			return a.RaftAppliedIndex > b.RaftAppliedIndex
		}
		return cands[i].Name < cands[j].Name
	})
	to := cands[0]
	conn, err := cli.Dial(local)
	if err != nil {
		return "", true, err
	}
	defer conn.Close()
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// etcd answers once the transferee leads (or the transfer timed out).
	if _, err := clientv3.NewMaintenanceFromMaintenanceClient(pb.NewMaintenanceClient(conn), nil).MoveLeader(mctx, to.ID); err != nil {
		return "", true, fmt.Errorf("move leader to %s: %w", to.Name, err)
	}
	// Confirmed by the transferee itself.
	for {
		sctx, cancel := context.WithTimeout(mctx, 2*time.Second)
		st, err := cli.Status(sctx, to.ClientURLs[0])
		cancel()
		if err == nil && st.Leader == to.ID {
			break
		}
		select {
		case <-mctx.Done():
			return "", true, fmt.Errorf("%s did not confirm leadership: %w", to.Name, mctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Sprintf("leadership handed over to %s (applied index %d) in %d ms", to.Name, to.st.RaftAppliedIndex, time.Since(t0).Milliseconds()), false, nil
}

// statuses asks every voter for its status at once (self through local), 2 s each.
func statuses(ctx context.Context, cli *clientv3.Client, ms []Member, me Member, local string) []memberStatus {
	var out []memberStatus
	for _, m := range ms {
		if !m.Learner {
			out = append(out, memberStatus{Member: m})
		}
	}
	done := make(chan struct{})
	for i := range out {
		go func() {
			defer func() { done <- struct{}{} }()
			ep := local
			if out[i].ID != me.ID {
				if len(out[i].ClientURLs) == 0 {
					out[i].err = errors.New("not started")
					return
				}
				ep = out[i].ClientURLs[0]
			}
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			out[i].st, out[i].err = cli.Status(sctx, ep)
		}()
	}
	for range out {
		<-done
	}
	return out
}

func nameOf(ms []Member, id uint64) string {
	if id == 0 {
		return "no member"
	}
	for _, m := range ms {
		if m.ID == id {
			return m.Name
		}
	}
	return fmt.Sprintf("member %x", id)
}

func describe(sts []memberStatus) string {
	s := ""
	for i, m := range sts {
		if i > 0 {
			s += ", "
		}
		if m.err != nil {
			s += fmt.Sprintf("%s (%v)", m.Name, m.err)
		} else {
			s += fmt.Sprintf("%s (applied %d)", m.Name, m.st.RaftAppliedIndex)
		}
	}
	return s
}
