package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"keel/boot"
)

// world models what the executor drives: grubenv, the slots' contents, a GRUB that boots
// next_entry while trial tries remain (spending one first, clearing next_entry before the
// last) or else saved_entry (A when unset), the Kubernetes node,
// an etcd member with the cluster-wide lease and lock, and META. The fake effects below act on
// it; a power cut makes the running incarnation (one boot: an executor and its effects) dead,
// after which nothing it does reaches the world.
type world struct {
	t  testing.TB
	mu sync.Mutex

	saved, next boot.Slot
	tries       int                // trial_tries: boots of next GRUB may still make
	bootable    map[boot.Slot]bool // holds a complete, good image
	newBroken   bool               // the new slot's kernel/init dies before reaching the trial
	unhealthy   bool               // the new slot boots but fails its health gates
	pullFails   bool
	writeFails  bool // the registry fails while the slot streams
	stopFails   bool
	commitFails bool
	noKube      bool // the node has no Kubernetes configuration
	foreign     bool // someone else cordoned the node before the upgrade
	drainFails  bool
	force       bool
	stage       bool // the request stages; the test activates it once it rests
	ourCordon   bool // the API server holds a cordon of ours
	// Control-plane: an etcd member, the cluster-wide lease and lock.
	cp          bool
	wipe        bool   // preserve=false
	lockBusy    bool   // another node holds the lock when this one asks
	checkFails  bool   // the quorum check refuses
	leaveFails  bool   // the member removal is applied but its answer is lost
	snapFails   bool   // the snapshot before the member stops cannot be saved
	prepared    bool   // a snapshot of our member was saved for this upgrade
	leaseAlive  bool   // our lease exists in etcd
	lockHeld    bool   // and holds the upgrade lock
	member      string // how the cluster knows our member: voter, absent, learner
	etcdRunning bool
	booted      boot.Slot
	persisted   Record
	writes      int // META writes that landed
	failWrites  func(n int) bool
	boots       int
	writing     boot.Slot // a slot write in progress
	wipeHalf    bool      // EPHEMERAL's wipe was started and not finished: half-made
	verifying   boot.Slot // a rollback's slot being verified or committed
	log         []string

	actionN   int
	crashAt   map[int]string
	inc       *incarnation
	requested chan struct{} // closed once run's request is accepted (racing tests wait for it)
}

// crash describes where the power goes: at the k-th action executed (counting from 0 over the
// whole run), before, in the middle of, or after its effect.
type crash struct {
	at   int
	mode string // "before", "during", "after"
}

func (w *world) fatalf(format string, args ...any) {
	w.t.Helper()
	w.t.Errorf(format+"\nlog: %v", append(args, w.log)...)
	panic(errFatal)
}

var errFatal = errors.New("world: invariant broken")

func (w *world) grub() boot.Slot {
	for range 10 {
		s := w.saved
		if s == "" {
			s = boot.SlotA
		}
		if w.next != "" {
			s = w.next // save_env before booting
			if w.tries >= 2 {
				w.tries--
			} else {
				w.next, w.tries = "", 0
			}
		}
		w.boots++
		if w.bootable[s] && !(w.newBroken && s == boot.SlotB) {
			return s
		}
		w.log = append(w.log, "panic in slot "+string(s))
		// panic=1: the machine reboots by itself, GRUB again.
	}
	w.fatalf("no bootable slot")
	return ""
}

func (w *world) committed() boot.Slot {
	if w.saved == "" {
		return boot.SlotA
	}
	return w.saved
}

func stateOf(r Record) State {
	if r.Current == nil {
		return ""
	}
	return r.Current.State
}

type idleRec struct {
	r         Record
	persisted bool
}

// incarnation is one boot of the node: its executor and the effects it acts through.
type incarnation struct {
	w    *world
	dead bool
	cut  chan struct{} // closed at the power cut or reboot that ends it
	idle chan idleRec
	ex   *Executor
	// ctx ends when the driver has seen the cut: the dead incarnation's effects wait for it.
	ctx    context.Context
	cancel context.CancelFunc
}

