package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
)

// LockPrefix is the upgrade lock's key prefix: a concurrency.Mutex whose waiters are keys
// LockPrefix/<lease id in hex>, each bound to its node's lease; the oldest key holds the lock.
// The holder's key carries a JSON Holder ({"node", "upgrade_id", "since", "lease"}), so
// `etcdctl get --prefix /keel/upgrade-lock/` shows who holds it and who waits.
const LockPrefix = "/keel/upgrade-lock"

// Holder says who holds the lock.
type Holder struct {
	Node      string    `json:"node"`
	UpgradeID string    `json:"upgrade_id"`
	Since     time.Time `json:"since"`
	Lease     int64     `json:"lease"`
}

func (h Holder) String() string {
	if h.Node == "" {
		return fmt.Sprintf("lease %x (acquiring)", h.Lease)
	}
	return fmt.Sprintf("%s since %s", h.Node, h.Since.UTC().Format(time.RFC3339))
}

// ErrLeaseExpired says the lease no longer exists: its TTL ran out (the node was away longer
// than it, or a keep-alive stalled that long) or it was revoked.
var ErrLeaseExpired = errors.New("etcd: upgrade lease expired")

// Grant creates a lease of ttl seconds. The caller persists its id before waiting for the lock,
// so that a node cut off while waiting or holding can find (and revoke) it after a reboot.
func Grant(ctx context.Context, cli *clientv3.Client, ttl int) (int64, error) {
	resp, err := cli.Grant(ctx, int64(ttl))
	if err != nil {
		return 0, fmt.Errorf("etcd: grant lease: %w", err)
	}
	return int64(resp.ID), nil
}

// Acquire takes the upgrade lock under lease id (me.Since is set to when it is held), which it
// keeps alive from now on. A lease granted before a reboot is resumed with the same id: its key
// is still first in line, so the lock is held again at once. While another node holds the lock,
// waiting is called with each new holder. Cancelling ctx gives up the place in line (the key is
// deleted, the lease kept). log (nil: none) hears of keep-alives renewed.
func Acquire(ctx context.Context, cli *clientv3.Client, id int64, me Holder, waiting func(Holder), log *slog.Logger) (*Lock, error) {
	checked := time.Now()
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return nil, fmt.Errorf("etcd: lease %x: %w", id, err)
	}
	if ttl.TTL <= 0 {
		return nil, fmt.Errorf("%w: lease %x", ErrLeaseExpired, id)
	}
	// The mutex needs a session for its lease and client only: the session's own keep-alive
	// is stopped at once, and the Lock keeps the lease alive itself (keepalive.go).
	sess, err := concurrency.NewSession(cli, concurrency.WithLease(clientv3.LeaseID(id)))
	if err != nil {
		return nil, fmt.Errorf("etcd: lease %x: %w", id, err)
	}
	sess.Orphan()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Lock{cli: cli, mutex: concurrency.NewMutex(sess, LockPrefix), ID: id,
		ttl: time.Duration(ttl.GrantedTTL) * time.Second, log: log,
		expires:  checked.Add(time.Duration(ttl.TTL) * time.Second),
		detached: make(chan struct{}), lost: make(chan struct{})}
	ch, err := l.keepAlive()
	if err != nil {
		return nil, fmt.Errorf("etcd: keep lease %x alive: %w", id, err)
	}
	go l.watch(ch)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- l.mutex.Lock(lctx) }()
	var last Holder
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	report := func() {
		// Bounded: a starved member must not hold up the loop that watches done and lost.
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		defer rcancel()
		h, ok, err := CurrentHolder(rctx, cli)
		// A holder that has not marked its key yet is reported once it has (a tick later).
		if err == nil && ok && h.Lease != id && h.Node != "" && h != last {
			last = h
			waiting(h)
		}
	}
	report()
	for {
		select {
		case err := <-done:
			if err != nil {
				l.Detach() // stop the keep-alive; the lease stays for the caller to revoke
				return nil, fmt.Errorf("etcd: upgrade lock: %w", err)
			}
			l.mu.Lock()
			l.held = true
			l.mu.Unlock()
			if err := l.mark(ctx, me); err != nil {
				l.Detach() // the caller gets no lock to stop: stop its keep-alive here
				return nil, err
			}
			return l, nil
		case <-l.lost:
			cancel()
			<-done
			return nil, fmt.Errorf("%w while waiting for the lock: %s", ErrLeaseExpired, l.Reason())
		case <-tick.C:
			report()
		}
	}
}

