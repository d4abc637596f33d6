package upgrade

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// The Executor is the one owner of the upgrade record. A single goroutine takes inputs from
// one queue — API calls, the boot, effect outcomes and progress, retry timers, the lease
// watch — and for each: Step, persist (synced) before anything else, then start the next
// action. One action runs at a time, in its own goroutine, under a context the executor
// cancels when the record moves on without it (a cancel, a lost lease); the outcome of such
// an action, and anything it posts, is recognised by its run tag and discarded.
//
// Nothing calls into the executor but through that queue, and it calls out only through
// Effects and OnChange: readers get copies (Record).

// Store persists the record's payload (META: synced before Write returns).
type Store interface {
	Write(payload []byte) error
}

// Options configure an Executor.
type Options struct {
	Store   Store
	Effects Effects
	Log     *slog.Logger
	Now     func() time.Time // default time.Now().UTC()
	// OnChange is called from the executor's goroutine after each change of the record (in
	// order, after it is persisted or, if META cannot be written, known to be memory only).
	OnChange func(prev, cur Record, ev Event)
	// RetryMin and RetryMax bound the backoff of obligations that failed (uncordon, release,
	// rejoin, keep-lease): default 1 s doubling to 30 s.
	RetryMin, RetryMax time.Duration
	// PersistBackoff is the first pause between the three tries of a META write (default
	// 20 ms, doubling).
	PersistBackoff time.Duration
	// Idle, if set, is called whenever the executor has nothing running, queued or owed to a
	// retry timer (tests wait on it); persisted is false while META cannot be written (the
	// record is retried, and actions that need it wait).
	Idle func(r Record, persisted bool)
}

// Errors of the executor's calls.
var (
	ErrStopped = errors.New("upgrade: the executor is stopped")
	ErrRefused = errors.New("upgrade: refused")
	// ErrStale: the staged upgrade can never be activated (its version is below a floor
	// raised since, its key expired): discard it. Always with ErrRefused.
	ErrStale    = errors.New("the staged upgrade can no longer be activated")
	ErrPersist  = errors.New("upgrade: cannot persist the record")
	ErrShutdown = errors.New("upgrade: the node is shutting down")
)

// Executor runs upgrades. Build it with NewExecutor, start it with Run.
type Executor struct {
	o Options

	qmu    sync.Mutex
	queue  []input
	notify chan struct{}
	done   chan struct{} // closed when Run returns

	smu  sync.Mutex
	snap Record // the record as of the last change, for readers

	actions sync.WaitGroup // the goroutines of started actions (Stop waits for them)

	// Owned by the loop.
	rec, disk Record // in memory; as last written
	diskBytes []byte // disk, encoded: a record that encodes the same is not written again
	degraded  bool   // META writes fail: rec is ahead of disk (retried by a timer)
	blocked   bool   // and the queued actions that need rec on META wait for it
	persistT  *time.Timer
	persistW  time.Duration
	acts      []Action
	run       *running
	// cancelled is a run the record moved on from: nothing else starts until it has returned
	// (effects honour their context), so two effects never overlap.
	cancelled *running
	tag       uint64
	ready     bool
	booted    bool   // the boot event is stepped: API calls are taken from then on
	trust     *Trust // the boot's signature policy, for activations
	bootWait  []chan error
	rollWait  chan error
	retries   map[string]*retry
	stopped   bool
}

type running struct {
	act    Action
	tag    uint64
	cancel context.CancelFunc
}

type retry struct {
	act   Action
	wait  time.Duration
	timer *time.Timer
}

type input interface{}

type (
	postIn struct {
		ev  Event
		tag uint64
	} // tag 0: from outside any run
	doneIn struct {
		tag uint64
		out outcome
	}
	retryIn struct{ key string }
	callIn  struct {
		ev    Event
		reply chan error
	}
	bootIn struct {
		ev    Booted
		reply chan error
	}
	rollbackIn struct {
		ev    RollbackRequest
		reply chan error
	}
	readyIn   struct{}
	persistIn struct{}
	stopIn    struct{}
)

// outcome is what an action ended with: an event to step, or an error to retry it after.
type outcome struct {
	ev    Event
	retry error
}