// step counts an action (an effect the executor starts) and returns how the power goes in it.
// dead is true when this incarnation is already gone: the effect must not touch the world.
func (f *incarnation) step(name string) (mode string, dead bool) {
	w := f.w
	if f.dead {
		return "", true
	}
	k := w.actionN
	w.actionN++
	w.log = append(w.log, fmt.Sprintf("%s[%s]", name, stateOf(w.persisted)))
	return w.crashAt[k], false
}

// powerCut ends this incarnation: nothing it does from now on reaches the world. The caller
// holds w.mu; the effect then waits for the executor to be stopped.
func (f *incarnation) powerCut() {
	if !f.dead {
		f.dead = true
		close(f.cut)
	}
}

// fx is the incarnation's effects. Each method takes the world lock for its whole effect:
// effects run one at a time anyway, and a racing API call must see a consistent world.
type fx incarnation

func (f *fx) inc() *incarnation { return (*incarnation)(f) }

// do runs one effect: apply changes the world (partly if mode is "during", when it returns
// false the cut happens before the rest); cut reports the outcome is lost.
func (f *fx) do(name string, apply func(mode string) bool) (lost bool) {
	w := f.w
	w.mu.Lock()
	mode, dead := f.inc().step(name)
	if !dead && mode != "before" {
		whole, broken := applyChecked(apply, mode)
		// An invariant broke (reported by fatalf): end the run here, as a power cut does.
		dead = broken || mode == "during" || mode == "after" || !whole
	} else {
		dead = true
	}
	if dead {
		f.inc().powerCut()
	}
	w.mu.Unlock()
	if dead {
		<-f.ctx.Done() // the machine is off: this effect never returns to an executor that runs
	}
	return dead
}

// applyChecked runs an effect's change of the world; fatalf's panic (the effect runs in the
// executor's goroutine, not the test's) becomes broken.
func applyChecked(apply func(string) bool, mode string) (whole, broken bool) {
	defer func() {
		if r := recover(); r != nil {
			if r != errFatal {
				panic(r)
			}
			broken = true
		}
	}()
	return apply(mode), false
}

// store is the incarnation's META.
type store incarnation

func (f *store) Write(b []byte) error {
	w := f.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if f.dead {
		return errors.New("powered off")
	}
	if w.failWrites != nil && w.failWrites(w.writes) {
		w.log = append(w.log, "META write fails")
		w.writes++
		return errors.New("EIO")
	}
	r, err := Decode(b)
	if err != nil {
		w.fatalf("META payload does not decode: %v", err)
	}
	w.persisted = r
	w.writes++
	return nil
}

// Slots.
func (f *fx) Pull(ctx context.Context, a ActPull) (PullResult, error) {
	var err error
	if f.do("pull", func(string) bool {
		if f.w.pullFails {
			err = errors.New("404")
		}
		return true
	}) {
		return PullResult{}, ctx.Err()
	}
	if err != nil {
		return PullResult{}, err
	}
	return PullResult{Digest: "sha256:d", Version: "v2", SlotSHA256: "s", SlotSize: 10}, nil
}

func (f *fx) Write(ctx context.Context, a ActWriteSlot, progress func(int64, int64)) error {
	w := f.w
	failed := false
	if f.do("write-slot", func(mode string) bool {
		if w.next == a.Slot || w.saved == a.Slot {
			w.fatalf("writing slot %s while grubenv points at it (next %q saved %q)", a.Slot, w.next, w.saved)
		}
		if a.Slot == w.booted {
			w.fatalf("writing the booted slot %s", a.Slot)
		}
		if w.verifying == a.Slot {
			w.fatalf("writing slot %s while a rollback verifies or commits it", a.Slot)
		}
		if a.Image != "r/i@sha256:d" || a.SHA256 != "s" || a.Size != 10 {
			w.fatalf("write-slot of %+v: not the pulled image", a)
		}
		w.bootable[a.Slot] = false
		if mode == "during" {
			return false // a cut mid-write leaves the slot unbootable
		}
		if w.writeFails {
			failed = true
			return true
		}
		w.bootable[a.Slot] = true
		return true
	}) {
		return ctx.Err()
	}
	if failed {
		return errors.New("registry: 503 Service Unavailable")
	}
	progress(10, 10)
	return nil
}

