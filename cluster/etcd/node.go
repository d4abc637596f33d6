package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"keel/cluster"
	"keel/cluster/etcd/quorum"
	"keel/config"
	"keel/supervisor"
	"keel/upgrade"
)

// Node is a control-plane node's etcd side of its upgrades (upgrade.Cluster): the lease and
// the lock, the quorum check, leaving and rejoining; and what the node's boot and trial need:
// the etcd service for this boot (a pending rejoin settled first), the trial's etcd gate, the
// request-time check. Its client talks to the cluster's endpoints: it outlives the local
// member's stop, and the lease keep-alive runs through it.
type Node struct {
	o NodeOptions

	mu   sync.Mutex
	cli  *clientv3.Client
	lock *Lock // the upgrade lock while this process keeps its lease alive
}

// NodeOptions configure a Node.
type NodeOptions struct {
	Config config.Etcd
	Name   string // the member's name
	// Files are the member's certificates (NodeFiles of the PKI directory on STATE); unused
	// when the config is insecure.
	Files Files
	// SnapshotDirs are where the snapshot before an upgrade goes: the first (STATE: it
	// survives preserve=false) when it fits, else, for preserve=true only, the second.
	SnapshotDirs []string
	cluster.Report
}

// NewNode returns the etcd side of a control-plane node; nothing is dialled yet.
func NewNode(o NodeOptions) *Node {
	o.Report = o.Report.Filled()
	return &Node{o: o}
}

func (n *Node) client() (*clientv3.Client, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cli != nil {
		return n.cli, nil
	}
	t, err := n.tls()
	if err != nil {
		return nil, err
	}
	c, err := Connect(n.o.Config.Endpoints, t)
	if err != nil {
		return nil, err
	}
	n.cli = c
	return c, nil
}

// tls is the init's client TLS configuration (nil when the config is insecure), read from the
// files each time it is asked for; the cluster client, made once, keeps its own.
func (n *Node) tls() (*tls.Config, error) {
	if !n.o.Config.TLS() {
		return nil, nil
	}
	return NodeClientTLS(n.o.Files)
}

// waitLocal waits until this node's member answers a quorum read (WaitHealthy).
func (n *Node) waitLocal(ctx context.Context) error {
	t, err := n.tls()
	if err != nil {
		return err
	}
	return WaitHealthy(ctx, LocalEndpoint(n.o.Config), t)
}

func op(preserve bool) quorum.Op {
	if preserve {
		return quorum.Restart
	}
	return quorum.Leave
}

// budget is the quorum check's: probe_timeout_s per member, and the member list waits out an
// election of election_ms (etcd's 1 s by default).
func (n *Node) budget() Budget {
	election := time.Duration(n.o.Config.ElectionMS) * time.Millisecond
	if election == 0 {
		election = time.Second
	}
	return BudgetFor(time.Duration(n.o.Config.ProbeTimeout())*time.Second, election)
}

// ErrRefused is a request-time check that refuses the upgrade (the answer names members and
// numbers).
var ErrRefused = errors.New("etcd quorum check")

