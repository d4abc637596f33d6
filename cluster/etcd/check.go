package etcd

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"keel/cluster/etcd/quorum"
)

// Check measures the members and decides whether self may undergo op. An error means the
// cluster could not be asked at all (no member answered the member list).
func Check(ctx context.Context, cli *clientv3.Client, self string, op quorum.Op, probeTimeout time.Duration) (quorum.Decision, []Member, error) {
	lctx, cancel := context.WithTimeout(ctx, probeTimeout)
	ms, err := List(lctx, cli)
	cancel()
	if err != nil {
		return quorum.Decision{}, nil, err
	}
	ms, err = probe(ctx, cli, ms, probeTimeout)
	if err != nil {
		return quorum.Decision{}, nil, err
	}
	return quorum.Check(QuorumMembers(ms), self, op), ms, nil
}

// WaitCheck repeats Check every interval until it passes or ctx ends, calling report with
// each refusal that differs from the last. A node that has just taken the upgrade lease uses
// it: the node before may have left the cluster short, and this one goes on only when it is
// whole again.
func WaitCheck(ctx context.Context, cli *clientv3.Client, self string, op quorum.Op, probeTimeout, interval time.Duration, report func(string)) (quorum.Decision, error) {
	last := ""
	for {
		d, _, err := Check(ctx, cli, self, op, probeTimeout)
		why := d.Reason
		if err != nil {
			why = err.Error()
		}
		if err == nil && d.OK {
			return d, nil
		}
		if err != nil && ctx.Err() != nil && last != "" {
			// Cut short by the deadline itself: the last verdict is the news.
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