// NewExecutor returns an executor for rec, the record read from META at boot.
func NewExecutor(rec Record, o Options) *Executor {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = func() time.Time { return time.Now().UTC() }
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 30 * time.Second
	}
	if o.PersistBackoff <= 0 {
		o.PersistBackoff = 20 * time.Millisecond
	}
	e := &Executor{o: o, rec: rec, disk: rec, snap: rec.Clone(), notify: make(chan struct{}, 1), done: make(chan struct{}), retries: map[string]*retry{}}
	e.diskBytes, _ = rec.Encode()
	return e
}

// Run is the executor's loop; it returns when ctx ends or Stop is called.
func (e *Executor) Run(ctx context.Context) {
	defer close(e.done)
	for {
		e.qmu.Lock()
		batch := e.queue
		e.queue = nil
		e.qmu.Unlock()
		for _, in := range batch {
			e.handle(ctx, in)
			if e.stopped {
				return
			}
		}
		if len(batch) > 0 {
			e.next(ctx)
			continue
		}
		select {
		case <-e.notify:
		case <-ctx.Done():
			e.shutdown()
			return
		}
	}
}

func (e *Executor) handle(ctx context.Context, in input) {
	switch in := in.(type) {
	case postIn:
		if in.tag != 0 && (e.run == nil || e.run.tag != in.tag) {
			e.o.Log.Debug("upgrade: event from a cancelled action dropped", "event", fmt.Sprintf("%T", in.ev))
			return
		}
		if err := e.apply(in.ev, in.tag != 0); err != nil {
			e.o.Log.Warn("upgrade: event refused", "event", fmt.Sprintf("%T", in.ev), "err", err)
		}
	case doneIn:
		if e.cancelled != nil && e.cancelled.tag == in.tag {
			e.cancelled = nil
			e.o.Log.Debug("upgrade: cancelled action returned; its outcome dropped", "event", fmt.Sprintf("%T", in.out.ev))
			return
		}
		if e.run == nil || e.run.tag != in.tag {
			e.o.Log.Debug("upgrade: outcome of a cancelled action dropped", "event", fmt.Sprintf("%T", in.out.ev))
			return
		}
		a := e.run.act
		e.run.cancel()
		e.run = nil
		if in.out.retry != nil {
			e.scheduleRetry(a, in.out.retry)
		} else {
			delete(e.retries, a.String())
		}
		if in.out.ev != nil {
			if err := e.apply(in.out.ev, true); err != nil {
				e.o.Log.Warn("upgrade: outcome refused", "action", a.String(), "event", fmt.Sprintf("%T", in.out.ev), "err", err)
			}
		}
	case retryIn:
		r := e.retries[in.key]
		if r == nil {
			return
		}
		r.timer = nil
		if e.owed(r.act) {
			e.acts = append(e.acts, r.act)
		} else {
			delete(e.retries, in.key)
		}
	case callIn:
		if !e.booted {
			in.reply <- fmt.Errorf("%w: the node is still booting", ErrBusy)
			return
		}
		in.reply <- e.callEvent(in.ev)
	case rollbackIn:
		if !e.booted {
			in.reply <- fmt.Errorf("%w: the node is still booting", ErrBusy)
			return
		}
		if e.o.Effects.Power != nil && e.o.Effects.Power.Down() {
			in.reply <- ErrShutdown
			return
		}
		if err := e.finishing(); err != nil {
			in.reply <- err
			return
		}
		in.ev.Now = e.o.Now()
		if err := e.applyCall(in.ev); err != nil {
			in.reply <- err
			return
		}
		e.rollWait = in.reply
	case bootIn:
		in.ev.Now = e.o.Now()
		e.booted = true
		e.trust = in.ev.Trust
		if err := e.apply(in.ev, false); err != nil {
			in.reply <- err
			return
		}
		// The actions that must precede the mounts go first; the rest wait for Ready.
		var early, late []Action
		for _, a := range e.acts {
			if isEarly(a) {
				early = append(early, a)
			} else {
				late = append(late, a)
			}
		}
		e.acts = append(early, late...)
		e.bootWait = append(e.bootWait, in.reply)
	case readyIn:
		e.ready = true
	case persistIn:
		e.persistT = nil
		if !e.degraded {
			return
		}
		if err := e.persist(e.rec); err != nil {
			e.schedulePersist()
			return
		}
		e.persistW = 0
		e.o.Log.Info("upgrade: the record is on META again")
	case stopIn:
		e.shutdown()
	}
}