func (f *fx) Verify(ctx context.Context, slot boot.Slot) (string, error) {
	w := f.w
	var ok bool
	if f.do("verify-slot", func(string) bool {
		w.verifying = slot
		ok = w.bootable[slot]
		return true
	}) {
		return "", ctx.Err()
	}
	if !ok {
		w.mu.Lock()
		w.verifying = ""
		w.mu.Unlock()
		return "", errors.New("no image")
	}
	return "v-other", nil
}

func (f *fx) WipeEphemeral(ctx context.Context) error {
	w := f.w
	if f.do("wipe-ephemeral", func(mode string) bool {
		if w.cp && w.member == "voter" && w.persisted.Current != nil && !w.persisted.Current.Preserve {
			w.fatalf("wiping etcd data of a voting member")
		}
		w.wipeHalf = true
		if mode == "during" {
			return false // the power goes mid-mkfs: EPHEMERAL is half made
		}
		w.wipeHalf = false
		return true
	}) {
		return ctx.Err()
	}
	return nil
}

// Bootloader.
func (f *fx) Committed() boot.Slot {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return f.w.committed()
}

func (f *fx) Arm(slot boot.Slot) error {
	w := f.w
	if f.do("arm", func(mode string) bool {
		if !w.bootable[slot] {
			w.fatalf("arming slot %s, which holds no complete image", slot)
		}
		if mode == "during" {
			return false // the grubenv write did not land
		}
		w.next, w.tries = slot, boot.TrialTries
		return true
	}) {
		return errors.New("powered off")
	}
	return nil
}

func (f *fx) Disarm() error {
	if f.do("disarm", func(string) bool { f.w.next, f.w.tries = "", 0; return true }) {
		return errors.New("powered off")
	}
	return nil
}

func (f *fx) Commit(slot boot.Slot) error {
	w := f.w
	name := "commit"
	w.mu.Lock()
	rollback := w.persisted.RollingBack != nil
	w.mu.Unlock()
	if rollback {
		name = "commit-rollback"
	}
	var err error
	if f.do(name, func(mode string) bool {
		if !rollback && w.booted != slot {
			w.fatalf("committing %s while running %s", slot, w.booted)
		}
		if !w.bootable[slot] {
			w.fatalf("committing slot %s, which holds no complete image", slot)
		}
		if mode == "during" {
			return false
		}
		if w.commitFails && !rollback {
			err = errors.New("EIO")
			return true
		}
		w.saved, w.next, w.tries = slot, "", 0
		if rollback {
			w.verifying = ""
		}
		return true
	}) {
		return errors.New("powered off")
	}
	return err
}

// Host.
func (f *fx) Stop(ctx context.Context) error {
	w := f.w
	var err error
	if f.do("stop", func(string) bool {
		if w.cp && !w.lockHeld {
			w.fatalf("stopping etcd for the upgrade without the lock")
		}
		if w.cp && w.member == "voter" && !w.prepared {
			w.fatalf("stopping the etcd member without a snapshot")
		}
		w.etcdRunning = false
		if w.stopFails {
			err = errors.New("unmount /var: busy")
		}
		return true
	}) {
		return ctx.Err()
	}
	return err
}

