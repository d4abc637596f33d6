package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"keel/cluster/etcd/quorum"
)

// Budget bounds a check. The member list is a linearizable read: with the leader frozen or
// gone it first waits out an election. A follower starts one after one to two election
// timeouts without news; three timeouts cover that and most split votes (a rare longer
// election is answered as "no member answered the member list", a refusal). Each
// member's probe then has its own timeout. A check whose context ends sooner still ends
// with a verdict: a member that did not answer in time is unhealthy, and named.
type Budget struct {
	List, Probe time.Duration
}

// BudgetFor is the budget of a cluster whose members answer within probe and elect a leader
// within election timeout.
func BudgetFor(probe, election time.Duration) Budget {
	return Budget{List: probe + 3*election, Probe: probe}
}

// Total is the longest a check takes.
func (b Budget) Total() time.Duration { return b.List + b.Probe }

// Check measures the members and decides whether self may undergo op. An error means the
// cluster could not be asked at all (no member answered the member list).
func Check(ctx context.Context, cli *clientv3.Client, self string, op quorum.Op, b Budget) (quorum.Decision, []Member, error) {
	lctx, cancel := context.WithTimeout(ctx, b.List)
	ms, err := listFirst(lctx, cli)
	cancel()
	if err != nil {
		return quorum.Decision{}, nil, err
	}
	ms = probe(ctx, cli, ms, b.Probe)
	return quorum.Check(QuorumMembers(ms), self, op), ms, nil
}

// listFirst is the member list from whichever endpoint gives it first (linearizable: a
// member without a leader does not answer).
func listFirst(ctx context.Context, cli *clientv3.Client) ([]Member, error) {
	resp, err := first(ctx, cli, func(ctx context.Context, conn *grpc.ClientConn) (*pb.MemberListResponse, error) {
		return pb.NewClusterClient(conn).MemberList(ctx, &pb.MemberListRequest{Linearizable: true})
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: member list: %w", err)
	}
	return members(resp.Members), nil
}

// first asks every endpoint of cli at once, each over a connection of its own and again
// after each failure until ctx ends, and returns the first answer. The shared client
// balances requests over its connections, and a frozen member's stays open until its
// keep-alive fails: a check sent down it would wait out its whole budget while the other
// members could have answered at once.
func first[T any](ctx context.Context, cli *clientv3.Client, ask func(context.Context, *grpc.ClientConn) (T, error)) (T, error) {
	eps := cli.Endpoints()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type answer struct {
		v   T
		err error
	}
	answers := make(chan answer, len(eps)) // the slower askers finish without a reader
	for _, ep := range eps {
		go func() {
			conn, err := cli.Dial(ep)
			if err != nil {
				answers <- answer{err: fmt.Errorf("%s: %w", ep, err)}
				return
			}
			defer conn.Close()
			var last error // the last answer that was not the deadline's
			for {
				v, err := ask(ctx, conn)
				if err == nil || ctx.Err() != nil || !askAgain(err) {
					if err != nil {
						if ctx.Err() != nil && last != nil {
							err = fmt.Errorf("%w (before that: %v)", err, last)
						}
						err = fmt.Errorf("%s: %w", ep, err)
					}
					answers <- answer{v, err}
					return
				}
				last = err
				// "leader changed", "no leader": the election ends within the budget.
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
	}
	var errs []error
	for range eps {
		a := <-answers
		if a.err == nil {
			return a.v, nil
		}
		errs = append(errs, a.err)
	}
	var zero T
	if len(errs) == 0 {
		return zero, errors.New("no endpoints")
	}
	return zero, errors.Join(errs...)
}

// askAgain: an election or a member not ready yet, not a refusal (credentials,
// permissions, a request the member will never serve).
func askAgain(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.Unimplemented:
		return false
	}
	return true
}

// WaitCheck repeats Check every interval until it passes or ctx ends, calling report with
// each refusal that differs from the last. A node that has just taken the upgrade lease uses
// it: the node before may have left the cluster short, and this one goes on only when it is
// whole again.
func WaitCheck(ctx context.Context, cli *clientv3.Client, self string, op quorum.Op, b Budget, interval time.Duration, report func(string)) (quorum.Decision, error) {
	last := ""
	for {
		d, _, err := Check(ctx, cli, self, op, b)
		why := d.Reason
		if err != nil {
			why = err.Error()
		}
		if err == nil && d.OK {
			return d, nil
		}
		if ctx.Err() != nil && last != "" {
			// Cut short by the deadline itself: the last whole verdict is the news.
			why = last
		}
		if why != last && report != nil {
			report(why)
		}
		last = why
		select {
		case <-ctx.Done():
			return d, fmt.Errorf("etcd: quorum check: %s (gave up: %w)", why, ctx.Err())
		case <-time.After(interval):
		}
	}
}
