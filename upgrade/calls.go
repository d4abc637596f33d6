package upgrade

import (
	"context"
	"fmt"
	"time"

	"keel/boot"
)

// The executor's calls, from any goroutine: each puts an input on the queue and (for the API's
// calls) waits for the loop's answer. Readers get copies of the record.

// Record is a copy of the record as of the last change.
func (e *Executor) Record() Record {
	e.smu.Lock()
	defer e.smu.Unlock()
	return e.snap.Clone()
}

func (e *Executor) enqueue(in input) {
	e.qmu.Lock()
	e.queue = append(e.queue, in)
	e.qmu.Unlock()
	select {
	case e.notify <- struct{}{}:
	default:
	}
}

// Post puts an event from outside any action on the queue (the lease watch, the etcd
// service's rejoin check at boot).
func (e *Executor) Post(ev Event) { e.enqueue(postIn{ev: ev}) }

func (e *Executor) call(ctx context.Context, in input, reply chan error) error {
	select {
	case <-e.done:
		return ErrStopped
	default:
	}
	e.enqueue(in)
	select {
	case err := <-reply:
		return err
	case <-e.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Request starts an upgrade; it returns once the request is persisted (or refused: ErrBusy,
// ErrInvalid, ErrPersist, ErrShutdown).
func (e *Executor) Request(ctx context.Context, r Request) error {
	reply := make(chan error, 1)
	return e.call(ctx, callIn{ev: r, reply: reply}, reply)
}

// Activate goes on with the staged upgrade id ("": whichever is staged): cordon, drain, stop,
// reboot into the staged slot. It returns once that is persisted, or refused: ErrBusy (the
// upgrade is not staged, another one is, or grubenv cannot be read), ErrRefused (its version
// is now below the rollback floor, or its signing key expired since the boot: Trust),
// ErrUnexpected (none in flight), ErrPersist, ErrShutdown.
func (e *Executor) Activate(ctx context.Context, id string) error {
	reply := make(chan error, 1)
	return e.call(ctx, callIn{ev: Activate{ID: id}, reply: reply}, reply)
}

// Cancel ends an upgrade that has changed nothing yet; its running effect is cancelled.
func (e *Executor) Cancel(ctx context.Context, reason string) error {
	reply := make(chan error, 1)
	return e.call(ctx, callIn{ev: Cancel{Reason: reason}, reply: reply}, reply)
}

// Rollback verifies the other slot, commits it and reboots into it. It returns once the slot is
// committed (the reboot follows), or refused: ErrBusy, ErrRefused (the slot holds no whole
// image, or one below the rollback floor, raised to minVersion first), ErrShutdown.
func (e *Executor) Rollback(ctx context.Context, booted boot.Slot, minVersion string) error {
	reply := make(chan error, 1)
	return e.call(ctx, rollbackIn{ev: RollbackRequest{Booted: booted, MinVersion: minVersion}, reply: reply}, reply)
}

// Boot steps the boot event and performs the actions that must precede the mounts (a wipe
// interrupted before, disarming a stale trial); the others wait for Ready.
func (e *Executor) Boot(ctx context.Context, b Booted) error {
	reply := make(chan error, 1)
	return e.call(ctx, bootIn{ev: b, reply: reply}, reply)
}

// Ready says the node is up (mounted, networked, serving): the boot's other actions (trial,
// commit, obligations) may run.
func (e *Executor) Ready() { e.enqueue(readyIn{}) }

// Stop cancels the running action and ends the loop; nothing is performed after it returns.
// It waits up to grace for the running action to return.
func (e *Executor) Stop(grace time.Duration) {
	e.enqueue(stopIn{})
	deadline := time.After(grace)
	select {
	case <-e.done:
	case <-deadline:
		e.o.Log.Warn("upgrade: the executor did not stop in time", "grace", grace)
		return
	}
	// The loop is gone; the actions it started (cancelled) may still be returning.
	idle := make(chan struct{})
	go func() { e.actions.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-deadline:
		e.o.Log.Warn("upgrade: an action did not return in time after the stop", "grace", grace)
	}
}

// Done is closed when Run has returned.
func (e *Executor) Done() <-chan struct{} { return e.done }

// callEvent steps an API call's event. A request must be persisted before it is accepted.
func (e *Executor) callEvent(ev Event) error {
	now := e.o.Now()
	switch r := ev.(type) {
	case Request:
		if e.o.Effects.Power != nil && e.o.Effects.Power.Down() {
			return ErrShutdown
		}
		if err := e.finishing(); err != nil {
			return err
		}
		r.Now = now
		if r.Committed == "" && e.o.Effects.Boot != nil {
			r.Committed = e.o.Effects.Boot.Committed()
			if r.Committed == "" {
				return fmt.Errorf("%w: the bootloader's state (grubenv) cannot be read: no slot can be armed or committed", ErrBusy)
			}
		}
		return e.applyCall(r)
	case Activate:
		if e.o.Effects.Power != nil && e.o.Effects.Power.Down() {
			return ErrShutdown
		}
		// As for a request: a node that cannot arm a slot must not be drained for nothing.
		if e.o.Effects.Boot != nil && e.o.Effects.Boot.Committed() == "" {
			return fmt.Errorf("%w: the bootloader's state (grubenv) cannot be read: no slot can be armed", ErrBusy)
		}
		r.Now, r.Trust = now, e.trust
		return e.applyCall(r)
	case Cancel:
		r.Now = now
		return e.apply(r, false)
	}
	return fmt.Errorf("%w: %T", ErrUnexpected, ev)
}

// finishing refuses a new upgrade or rollback while the last one is in flight (as the record
// says), or its last actions are still queued or running (its reboot into the committed slot,
// say): the new record would cancel them.
func (e *Executor) finishing() error {
	if e.rec.Active() || e.rec.RollingBack != nil {
		return fmt.Errorf("%w: %s", ErrBusy, e.rec.Busy())
	}
	var a Action
	switch {
	case e.run != nil:
		a = e.run.act
	case e.cancelled != nil:
		a = e.cancelled.act
	case len(e.acts) > 0:
		a = e.acts[0]
	default:
		return nil
	}
	return fmt.Errorf("%w: the last upgrade is still finishing (%s)", ErrBusy, a)
}

// applyCall steps a request that is refused unless persisted: nothing has happened yet, so
// nothing is better than something the next boot would not know of.
func (e *Executor) applyCall(ev Event) error {
	n, acts, err := Step(e.rec, ev)
	if err != nil {
		return err
	}
	if err := e.persist(n); err != nil {
		return fmt.Errorf("%w: %v", ErrPersist, err)
	}
	e.commit(n, acts, ev, false)
	return nil
}
