package upgrade

// The world model's Kubernetes and etcd sides (world_test.go has the rest): each effect checks
// the invariants that concern it and changes the world as the real one would.

import (
	"context"
	"errors"
)

// Kube.
func (f *fx) Cordon(ctx context.Context) (ours, skipped bool, err error) {
	w := f.w
	if f.do("cordon", func(string) bool {
		switch {
		case w.noKube:
			skipped = true
		case w.foreign:
		default:
			w.ourCordon = true // lands even if the power goes before the answer
			ours = true
		}
		return true
	}) {
		return false, false, ctx.Err()
	}
	return ours, skipped, nil
}

func (f *fx) Drain(ctx context.Context, a ActDrain) error {
	if f.do("drain", func(string) bool { return true }) {
		return ctx.Err()
	}
	if f.w.drainFails {
		return errors.New("drain blocked by PodDisruptionBudget ns/db")
	}
	return nil
}

func (f *fx) Uncordon(ctx context.Context) error {
	if f.do("uncordon", func(string) bool { f.w.ourCordon = false; return true }) {
		return ctx.Err()
	}
	return nil
}

// Cluster.
func (f *fx) Grant(ctx context.Context) (int64, error) {
	if f.do("grant-lease", func(string) bool {
		f.w.leaseAlive = true // granted: exists even if the power goes before it is recorded
		return true
	}) {
		return 0, ctx.Err()
	}
	return 7, nil
}

func (f *fx) Lock(ctx context.Context, lease int64, id string, waiting func(string), lost func(string)) error {
	w := f.w
	busy := false
	if f.do("lock", func(string) bool {
		if !w.leaseAlive || lease != 7 {
			w.fatalf("locking with lease %d, alive %v", lease, w.leaseAlive)
		}
		busy = w.lockBusy
		w.lockHeld = true
		return true
	}) {
		return ctx.Err()
	}
	if busy {
		waiting("n2 since T")
	}
	return nil
}

func (f *fx) KeepLease(ctx context.Context, lease int64, id string, lost func(string)) error {
	w := f.w
	if f.do("keep-lease", func(string) bool {
		if !w.leaseAlive {
			w.fatalf("keep-alive of a lease that does not exist")
		}
		return true
	}) {
		return ctx.Err()
	}
	return nil
}

func (f *fx) Check(ctx context.Context, preserve bool) (string, error) {
	w := f.w
	if f.do("check", func(string) bool {
		if !w.lockHeld {
			w.fatalf("quorum check without the lock")
		}
		return true
	}) {
		return "", ctx.Err()
	}
	if w.checkFails {
		return "", errors.New("restarting n1 leaves 1 of 3 voters healthy, quorum 2")
	}
	return "ok", nil
}

func (f *fx) Prepare(ctx context.Context, id string, preserve, force bool, note func(string)) error {
	w := f.w
	if f.do("prepare-member", func(string) bool {
		if !w.lockHeld {
			w.fatalf("preparing the member without the lock")
		}
		if !w.etcdRunning || w.member != "voter" {
			w.fatalf("preparing a member that is %s (running %v)", w.member, w.etcdRunning)
		}
		w.prepared = !w.snapFails || force
		return true
	}) {
		return ctx.Err()
	}
	if w.snapFails && !force {
		return errors.New("etcd: snapshot does not fit in /state/etcd-snapshots: 90 MiB needed, 12 MiB free")
	}
	note("snapshot saved")
	return nil
}

func (f *fx) Leave(ctx context.Context) error {
	w := f.w
	if f.do("leave-cluster", func(string) bool {
		if !w.lockHeld {
			w.fatalf("leaving the cluster without the lock")
		}
		if !w.prepared {
			w.fatalf("leaving the cluster without a snapshot (or force)")
		}
		w.member = "absent"
		return true
	}) {
		return ctx.Err()
	}
	if w.leaveFails {
		return errors.New("etcdserver: server stopped")
	}
	return nil
}

func (f *fx) Rejoin(ctx context.Context) (string, error) {
	if f.do("rejoin", func(string) bool { f.w.member = "voter"; return true }) {
		return "", ctx.Err()
	}
	return "rejoined", nil
}

func (f *fx) Release(ctx context.Context, lease int64) error {
	if f.do("release-lease", func(string) bool { f.w.leaseAlive, f.w.lockHeld = false, false; return true }) {
		return ctx.Err()
	}
	return nil
}
