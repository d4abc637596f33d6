package sequence

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	etcdnode "keel/cluster/etcd"
	"keel/cluster/etcd/quorum"
	"keel/netapi"
	"keel/supervisor"
	"keel/upgrade"
)

// A control-plane node (config "etcd") runs an etcd member as the first supervised service.
// Its upgrades take the cluster-wide upgrade lock, check that the cluster can spare the member,
// leave the cluster when asked not to preserve data, and rejoin as a learner after.

func (n *Node) controlPlane() bool { return n.cfg.Etcd != nil }

// etcdClient is a client for the configured endpoints, built once and kept: it outlives the
// local member's stop, and the lease keep-alive runs through it.
func (n *Node) etcdClient() (*clientv3.Client, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.etcd != nil {
		return n.etcd, nil
	}
	c, err := etcdnode.Connect(n.cfg.Etcd.Endpoints)
	if err != nil {
		return nil, err
	}
	n.etcd = c
	return c, nil
}

// etcdService returns the etcd service spec for this boot. A pending rejoin is settled first:
// a member that is still a voter starts as it is; one that was removed has its data wiped and
// is added back as a learner (promoted later, once caught up).
func (n *Node) etcdService() (supervisor.Spec, error) {
	e := *n.cfg.Etcd
	name := n.cfg.MemberName()
	st := etcdnode.Start{InitialCluster: e.InitialCluster, State: "new"}
	n.mu.Lock()
	rejoin := n.rec.Current != nil && n.rec.Current.Rejoin
	n.mu.Unlock()
	if !rejoin {
		return etcdnode.ServiceSpec(e, name, st), nil
	}
	cli, err := n.etcdClient()
	if err != nil {
		return supervisor.Spec{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var ms []etcdnode.Member
	for {
		lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
		ms, err = etcdnode.List(lctx, cli)
		lcancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		// Start etcd as it is; the rejoin stays pending and is retried at the next boot.
		n.warn("etcd: cannot settle the pending rejoin (the cluster does not answer): %v", err)
		return etcdnode.ServiceSpec(e, name, st), nil
	}
	_, how := etcdnode.Find(ms, name, e.PeerURL)
	n.log.Info("etcd: rejoin pending", "member", name, "membership", how.String())
	switch how {
	case etcdnode.Voter:
		if _, err := n.apply(upgrade.Rejoined{Note: "still a voting member: it never left", Now: now()}); err != nil {
			n.warn("etcd: %v", err)
		}
	case etcdnode.Absent:
		if err := os.RemoveAll(etcdnode.DataDir); err != nil {
			return supervisor.Spec{}, fmt.Errorf("etcd: wipe %s: %w", etcdnode.DataDir, err)
		}
		fallthrough
	case etcdnode.Learner:
		initial, err := etcdnode.AddLearner(ctx, cli, name, e.PeerURL)
		if err != nil {
			return supervisor.Spec{}, err
		}
		st = etcdnode.Start{InitialCluster: initial, State: "existing"}
		n.log.Info("etcd: joining as a learner", "initial_cluster", initial)
		n.publish("etcd", name, "joining the cluster as a learner", map[string]any{"initial_cluster": initial})
	}
	return etcdnode.ServiceSpec(e, name, st), nil
}

// precheck runs when an upgrade is requested on a control-plane node: a refusal is the
// answer (412); a pass is stated in the answer (with the outage of a single-member cluster).
// When another node holds the upgrade lock its member may be down on purpose: the request
// is accepted and the check runs once this node holds the lock.
func (n *Node) precheck(preserve, force bool) (string, bool, error) {
	if !n.controlPlane() {
		return "", false, nil
	}
	if force {
		return "quorum check skipped: force", false, nil
	}
	cli, err := n.etcdClient()
	if err != nil {
		return "", false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n.cfg.Etcd.ProbeTimeout()+5)*time.Second)
	defer cancel()
	if h, ok, err := etcdnode.CurrentHolder(ctx, cli); err == nil && ok && h.Node != n.cfg.MemberName() {
		return fmt.Sprintf("waiting for the upgrade lease, held by %s; the quorum check runs once it is ours", h), false, nil
	}
	d, _, err := etcdnode.Check(ctx, cli, n.cfg.MemberName(), op(preserve), time.Duration(n.cfg.Etcd.ProbeTimeout())*time.Second)
	if err != nil {
		return "", false, fmt.Errorf("%w: etcd quorum check: %v", netapi.ErrPrecondition, err)
	}
	if !d.OK {
		return "", false, fmt.Errorf("%w: etcd quorum check: %s", netapi.ErrPrecondition, d.Reason)
	}
	return d.Reason, d.Outage, nil
}

func op(preserve bool) quorum.Op {
	if preserve {
		return quorum.Restart
	}
	return quorum.Leave
}

// lock grants the lease (persisting its id), then waits for the upgrade lock, reporting each
// holder it waits behind. CancelUpgrade ends the wait.
func (n *Node) lock(ctx context.Context, u upgrade.Upgrade) upgrade.Event {
	cli, err := n.etcdClient()
	if err != nil {
		return upgrade.Failed{Reason: err.Error(), Now: now()}
	}
	id := u.Lease
	if id == 0 {
		gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		id, err = etcdnode.Grant(gctx, cli, n.cfg.Etcd.LeaseTTL())
		cancel()
		if err != nil {
			return upgrade.Failed{Reason: err.Error(), Now: now()}
		}
		if _, err := n.apply(upgrade.LeaseGranted{ID: id, Now: now()}); err != nil {
			etcdnode.Revoke(context.Background(), cli, id)
			return upgrade.Failed{Reason: err.Error(), Now: now()}
		}
	}
	lctx, cancel := context.WithCancel(ctx)
	n.mu.Lock()
	n.cancelLock = cancel
	n.mu.Unlock()
	defer func() { n.mu.Lock(); n.cancelLock = nil; n.mu.Unlock(); cancel() }()
	me := etcdnode.Holder{Node: n.cfg.MemberName(), UpgradeID: u.ID}
	l, err := etcdnode.Acquire(lctx, cli, id, me, func(h etcdnode.Holder) {
		n.log.Info("upgrade: waiting for the upgrade lease", "holder", h.String())
		n.publish("upgrade", u.ID, "waiting for the upgrade lease, held by "+h.String(), map[string]any{"holder": h.Node, "since": h.Since, "lease": fmt.Sprintf("%x", h.Lease)})
		if _, err := n.apply(upgrade.LockWaiting{Holder: h.String(), Now: now()}); err != nil {
			n.log.Warn("upgrade: lock waiting", "err", err)
		}
	})
	if err != nil {
		return upgrade.Failed{Reason: err.Error(), Now: now()}
	}
	n.keepLock(l)
	n.log.Info("upgrade: holding the upgrade lease", "lease", fmt.Sprintf("%x", id))
	return upgrade.Completed{Now: now()}
}

// keepLock keeps the lock's session and warns if the lease is lost while held.
func (n *Node) keepLock(l *etcdnode.Lock) {
	n.mu.Lock()
	n.lockHeld = l
	n.mu.Unlock()
	go func() {
		<-l.Lost()
		n.mu.Lock()
		still := n.lockHeld == l && n.rec.Current != nil && n.rec.Current.Lease == l.ID
		down := n.goingDown
		n.mu.Unlock()
		if still && !down {
			n.warn("etcd: the upgrade lease %x can no longer be kept alive", l.ID)
		}
	}()
}

// resumeLease keeps the persisted lease alive again after the reboot; the lock key bound to it
// is still first in line, so the lock is held again at once.
func (n *Node) resumeLease(ctx context.Context, u upgrade.Upgrade) upgrade.Event {
	cli, err := n.etcdClient()
	if err != nil {
		n.warn("etcd: %v", err)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		l, err := etcdnode.Acquire(ctx, cli, u.Lease, etcdnode.Holder{Node: n.cfg.MemberName(), UpgradeID: u.ID}, func(h etcdnode.Holder) {
			n.warn("etcd: resuming the upgrade lease, but %s holds the lock", h)
		})
		if err == nil {
			n.keepLock(l)
			n.log.Info("upgrade: upgrade lease resumed after the reboot", "lease", fmt.Sprintf("%x", u.Lease))
			return nil
		}
		if errors.Is(err, etcdnode.ErrLeaseExpired) {
			return upgrade.LeaseLost{Reason: fmt.Sprintf("lease %x expired while the node rebooted (TTL %d s)", u.Lease, n.cfg.Etcd.LeaseTTL()), Now: now()}
		}
		if ctx.Err() != nil {
			n.warn("etcd: could not resume the upgrade lease: %v", err)
			return nil
		}
		time.Sleep(time.Second)
	}
}

// check re-checks the cluster once the lock is held, waiting for it to become healthy enough.
func (n *Node) check(ctx context.Context, u upgrade.Upgrade) upgrade.Event {
	if u.Force {
		return upgrade.Checked{Reason: "quorum check skipped: force", Now: now()}
	}
	cli, err := n.etcdClient()
	if err != nil {
		return upgrade.Failed{Reason: err.Error(), Now: now()}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(n.cfg.Etcd.CheckWait())*time.Second)
	defer cancel()
	d, err := etcdnode.WaitCheck(ctx, cli, n.cfg.MemberName(), op(u.Preserve), time.Duration(n.cfg.Etcd.ProbeTimeout())*time.Second, 2*time.Second,
		func(why string) {
			n.log.Warn("upgrade: waiting for the cluster to spare this member", "reason", why)
			n.publish("upgrade", u.ID, "waiting for a healthy cluster: "+why, nil)
		})
	if err != nil {
		return upgrade.Failed{Reason: err.Error(), Now: now()}
	}
	return upgrade.Checked{Reason: d.Reason, Now: now()}
}

func (n *Node) leave(ctx context.Context, u upgrade.Upgrade) upgrade.Event {
	cli, err := n.etcdClient()
	if err != nil {
		return upgrade.Failed{Reason: err.Error(), Now: now()}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := etcdnode.Remove(ctx, cli, n.cfg.MemberName()); err != nil {
		return upgrade.Failed{Reason: err.Error(), Now: now()}
	}
	n.log.Info("upgrade: left the etcd cluster", "member", n.cfg.MemberName())
	return upgrade.Completed{Now: now()}
}

// promote finishes a rejoin: the learner started by etcdService is promoted once caught up,
// and then must answer a quorum read.
func (n *Node) promote(ctx context.Context) error {
	n.mu.Lock()
	pending := n.rec.Current != nil && n.rec.Current.Rejoin
	n.mu.Unlock()
	if !pending {
		return nil
	}
	cli, err := n.etcdClient()
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := etcdnode.Promote(ctx, cli, n.cfg.MemberName(), n.cfg.Etcd.PeerURL); err != nil {
		return err
	}
	note := fmt.Sprintf("rejoined: learner caught up and promoted to voter (%.1f s)", time.Since(t0).Seconds())
	n.log.Info("etcd: " + note)
	if _, err := n.apply(upgrade.Rejoined{Note: note, Now: now()}); err != nil {
		return err
	}
	return nil
}

// etcdGate is the trial's etcd health gate: a rejoin is completed, and the member is back,
// healthy and caught up, before the commit.
func (n *Node) etcdGate(ctx context.Context) error {
	if err := n.promote(ctx); err != nil {
		return err
	}
	return etcdnode.WaitHealthy(ctx, etcdnode.LocalEndpoint(*n.cfg.Etcd))
}

// rejoin is the boot-time action of an ended upgrade whose member had to rejoin.
func (n *Node) rejoin(ctx context.Context) upgrade.Event {
	if !n.controlPlane() {
		return upgrade.Rejoined{Note: "no etcd configured", Now: now()}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := n.promote(ctx); err != nil {
		n.warn("etcd: rejoin: %v (retried at the next boot)", err)
	}
	return nil
}

// release revokes the upgrade lease once this node's member is back, healthy and caught up
// (bounded: a member that never comes back must not block every other node forever; the next
// holder re-checks the cluster before it goes on).
func (n *Node) release(ctx context.Context, u upgrade.Upgrade) upgrade.Event {
	if !n.controlPlane() {
		return upgrade.Released{Now: now()}
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	if err := etcdnode.WaitHealthy(wctx, etcdnode.LocalEndpoint(*n.cfg.Etcd)); err != nil {
		n.warn("upgrade: releasing the upgrade lease although this member is not healthy: %v", err)
	}
	cancel()
	cli, err := n.etcdClient()
	if err != nil {
		n.warn("etcd: %v", err)
		return nil
	}
	// Stop our keep-alive first (if this process holds one), then revoke by id: after a reboot
	// there is no session, only the id on META.
	n.mu.Lock()
	if n.lockHeld != nil {
		n.lockHeld.Detach()
		n.lockHeld = nil
	}
	n.mu.Unlock()
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = etcdnode.Revoke(rctx, cli, u.Lease)
		cancel()
		if err == nil {
			break
		}
		n.log.Warn("upgrade: release the upgrade lease", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	n.log.Info("upgrade: upgrade lease released", "lease", fmt.Sprintf("%x", u.Lease))
	fmt.Fprintf(n.opts.Console, "keel-lease released id=%s\n", u.ID)
	return upgrade.Released{Now: now()}
}

// CancelUpgrade implements netapi.Node: an upgrade still pulling, waiting for the lease or
// checking is ended (its lease released); a later one cannot be.
func (n *Node) CancelUpgrade() error {
	acts, err := n.apply(upgrade.Cancel{Reason: "by operator", Now: now()})
	switch {
	case errors.Is(err, upgrade.ErrTooLate):
		return fmt.Errorf("%w: %v", netapi.ErrConflict, err)
	case errors.Is(err, upgrade.ErrUnexpected):
		return fmt.Errorf("%w: no upgrade in flight", netapi.ErrConflict)
	case err != nil:
		return err
	}
	n.mu.Lock()
	if n.cancelLock != nil {
		n.cancelLock()
	}
	n.mu.Unlock()
	go n.runActions(context.Background(), acts)
	return nil
}