// apply steps ev, persists, and queues its actions. own says ev comes from the running action.
func (e *Executor) apply(ev Event, own bool) error {
	n, acts, err := Step(e.rec, ev)
	if err != nil {
		return err
	}
	if perr := e.persist(n); perr != nil {
		e.o.Log.Error("upgrade: cannot persist the record", "event", fmt.Sprintf("%T", ev), "err", perr)
		_, boot := ev.(Booted)
		ending := e.disk.Active() || e.disk.RollingBack != nil || n.RollingBack != nil
		if boot || e.degraded || !ending {
			// Keep the record in memory; its actions that need it on META wait until a write
			// succeeds (retried). A boot: ending the upgrade from the old record instead could
			// reboot into the same boot again, for ever. Nothing in flight (an obligation done,
			// say): nothing to end, and the next boot would redo what META still owes.
			e.blocked = true
		} else {
			// End the upgrade from what META holds, by a path that needs no further write.
			pf := PersistFailed{Reason: perr.Error(), Now: e.o.Now()}
			n, acts, _ = Step(e.disk, pf)
			ev, own = pf, false
			if e.persist(n) != nil {
				e.degraded = true
			}
		}
		if e.degraded || e.blocked {
			e.degraded = true
			e.schedulePersist()
		}
	}
	e.commit(n, acts, ev, own)
	return nil
}

// persist writes r, trying again briefly: a transient I/O error must not end an upgrade.
func (e *Executor) persist(r Record) error {
	b, err := r.Encode()
	if err != nil {
		return err
	}
	if bytes.Equal(b, e.diskBytes) && !e.degraded {
		return nil // META holds it already (a boot that changes nothing, say)
	}
	for i := range 3 {
		if err = e.o.Store.Write(b); err == nil {
			e.disk, e.diskBytes, e.degraded, e.blocked = r, b, false, false
			return nil
		}
		if i < 2 {
			time.Sleep(e.o.PersistBackoff << i)
		}
	}
	return err
}

// commit makes n the record. An event from outside the running action that moves the upgrade
// (a cancel, a lost lease, a boot) cancels that action and the actions queued behind it.
func (e *Executor) commit(n Record, acts []Action, ev Event, own bool) {
	prev := e.rec
	e.rec = n
	e.smu.Lock()
	e.snap = n.Clone()
	e.smu.Unlock()
	if !own && moved(prev, n) {
		if e.run != nil {
			e.o.Log.Info("upgrade: cancelling the running action", "action", e.run.act.String())
			e.run.cancel()
			e.cancelled, e.run = e.run, nil
		}
		e.acts = nil
	}
	e.acts = append(append([]Action(nil), acts...), e.acts...)
	if e.o.OnChange != nil {
		e.o.OnChange(prev, n, ev)
	}
	e.answerRollback(prev, n, ev)
}

// moved reports whether the upgrade (or rollback) in flight changed identity or state.
func moved(a, b Record) bool {
	id := func(r Record) string {
		s := ""
		if r.Current != nil {
			s = r.Current.ID + "/" + string(r.Current.State)
		}
		if r.RollingBack != nil {
			s += "/rollback-" + r.RollingBack.Phase
		}
		return s
	}
	return id(a) != id(b)
}

func (e *Executor) answerRollback(prev, n Record, ev Event) {
	if e.rollWait == nil || n.RollingBack != nil {
		return
	}
	var err error
	switch ev := ev.(type) {
	case RollbackCommitted:
	case RollbackRefused:
		err = fmt.Errorf("%w: slot %s holds no verified image: %s", ErrRefused, prev.RollingBack.To, ev.Reason)
	case RollbackVerified:
		err = fmt.Errorf("%w: slot %s holds %s, below the rollback floor %s (upgrade.min_version)", ErrRefused, prev.RollingBack.To, ev.Version, n.Floor)
	case RollbackFailed:
		err = fmt.Errorf("rollback: %s", ev.Reason)
	case PersistFailed:
		err = fmt.Errorf("%w: %s", ErrPersist, ev.Reason)
	default:
		err = fmt.Errorf("rollback: ended by %T", ev)
	}
	e.rollWait <- err
	e.rollWait = nil
}

