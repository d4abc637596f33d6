package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Lock is the upgrade lock held (or being waited for) under one lease, kept alive until
// Release or Detach.
//
// The Lock keeps the lease alive itself and knows, from each renewal the cluster confirms,
// until when the cluster may hold the lease without another (expires). etcd's client ends a
// keep-alive stream whose first answer takes longer than its dial timeout + 1 s (a starved
// member, a slow leader change), although the lease may have most of its TTL left: such an
// end is not the loss of the lease. The Lock asks the cluster again (a keep-alive of its own,
// which renews) and keeps a lease it confirms, whose lock key is still there, alive with a new
// stream. The lease is lost when the cluster says it is gone, the lock key is gone, or no
// renewal was confirmed before expires (less a margin): from then on another node may hold the
// lock, and the upgrade must not go on as if this one did.
type Lock struct {
	cli   *clientv3.Client
	mutex *concurrency.Mutex
	ID    int64
	ttl   time.Duration // as granted
	log   *slog.Logger

	mu       sync.Mutex
	expires  time.Time          // the cluster may drop the lease from then on, unless renewed again
	renewal  time.Time          // the last renewal the cluster confirmed
	stopKA   context.CancelFunc // ends the current keep-alive stream
	stopped  bool               // Detach or Release: the keep-alive's end is ours
	held     bool               // the lock key is made and first in line
	detached chan struct{}
	lost     chan struct{}
	reason   string
}

// margin is how long before expires a lease without a confirmed renewal counts as lost: etcd
// counts the TTL from when it renewed, a little before the answer arrived here. 2 s, and at
// most a sixth of the TTL: keep-alives go out every third of it.
func (l *Lock) margin() time.Duration { return min(2*time.Second, l.ttl/6) }

// onKeepAlive, when set (by tests), is called with each keep-alive stream a Lock opens.
var onKeepAlive func(*Lock)

// keepAlive opens a new keep-alive stream for the lease.
func (l *Lock) keepAlive() (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := l.cli.KeepAlive(ctx, clientv3.LeaseID(l.ID))
	if err != nil {
		cancel()
		return nil, err
	}
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		cancel()
		return nil, errStopped
	}
	l.stopKA = cancel
	l.mu.Unlock()
	if onKeepAlive != nil {
		onKeepAlive(l)
	}
	return ch, nil
}

var errStopped = errors.New("etcd: lock detached")

// renewed records a renewal the cluster confirmed at (or after) at, for ttl seconds.
func (l *Lock) renewed(at time.Time, ttl int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := at.Add(time.Duration(ttl) * time.Second); e.After(l.expires) {
		l.expires, l.renewal = e, at
	}
}

func (l *Lock) deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expires.Add(-l.margin())
}

// watch follows the keep-alive streams one after the other until the lease is lost or the
// lock stopped.
func (l *Lock) watch(ch <-chan *clientv3.LeaseKeepAliveResponse) {
	for {
		l.follow(ch)
		l.mu.Lock()
		stopped := l.stopped
		l.mu.Unlock()
		if stopped {
			return
		}
		var err error
		ch, err = l.renew()
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

// follow records the stream's renewals until it ends, the lock stops, or the lease's
// deadline passes without one (then the stream is ended here).
func (l *Lock) follow(ch <-chan *clientv3.LeaseKeepAliveResponse) {
	for {
		timer := time.NewTimer(time.Until(l.deadline()))
		select {
		case resp, ok := <-ch:
			timer.Stop()
			if !ok {
				return
			}
			// The answer arrived now; the cluster renewed a little before.
			l.renewed(time.Now(), resp.TTL)
		case <-timer.C:
			l.mu.Lock()
			l.stopKA()
			l.mu.Unlock()
			for range ch {
			}
			return
		case <-l.detached:
			timer.Stop()
			return
		}
	}
}

// renew asks the cluster about the lease whose keep-alive stream ended, renewing it, and
// opens a new stream if it lives and its lock key is still there (or not made yet). It gives
// up when the lease's deadline passes without a confirmed renewal.
func (l *Lock) renew() (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	id := clientv3.LeaseID(l.ID)
	end := time.Now()
	for {
		left := time.Until(l.deadline())
		if left <= 0 {
			l.mu.Lock()
			last := l.renewal
			l.mu.Unlock()
			since := "none since the lock was taken"
			if !last.IsZero() {
				since = "the last " + time.Since(last).Round(100*time.Millisecond).String() + " ago"
			}
			return nil, fmt.Errorf("lease %x: no renewal confirmed by etcd in time (TTL %s; %s): it may expire before another is", l.ID, l.ttl, since)
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), min(5*time.Second, left))
		resp, err := l.cli.KeepAliveOnce(ctx, id)
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return nil, fmt.Errorf("lease %x is gone (expired or revoked)", l.ID)
		}
		if err == nil {
			l.renewed(sent, resp.TTL)
			err = l.checkKey()
		}
		if errors.Is(err, errKeyGone) {
			return nil, err
		}
		if err == nil {
			var ch <-chan *clientv3.LeaseKeepAliveResponse
			if ch, err = l.keepAlive(); errors.Is(err, errStopped) {
				return nil, nil
			}
			if err == nil {
				l.log.Warn("etcd: the upgrade lease's keep-alive ended but etcd confirmed the lease: kept alive anew",
					"lease", fmt.Sprintf("%x", l.ID), "after", time.Since(end).Round(time.Millisecond))
				return ch, nil
			}
		}
		select {
		case <-time.After(min(time.Second, max(left, 0))):
		case <-l.detached:
			return nil, nil
		}
	}
}

var errKeyGone = errors.New("etcd: lock key gone")

// checkKey makes sure a held lock's key is still there, under this lease.
func (l *Lock) checkKey() error {
	l.mu.Lock()
	held := l.held
	l.mu.Unlock()
	if !held {
		return nil
	}
	key := fmt.Sprintf("%s/%x", LockPrefix, l.ID) // the mutex's key: its prefix and the lease in hex
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := l.cli.Get(ctx, key)
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].Lease != l.ID {
		return fmt.Errorf("%w: lease %x lives but its lock key %s is gone", errKeyGone, l.ID, key)
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
		if l.stopKA != nil {
			l.stopKA()
		}
	}
}

// Release revokes the lease: the lock key and anything else bound to it go at once.
func (l *Lock) Release(ctx context.Context) error {
	l.Detach()
	return Revoke(ctx, l.cli, l.ID)
}