// Precheck runs when an upgrade is requested: a refusal (ErrRefused) is the answer; a pass is
// stated in the answer (with the outage of a single-member cluster). When another node holds the
// upgrade lock its member may be down on purpose: the request is accepted and the check runs
// once this node holds the lock.
func (n *Node) Precheck(ctx context.Context, preserve, force bool) (note string, outage bool, err error) {
	if force {
		return "quorum check skipped: force", false, nil
	}
	cli, err := n.client()
	if err != nil {
		return "", false, err
	}
	b := n.budget()
	// The hint and the check run side by side, the whole bounded by the check's budget: the
	// holder's read, however slow, cannot eat the check's time, and the answer comes before
	// a client's 30 s timeout. The hint may be stale (a serializable read): a request it
	// wrongly accepts waits for the lock, which needs a quorum, and the check runs again
	// under it.
	ctx, cancel := context.WithTimeout(ctx, b.Total())
	defer cancel()
	type hint struct {
		h   Holder
		ok  bool
		err error
	}
	hints := make(chan hint, 1)
	go func() {
		hctx, hcancel := context.WithTimeout(ctx, b.Probe)
		defer hcancel()
		h, ok, err := HolderHint(hctx, cli)
		hints <- hint{h, ok, err}
	}()
	d, _, err := Check(ctx, cli, n.o.Name, op(preserve), b)
	if h := <-hints; h.err == nil && h.ok && h.h.Node != n.o.Name {
		return fmt.Sprintf("waiting for the upgrade lease, held by %s; the quorum check runs once it is ours", h.h), false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if !d.OK {
		return "", false, fmt.Errorf("%w: %s", ErrRefused, d.Reason)
	}
	return d.Reason, d.Outage, nil
}

// Grant implements upgrade.Cluster.
func (n *Node) Grant(ctx context.Context) (int64, error) {
	cli, err := n.client()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return Grant(ctx, cli, n.o.Config.LeaseTTL())
}

// Lock implements upgrade.Cluster: it waits for the upgrade lock (cancelling ctx ends the
// wait), then keeps the lease alive and calls lost if that stops being possible.
func (n *Node) Lock(ctx context.Context, lease int64, id string, waiting func(string), lost func(string)) error {
	cli, err := n.client()
	if err != nil {
		return err
	}
	me := Holder{Node: n.o.Name, UpgradeID: id}
	l, err := Acquire(ctx, cli, lease, me, func(h Holder) {
		n.o.Log.Info("upgrade: waiting for the upgrade lease", "holder", h.String())
		n.o.Event("upgrade", id, "waiting for the upgrade lease, held by "+h.String(), map[string]any{"holder": h.Node, "since": h.Since, "lease": fmt.Sprintf("%x", h.Lease)})
		waiting(h.String())
	}, n.o.Log)
	if err != nil {
		return err
	}
	n.keep(l, lost)
	n.o.Log.Info("upgrade: holding the upgrade lease", "lease", fmt.Sprintf("%x", lease))
	return nil
}

// keep holds l and watches its lease: a loss this process did not ask for is reported.
func (n *Node) keep(l *Lock, lost func(string)) {
	n.mu.Lock()
	if n.lock != nil && n.lock != l {
		n.lock.Detach()
	}
	n.lock = l
	n.mu.Unlock()
	go func() {
		select {
		case <-l.Lost():
		case <-l.Detached():
			return
		}
		n.mu.Lock()
		ours := n.lock == l
		if ours {
			n.lock = nil
		}
		n.mu.Unlock()
		if ours {
			reason := fmt.Sprintf("%s (TTL %d s)", l.Reason(), n.o.Config.LeaseTTL())
			n.o.Warn("etcd: the upgrade lease is lost: %s", reason)
			lost(reason)
		}
	}()
}

// KeepLease implements upgrade.Cluster: after a reboot, the persisted lease is kept alive again;
// the lock key bound to it is still first in line, so the lock is held again at once.
func (n *Node) KeepLease(ctx context.Context, lease int64, id string, lost func(string)) error {
	cli, err := n.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		l, err := Acquire(ctx, cli, lease, Holder{Node: n.o.Name, UpgradeID: id}, func(h Holder) {
			n.o.Warn("etcd: resuming the upgrade lease, but %s holds the lock", h)
		}, n.o.Log)
		if err == nil {
			n.keep(l, lost)
			n.o.Log.Info("upgrade: upgrade lease resumed after the reboot", "lease", fmt.Sprintf("%x", lease))
			return nil
		}
		if errors.Is(err, ErrLeaseExpired) {
			return fmt.Errorf("%w: lease %x expired while the node rebooted (TTL %d s)", upgrade.ErrLeaseExpired, lease, n.o.Config.LeaseTTL())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd: resume the upgrade lease: %w", err)
		case <-time.After(time.Second):
		}
	}
}

// Check implements upgrade.Cluster: with the lock held, the check again, repeated every 2 s
// until it passes (the node before may still be catching up) or check_wait_s runs out.
func (n *Node) Check(ctx context.Context, preserve bool) (string, error) {
	cli, err := n.client()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(n.o.Config.CheckWait())*time.Second)
	defer cancel()
	d, err := WaitCheck(ctx, cli, n.o.Name, op(preserve), n.budget(), 2*time.Second,
		func(why string) {
			n.o.Log.Warn("upgrade: waiting for the cluster to spare this member", "reason", why)
			n.o.Event("upgrade", "etcd", "waiting for a healthy cluster: "+why, nil)
		})
	if err != nil {
		return "", err
	}
	return d.Reason, nil
}

// Leave implements upgrade.Cluster.
func (n *Node) Leave(ctx context.Context) error {
	cli, err := n.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := Remove(ctx, cli, n.o.Name); err != nil {
		return err
	}
	n.o.Log.Info("upgrade: left the etcd cluster", "member", n.o.Name)
	return nil
}