// next starts the next action, unless one runs, or the node is not ready for it.
func (e *Executor) next(ctx context.Context) {
	if e.cancelled != nil {
		return // the next action waits for the cancelled one to return
	}
	for e.run == nil && len(e.acts) > 0 {
		a := e.acts[0]
		if !e.ready && !isEarly(a) {
			break
		}
		if e.blocked && !safeUnpersisted(a) {
			break // waits for the record to reach META
		}
		e.acts = e.acts[1:]
		if isObligation(a) && !e.owed(a) {
			continue // discharged meanwhile (a rejoin settled at boot, a retry overtaken)
		}
		e.start(ctx, a)
	}
	// The boot goes on once its early actions are done, or cannot be done now (waiting for
	// META): a node must come up whenever it can.
	if e.run == nil && (len(e.acts) == 0 || !isEarly(e.acts[0]) || e.blocked) {
		for _, w := range e.bootWait {
			w <- nil
		}
		e.bootWait = nil
	}
	if e.booted && e.run == nil && (len(e.acts) == 0 || e.blocked) && e.o.Idle != nil && !e.timersPending() {
		e.o.Idle(e.rec.Clone(), !e.degraded)
	}
}

func (e *Executor) timersPending() bool {
	for _, r := range e.retries {
		if r.timer != nil {
			return true
		}
	}
	return false
}

func (e *Executor) start(ctx context.Context, a Action) {
	e.tag++
	tag := e.tag
	actx, cancel := context.WithCancel(ctx)
	e.run = &running{act: a, tag: tag, cancel: cancel}
	post := func(ev Event) { e.enqueue(postIn{ev: ev, tag: tag}) }
	e.o.Log.Debug("upgrade: action", "action", a.String(), "detail", fmt.Sprintf("%#v", a))
	e.actions.Add(1)
	go func() {
		defer e.actions.Done()
		out := e.perform(actx, a, post)
		e.enqueue(doneIn{tag: tag, out: out})
	}()
}

// schedulePersist tries writing the record again later, backing off.
func (e *Executor) schedulePersist() {
	if e.persistT != nil {
		return
	}
	e.persistW = min(max(2*e.persistW, e.o.RetryMin), e.o.RetryMax)
	e.persistT = time.AfterFunc(e.persistW, func() { e.enqueue(persistIn{}) })
}

func (e *Executor) scheduleRetry(a Action, err error) {
	key := a.String()
	r := e.retries[key]
	if r == nil {
		r = &retry{act: a, wait: e.o.RetryMin}
		e.retries[key] = r
	} else {
		r.act = a
		r.wait = min(2*r.wait, e.o.RetryMax)
		if r.timer != nil {
			r.timer.Stop() // one retry chain per obligation
		}
	}
	e.o.Log.Warn("upgrade: "+key+" failed; retrying", "err", err, "in", r.wait)
	r.timer = time.AfterFunc(r.wait, func() { e.enqueue(retryIn{key: key}) })
}

// owed reports whether an obligation is still owed by the record.
func (e *Executor) owed(a Action) bool {
	u := e.rec.Current
	if u == nil {
		return false
	}
	switch a := a.(type) {
	case ActWipe:
		return u.ID == a.ID && u.Wipe
	case ActUncordon:
		return u.ID == a.ID && u.Uncordon
	case ActRejoin:
		return u.ID == a.ID && u.Rejoin
	case ActRelease:
		return u.ID == a.ID && u.Lease == a.Lease
	case ActKeepLease:
		return u.ID == a.ID && u.Lease == a.Lease && !u.State.Terminal()
	}
	return true
}

func isObligation(a Action) bool {
	switch a := a.(type) {
	case ActWipe:
		return a.Resume
	case ActUncordon, ActRejoin, ActRelease, ActKeepLease:
		return true
	}
	return false
}

// isEarly: actions a boot performs before mounting (EPHEMERAL is re-made before it is
// mounted; a stale trial must be disarmed before anything can reboot).
func isEarly(a Action) bool {
	switch a.(type) {
	case ActWipe, ActDisarm:
		return true
	}
	return false
}

func (e *Executor) shutdown() {
	e.stopped = true
	for _, r := range []*running{e.run, e.cancelled} {
		if r != nil {
			r.cancel()
		}
	}
	e.run, e.cancelled = nil, nil
	for _, r := range e.retries {
		if r.timer != nil {
			r.timer.Stop()
		}
	}
	if e.persistT != nil {
		e.persistT.Stop()
	}
	for _, w := range e.bootWait {
		w <- ErrStopped
	}
	e.bootWait = nil
	if e.rollWait != nil {
		e.rollWait <- ErrShutdown
		e.rollWait = nil
	}
}