func (f *fx) Trial(ctx context.Context, rejoin bool, notes TrialNotes) error {
	w := f.w
	promoted := false
	if f.do("trial", func(string) bool {
		u := w.persisted.Current
		if u.Lease != 0 && !w.leaseAlive {
			w.fatalf("trial holding a lease that is gone")
		}
		if rejoin && !w.unhealthy {
			w.member = "voter" // the etcd gate promotes the rejoined learner before the commit
			promoted = true
		}
		return true
	}) {
		return ctx.Err()
	}
	if promoted {
		notes.Rejoined("promoted")
	}
	if w.unhealthy {
		return errors.New("gate api: refused")
	}
	return nil
}

func (f *fx) Finish() { f.do("finish", func(string) bool { return true }) }

// Power: a reboot ends the incarnation like a cut, after everything before it landed.
func (f *fx) Reboot(reason string) error {
	w := f.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if f.dead {
		return errors.New("powered off")
	}
	k := w.actionN
	w.actionN++
	w.log = append(w.log, fmt.Sprintf("%s[%s]", "reboot", stateOf(w.persisted)))
	_ = k // a reboot is a cut by itself: before, during and after are the same
	f.inc().powerCut()
	return nil
}

func (f *fx) Down() bool {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return f.dead
}

// logTo puts the executor's log lines into the world's log (shown with a failure).
type logTo struct{ w *world }

func (l logTo) Enabled(context.Context, slog.Level) bool { return os.Getenv("SIMLOG") != "" }
func (l logTo) Handle(_ context.Context, r slog.Record) error {
	msg := "exec: " + r.Message
	r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
	l.w.mu.Lock()
	l.w.log = append(l.w.log, msg)
	l.w.mu.Unlock()
	return nil
}
func (l logTo) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logTo) WithGroup(string) slog.Handler      { return l }

var simEpoch = time.Unix(1000, 0).UTC()

// boot starts a new incarnation: GRUB picks the slot, etcd starts (a member whose rejoin is
// pending is added back as a learner first), the executor steps the boot.
func (w *world) boot(ctx context.Context, first bool) *incarnation {
	w.mu.Lock()
	f := &incarnation{w: w, cut: make(chan struct{}), idle: make(chan idleRec, 64)}
	f.ctx, f.cancel = context.WithCancel(ctx)
	w.etcdRunning = false
	w.verifying, w.writing = "", "" // whatever ran before the cut is gone
	if first {
		w.booted = boot.SlotA
	} else {
		w.booted = w.grub()
	}
	if u := w.persisted.Current; u != nil && u.Rejoin && w.member == "absent" {
		w.member = "learner"
	}
	if w.cp && w.member == "absent" {
		w.fatalf("booting with our member removed and no rejoin pending")
	}
	w.etcdRunning = w.cp
	w.log = append(w.log, "boot "+string(w.booted))
	rec := w.persisted
	w.mu.Unlock()

	x := (*fx)(f)
	eff := Effects{Slots: x, Boot: x, Host: x, Kube: x, Power: x}
	if w.cp {
		eff.Cluster = x
	}
	f.ex = NewExecutor(rec, Options{Store: (*store)(f), Effects: eff, Log: slog.New(logTo{w}), Now: func() time.Time { return simEpoch },
		RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond, PersistBackoff: time.Microsecond,
		Idle: func(r Record, persisted bool) {
			select {
			case f.idle <- idleRec{r, persisted}:
			default:
			}
		}})
	w.mu.Lock()
	w.inc = f
	w.mu.Unlock()
	go f.ex.Run(f.ctx)
	// An early action of the boot (a re-wipe, a disarm) may itself be cut: stop waiting then.
	bctx, cancel := context.WithCancel(f.ctx)
	go func() {
		select {
		case <-f.cut:
			cancel()
		case <-bctx.Done():
		}
	}()
	err := f.ex.Boot(bctx, Booted{Slot: w.booted, Committed: x.Committed()})
	cancel()
	if err != nil && !errors.Is(err, ErrStopped) && !errors.Is(err, context.Canceled) {
		w.t.Fatalf("boot: %v", err)
	}
	f.ex.Ready()
	return f
}