// mark writes who holds the lock into the holder's key: since now, or since an earlier "since"
// of the same node (a lock resumed after a reboot has been held since before it).
func (l *Lock) mark(ctx context.Context, me Holder) error {
	me.Lease = l.ID
	me.Since = time.Now().UTC()
	gctx, cancel := context.WithTimeout(ctx, markTry)
	if resp, err := l.cli.Get(gctx, l.mutex.Key()); err == nil && len(resp.Kvs) > 0 {
		var prev Holder
		if json.Unmarshal(resp.Kvs[0].Value, &prev) == nil && !prev.Since.IsZero() && prev.Node == me.Node {
			me.Since = prev.Since
		}
	}
	cancel()
	b, _ := json.Marshal(me)
	// The key's create revision (its place in line) is unchanged by a put, and the same put
	// again changes nothing: it is tried again, each try bounded, while ctx lasts. The
	// client's connection to a member that froze just now (seen in e2e: a guest stopped
	// right after this node took the lock) fails a put only when its keep-alive ping times
	// out, 25 s later; the next try goes to another member. Only the lease gone, or a
	// refusal, ends it at once.
	var err error
	for try := 0; ; try++ {
		pctx, cancel := context.WithTimeout(ctx, markTry)
		_, err = l.cli.Put(pctx, l.mutex.Key(), string(b), clientv3.WithLease(clientv3.LeaseID(l.ID)))
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) || !askAgain(err) || ctx.Err() != nil || try == markTries-1 {
			return fmt.Errorf("etcd: mark lock holder (%d tries): %w", try+1, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd: mark lock holder (%d tries): %w", try+1, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// markTry bounds one try of the holder's mark, so that a try stuck on a frozen member's
// connection gives way to the next; markTries bounds them all.
const (
	markTry   = 5 * time.Second
	markTries = 6
)

// Revoke revokes a lease by id; one that is already gone counts as revoked.
func Revoke(ctx context.Context, cli *clientv3.Client, id int64) error {
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(id)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("etcd: revoke lease %x: %w", id, err)
	}
	return nil
}

// CurrentHolder returns who holds the upgrade lock, if anyone.
func CurrentHolder(ctx context.Context, cli *clientv3.Client) (Holder, bool, error) {
	resp, err := cli.Get(ctx, LockPrefix+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return Holder{}, false, fmt.Errorf("etcd: lock holder: %w", err)
	}
	return holder(resp)
}

// HolderHint is who holds the upgrade lock as the first member to answer knows it, leader or
// not (a serializable read): quick while the cluster elects, possibly stale. Only for advice:
// taking the lock is what orders upgrades.
func HolderHint(ctx context.Context, cli *clientv3.Client) (Holder, bool, error) {
	resp, err := first(ctx, cli, func(ctx context.Context, conn *grpc.ClientConn) (*clientv3.GetResponse, error) {
		return clientv3.NewKVFromKVClient(pb.NewKVClient(conn), nil).Get(ctx, LockPrefix+"/", append(clientv3.WithFirstCreate(), clientv3.WithSerializable())...)
	})
	if err != nil {
		return Holder{}, false, fmt.Errorf("etcd: lock holder: %w", err)
	}
	return holder(resp)
}

func holder(resp *clientv3.GetResponse) (Holder, bool, error) {
	if len(resp.Kvs) == 0 {
		return Holder{}, false, nil
	}
	kv := resp.Kvs[0]
	var h Holder
	_ = json.Unmarshal(kv.Value, &h) // empty until the holder marks it
	h.Lease = kv.Lease
	if h.Lease == 0 {
		// Parse the id from the key as a fallback.
		fmt.Sscanf(strings.TrimPrefix(string(kv.Key), LockPrefix+"/"), "%x", &h.Lease)
	}
	return h, true, nil
}
