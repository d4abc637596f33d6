package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
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

// Lock is the upgrade lock held (or being waited for) under one lease, kept alive until
// Release or Detach.
//
// The lease outlives its keep-alive stream: etcd's client ends a keep-alive whose first answer
// takes longer than its dial timeout + 1 s, or that gets no answer for a TTL, while the
// cluster may still hold the lease (a starved or partitioned member, a slow leader change).
// So the end of a keep-alive is not taken as the loss of the lease: the cluster is asked (a
// keep-alive of its own, which also renews), and a living lease whose lock key is still there is
// kept alive by a new stream. Only a lease the cluster says is gone, a lock key gone, or no
// answer for a whole TTL since the stream ended counts as lost.
type Lock struct {
	cli   *clientv3.Client
	mutex *concurrency.Mutex
	ID    int64
	ttl   time.Duration // as granted
	log   *slog.Logger

	mu       sync.Mutex
	sess     *concurrency.Session
	stopped  bool // Detach or Release: the keep-alive's end is ours
	held     bool // the lock key is made and first in line
	detached chan struct{}
	lost     chan struct{}
	reason   string
}

// Acquire takes the upgrade lock under lease id (me.Since is set to when it is held), which it
// keeps alive from now on. A lease granted before a reboot is resumed with the same id: its key
// is still first in line, so the lock is held again at once. While another node holds the lock,
// waiting is called with each new holder. Cancelling ctx gives up the place in line (the key is
// deleted, the lease kept). log (nil: none) hears of keep-alives renewed.
func Acquire(ctx context.Context, cli *clientv3.Client, id int64, me Holder, waiting func(Holder), log *slog.Logger) (*Lock, error) {
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return nil, fmt.Errorf("etcd: lease %x: %w", id, err)
	}
	if ttl.TTL <= 0 {
		return nil, fmt.Errorf("%w: lease %x", ErrLeaseExpired, id)
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithLease(clientv3.LeaseID(id)))
	if err != nil {
		return nil, fmt.Errorf("etcd: keep lease %x alive: %w", id, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Lock{cli: cli, sess: sess, mutex: concurrency.NewMutex(sess, LockPrefix), ID: id,
		ttl: time.Duration(ttl.GrantedTTL) * time.Second, log: log,
		detached: make(chan struct{}), lost: make(chan struct{})}
	go l.watch()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- l.mutex.Lock(lctx) }()
	var last Holder
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	report := func() {
		h, ok, err := CurrentHolder(ctx, cli)
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
			return l, l.mark(ctx, me)
		case <-l.lost:
			cancel()
			<-done
			return nil, fmt.Errorf("%w while waiting for the lock: %s", ErrLeaseExpired, l.Reason())
		case <-tick.C:
			report()
		}
	}
}

// watch follows the keep-alive streams one after the other until the lease is lost or the
// lock stopped.
func (l *Lock) watch() {
	for {
		l.mu.Lock()
		sess := l.sess
		l.mu.Unlock()
		select {
		case <-sess.Done():
		case <-l.detached:
			return
		}
		err := l.renew(time.Now())
		l.mu.Lock()
		if l.stopped {
			l.mu.Unlock()
			return
		}
		if err != nil {
			l.reason = err.Error()
			close(l.lost)
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
	}
}

// renew asks the cluster about the lease whose keep-alive stream ended at end, and keeps it
// alive by a new stream if it lives and its lock key is still there (or not made yet).
func (l *Lock) renew(end time.Time) error {
	id := clientv3.LeaseID(l.ID)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := l.cli.KeepAliveOnce(ctx, id)
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("lease %x is gone (expired or revoked)", l.ID)
		}
		l.mu.Lock()
		held := l.held
		l.mu.Unlock()
		if err == nil && held {
			// The mutex's key: its prefix and the lease in hex.
			key := fmt.Sprintf("%s/%x", LockPrefix, l.ID)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, gerr := l.cli.Get(ctx, key)
			cancel()
			if gerr == nil && (len(resp.Kvs) == 0 || resp.Kvs[0].Lease != l.ID) {
				return fmt.Errorf("lease %x lives but its lock key %s is gone", l.ID, key)
			}
			err = gerr
		}
		if err == nil {
			sess, serr := concurrency.NewSession(l.cli, concurrency.WithLease(id))
			if serr == nil {
				l.mu.Lock()
				if l.stopped {
					sess.Orphan()
				} else {
					l.sess = sess
				}
				l.mu.Unlock()
				l.log.Warn("etcd: the upgrade lease's keep-alive ended but the cluster still holds the lease: kept alive anew", "lease", fmt.Sprintf("%x", l.ID), "after", time.Since(end).Round(time.Millisecond))
				return nil
			}
			err = serr
		}
		if time.Since(end) > l.ttl {
			return fmt.Errorf("lease %x: no answer from etcd for %s since its keep-alive ended (TTL %s): %v", l.ID, time.Since(end).Round(time.Second), l.ttl, err)
		}
		select {
		case <-time.After(time.Second):
		case <-l.detached:
			return nil
		}
	}
}

// mark writes who holds the lock into the holder's key: since now, or since an earlier "since"
// of the same node (a lock resumed after a reboot has been held since before it).
func (l *Lock) mark(ctx context.Context, me Holder) error {
	me.Lease = l.ID
	me.Since = time.Now().UTC()
	if resp, err := l.cli.Get(ctx, l.mutex.Key()); err == nil && len(resp.Kvs) > 0 {
		var prev Holder
		if json.Unmarshal(resp.Kvs[0].Value, &prev) == nil && !prev.Since.IsZero() && prev.Node == me.Node {
			me.Since = prev.Since
		}
	}
	b, _ := json.Marshal(me)
	// The key's create revision (its place in line) is unchanged by a put.
	if _, err := l.cli.Put(ctx, l.mutex.Key(), string(b), clientv3.WithLease(clientv3.LeaseID(l.ID))); err != nil {
		return fmt.Errorf("etcd: mark lock holder: %w", err)
	}
	return nil
}

// Lost is closed when the lease can no longer be kept alive (Reason says why); never after
// Detach or Release.
func (l *Lock) Lost() <-chan struct{} { return l.lost }

// Detached is closed by Detach and Release.
func (l *Lock) Detached() <-chan struct{} { return l.detached }

// Reason says why the lease was lost ("" while it is not).
func (l *Lock) Reason() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reason
}

// Detach stops keeping the lease alive without revoking it: the node is about to reboot and
// will resume it. If it does not come back, the lease expires after its TTL.
func (l *Lock) Detach() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.stopped = true
		close(l.detached)
		l.sess.Orphan()
	}
}

// Release revokes the lease: the lock key and anything else bound to it go at once.
func (l *Lock) Release(ctx context.Context) error {
	l.Detach()
	return Revoke(ctx, l.cli, l.ID)
}

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