// Rejoin implements upgrade.Cluster: the learner the etcd service started as is promoted once
// caught up (a member that is a voter already counts as promoted).
func (n *Node) Rejoin(ctx context.Context) (string, error) {
	cli, err := n.client()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := Promote(ctx, cli, n.o.Name, n.o.Config.PeerURL); err != nil {
		return "", err
	}
	note := fmt.Sprintf("rejoined: learner caught up and promoted to voter (%.1f s)", time.Since(t0).Seconds())
	n.o.Log.Info("etcd: " + note)
	return note, nil
}

// Gate is the trial's etcd health gate: a pending rejoin is completed (reported through
// rejoined), and the member is back, healthy and caught up, before the commit.
func (n *Node) Gate(ctx context.Context, rejoin bool, rejoined func(string)) error {
	if rejoin {
		note, err := n.Rejoin(ctx)
		if err != nil {
			return err
		}
		rejoined(note)
	}
	return n.waitLocal(ctx)
}

// Release implements upgrade.Cluster: once this node's member is back, healthy and caught up
// (bounded: a member that never comes back must not block every other node forever; the next
// holder re-checks the cluster before it goes on), the keep-alive stops and the lease is revoked
// by id: after a reboot there is no session, only the id on META.
func (n *Node) Release(ctx context.Context, lease int64) error {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	if err := n.waitLocal(wctx); err != nil {
		n.o.Warn("upgrade: releasing the upgrade lease although this member is not healthy: %v", err)
	}
	cancel()
	cli, err := n.client()
	if err != nil {
		return err
	}
	n.mu.Lock()
	if n.lock != nil && n.lock.ID == lease {
		n.lock.Detach()
		n.lock = nil
	}
	n.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := Revoke(rctx, cli, lease); err != nil {
		return err
	}
	n.o.Log.Info("upgrade: upgrade lease released", "lease", fmt.Sprintf("%x", lease))
	return nil
}

// Detach stops keeping the lease alive without revoking it (the node goes down; the next boot
// resumes it, or it expires).
func (n *Node) Detach() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lock != nil {
		n.lock.Detach()
		n.lock = nil
	}
}

// ServiceSpec returns the etcd service for this boot. A pending rejoin is settled first: a member
// that is still a voter starts as it is (rejoined says so, for the record); one that was removed
// has its data wiped and is added back as a learner (promoted later, once caught up).
func (n *Node) ServiceSpec(ctx context.Context, rejoinPending bool) (spec supervisor.Spec, rejoined string, err error) {
	e := n.o.Config
	if e.TLS() {
		if m := n.o.Files.Missing(); len(m) > 0 {
			return supervisor.Spec{}, "", fmt.Errorf("etcd is not started: the config asks for TLS (https:// URLs) but the member's certificates are missing: %v", m)
		}
	}
	st := Start{InitialCluster: e.InitialCluster, State: "new"}
	if !rejoinPending {
		return ServiceSpec(e, n.o.Name, st, n.o.Files), "", nil
	}
	cli, err := n.client()
	if err != nil {
		return supervisor.Spec{}, "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var ms []Member
	for {
		lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
		ms, err = List(lctx, cli)
		lcancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		// Start etcd as it is; the rejoin stays pending and is retried.
		n.o.Warn("etcd: cannot settle the pending rejoin (the cluster does not answer): %v", err)
		return ServiceSpec(e, n.o.Name, st, n.o.Files), "", nil
	}
	_, how := Find(ms, n.o.Name, e.PeerURL)
	n.o.Log.Info("etcd: rejoin pending", "member", n.o.Name, "membership", how.String())
	switch how {
	case Voter:
		return ServiceSpec(e, n.o.Name, st, n.o.Files), "still a voting member: it never left", nil
	case Absent:
		if err := os.RemoveAll(DataDir); err != nil {
			return supervisor.Spec{}, "", fmt.Errorf("etcd: wipe %s: %w", DataDir, err)
		}
	}
	initial, err := AddLearner(ctx, cli, n.o.Name, e.PeerURL)
	if err != nil {
		return supervisor.Spec{}, "", err
	}
	n.o.Log.Info("etcd: joining as a learner", "initial_cluster", initial)
	n.o.Event("etcd", n.o.Name, "joining the cluster as a learner", map[string]any{"initial_cluster": initial})
	return ServiceSpec(e, n.o.Name, Start{InitialCluster: initial, State: "existing"}, n.o.Files), "", nil
}
