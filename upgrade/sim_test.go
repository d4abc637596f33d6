package upgrade

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"keel/boot"
)

// The simulator drives the real Executor (with its real Step) through whole upgrades against
// the world model of world_test.go, cutting the power at chosen actions: before, in the middle
// of, or after each effect. After every run the invariants below must hold.

type scenario struct {
	name                                    string
	broken, unhealthy, pullFails, stopFails bool
	noKube, foreign, drainFails, force      bool
	cp, wipe, lockBusy, checkFails          bool
	leaveFails, commitFails, snapFails      bool
	stage                                   bool // staged, then activated when it rests
	writeFails                              bool // the slot write fails (the registry)
}

var scenarios = []scenario{
	{name: "healthy"},
	{name: "new slot panics", broken: true},
	{name: "new slot unhealthy", unhealthy: true},
	{name: "pull fails", pullFails: true},
	{name: "unmount fails", stopFails: true},
	{name: "no kubernetes", noKube: true},
	{name: "cordoned by someone else", foreign: true},
	{name: "drain blocked", drainFails: true},
	{name: "drain blocked, forced", drainFails: true, force: true},
	{name: "cordoned by someone else, new slot panics", foreign: true, broken: true},
	{name: "commit fails", commitFails: true},
	{name: "control plane", cp: true, lockBusy: true},
	{name: "control plane, leave", cp: true, wipe: true},
	{name: "control plane, leave, new slot panics", cp: true, wipe: true, broken: true},
	{name: "control plane, leave, new slot unhealthy", cp: true, wipe: true, unhealthy: true},
	{name: "control plane, new slot unhealthy", cp: true, unhealthy: true},
	{name: "control plane, check refuses", cp: true, checkFails: true},
	{name: "control plane, leave answer lost", cp: true, wipe: true, leaveFails: true},
	{name: "control plane, snapshot fails", cp: true, snapFails: true},
	{name: "control plane, leave, snapshot fails", cp: true, wipe: true, snapFails: true},
	{name: "control plane, snapshot fails, forced", cp: true, snapFails: true, force: true},
	{name: "control plane, leave, unmount fails", cp: true, wipe: true, stopFails: true},
	{name: "control plane, commit fails", cp: true, commitFails: true},
	{name: "staged", stage: true},
	{name: "staged, new slot panics", stage: true, broken: true},
	{name: "staged, pull fails", stage: true, pullFails: true},
	{name: "staged, unmount fails", stage: true, stopFails: true},
	{name: "staged, write fails", stage: true, writeFails: true},
	{name: "write fails", writeFails: true},
	{name: "staged, control plane, leave", stage: true, cp: true, wipe: true},
}

func newWorld(t testing.TB, s scenario) *world {
	return &world{t: t, bootable: map[boot.Slot]bool{boot.SlotA: true}, newBroken: s.broken, unhealthy: s.unhealthy,
		pullFails: s.pullFails, stopFails: s.stopFails, commitFails: s.commitFails, booted: boot.SlotA,
		noKube: s.noKube, foreign: s.foreign, drainFails: s.drainFails, force: s.force,
		cp: s.cp, wipe: s.wipe, lockBusy: s.lockBusy, checkFails: s.checkFails, leaveFails: s.leaveFails, snapFails: s.snapFails,
		member: "voter", etcdRunning: s.cp, stage: s.stage, writeFails: s.writeFails}
}

func (w *world) request() Request {
	return Request{ID: "u1", Image: "r/i:v2", Preserve: !w.wipe, Force: w.force, Stage: w.stage, FromVersion: "v1", Booted: boot.SlotA,
		ControlPlane: w.cp, Member: "n1"}
}

// settle waits until the incarnation is cut (true) or idle with nothing in flight (false).
func settle(t testing.TB, f *incarnation) (cut bool, rec Record) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case <-f.cut:
			return true, Record{}
		default:
		}
		select {
		case <-f.cut:
			return true, Record{}
		case ir := <-f.idle:
			select {
			case <-f.cut:
				return true, Record{} // the idle came just before a reboot
			default:
			}
			r := ir.r
			if !ir.persisted {
				continue // META is retried; actions wait for it
			}
			if r.Active() && r.Current.State == Staged && f.w.stage {
				// Staged and resting, as it should: the operator activates it (again, if
				// META refused the first).
				// An idle report may be older than the record (racing calls): then the
				// activate is refused as busy or unexpected, and the next report tells; a
				// racing rollback has the node going down (shutting down), and the reboot tells.
				err := f.ex.Activate(t.Context(), "")
				if err != nil && !errors.Is(err, ErrPersist) && !errors.Is(err, ErrStopped) && !errors.Is(err, ErrBusy) && !errors.Is(err, ErrUnexpected) && !errors.Is(err, ErrShutdown) {
					t.Fatalf("activate: %v", err)
				}
				continue
			}
			if r.Active() || r.RollingBack != nil {
				f.w.mu.Lock()
				log := f.w.log
				f.w.mu.Unlock()
				t.Fatalf("executor idle with an upgrade in flight (a silent stall): %+v\nlog: %v", r.Current, log)
			}
			if r.Current == nil {
				continue // the boot before the request
			}
			return false, r
		case <-deadline:
			f.w.mu.Lock()
			log := f.w.log
			f.w.mu.Unlock()
			t.Fatalf("no end within 10 s; log %v", log)
		}
	}
}

// run drives the machine until the upgrade is terminal and the node is idle, with the given
// crashes. It returns the final record as the executor has it.
func (w *world) run(t testing.TB, crashes []crash) (rec Record) {
	t.Helper()
	w.crashAt = map[int]string{}
	for _, c := range crashes {
		w.crashAt[c.at] = c.mode
	}
	ctx := t.Context()
	defer func() {
		if r := recover(); r != nil {
			if r == errFatal {
				t.FailNow()
			}
			panic(r)
		}
	}()
	f := w.boot(ctx, true)
	err := f.ex.Request(ctx, w.request())
	for i := 0; errors.Is(err, ErrPersist) && i < 5; i++ {
		err = f.ex.Request(ctx, w.request()) // META failed: the operator asks again
	}
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if w.requested != nil {
		close(w.requested)
	}
	for boots := 0; ; boots++ {
		if boots > 20 {
			t.Fatalf("more than 20 boots: %v", w.log)
		}
		cut, r := settle(t, f)
		if !cut {
			f.ex.Stop(time.Second)
			f.cancel()
			return r
		}
		f.cancel()
		f.ex.Stop(time.Second)
		f = w.boot(ctx, false)
	}
}

// check asserts the invariants on a finished run.
func check(t testing.TB, s scenario, w *world, r Record, desc string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	u := r.Current
	if u == nil || !u.State.Terminal() {
		t.Fatalf("%s: not terminal: %+v\nlog %v", desc, u, w.log)
	}
	if p := w.persisted.Current; p == nil || p.State != u.State {
		t.Fatalf("%s: META says %+v, the executor %s\nlog %v", desc, p, u.State, w.log)
	}
	if !w.bootable[w.committed()] {
		t.Fatalf("%s: committed slot %s holds no good image", desc, w.committed())
	}
	if w.next != "" {
		t.Fatalf("%s: trial of %s left armed", desc, w.next)
	}
	if u.Boots > MaxBoots {
		t.Fatalf("%s: %d boots", desc, u.Boots)
	}
	if u.State != Done && u.Reason == "" {
		t.Fatalf("%s: %s without a reason", desc, u.State)
	}
	// Our cordon is always lifted, whatever the outcome; someone else's is never touched
	// (the world's foreign cordon has no way to be lifted by us, by construction).
	if w.ourCordon || u.Uncordon {
		t.Fatalf("%s: node left cordoned by us (obligation %v); log %v", desc, u.Uncordon, w.log)
	}
	// The lock is always released, and the member is a voter again, whatever the outcome. (A
	// lease granted but cut off before it was recorded holds no lock and expires by its TTL.)
	if w.lockHeld || u.Lease != 0 {
		t.Fatalf("%s: upgrade lease still held (record %x); log %v", desc, u.Lease, w.log)
	}
	if s.cp && (w.member != "voter" || u.Rejoin) {
		t.Fatalf("%s: member %s (rejoin pending %v); log %v", desc, w.member, u.Rejoin, w.log)
	}
	// A wipe the power cut short is done again: EPHEMERAL is never left half made.
	if w.wipeHalf {
		t.Fatalf("%s: EPHEMERAL left half made by a cut wipe; log %v", desc, w.log)
	}
	if s.foreign && u.Kubernetes != "" && !strings.Contains(u.Kubernetes, "someone else") {
		t.Fatalf("%s: status %q does not say the node was already cordoned", desc, u.Kubernetes)
	}
	switch u.State {
	case Done:
		if w.booted != boot.SlotB || w.committed() != boot.SlotB {
			t.Fatalf("%s: done but running %s, committed %s", desc, w.booted, w.committed())
		}
		if s.broken || s.unhealthy || s.pullFails || s.writeFails || s.stopFails || (s.drainFails && !s.force) || s.checkFails || s.leaveFails || (s.snapFails && !s.force) {
			t.Fatalf("%s: done although the scenario cannot succeed", desc)
		}
	case Aborted, RolledBack:
		// A failed upgrade always ends on the last good slot.
		if w.booted != boot.SlotA || w.committed() != boot.SlotA {
			t.Fatalf("%s: %s but running %s, committed %s; log %v", desc, u.State, w.booted, w.committed(), w.log)
		}
	}
}

// TestEveryCrashPoint: every scenario, a power cut at every action, before, during and after
// its effect; then every pair of such cuts. The executor and Step are the real ones.
func TestEveryCrashPoint(t *testing.T) {
	total := 0
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, s)
			r := w.run(t, nil)
			check(t, s, w, r, s.name+": no crash")
			n := w.actionN + 4
			// Boot tries: once the new slot is armed, one cut anywhere (the reboot, the trial,
			// the commit, what follows) costs at most one of GRUB's tries, and an upgrade
			// that can succeed still ends done.
			armed := actionIndex(w.log, "arm[arming]")
			if s.healthy() && armed < 0 {
				t.Fatalf("no arm action in %v", w.log)
			}
			runs := 0
			for k := 0; k < n; k++ {
				for _, m := range []string{"before", "during", "after"} {
					w := newWorld(t, s)
					r := w.run(t, []crash{{k, m}})
					desc := fmt.Sprintf("%s: crash %s action %d", s.name, m, k)
					check(t, s, w, r, desc)
					if s.healthy() && (k > armed || k == armed && m == "after") && r.Current.State != Done {
						t.Fatalf("%s (after the arm): %s %q, want done; log %v", desc, r.Current.State, r.Current.Reason, w.log)
					}
					runs++
					if testing.Short() {
						continue
					}
					for k2 := k + 1; k2 < n+4; k2++ {
						for _, m2 := range []string{"before", "during", "after"} {
							w := newWorld(t, s)
							r := w.run(t, []crash{{k, m}, {k2, m2}})
							check(t, s, w, r, fmt.Sprintf("%s: crashes %s@%d, %s@%d", s.name, m, k, m2, k2))
							runs++
						}
					}
				}
			}
			t.Logf("%s: %d crash runs", s.name, runs)
			total += runs
		})
	}
}

// TestHealthyNoCrashIsDone: the actions of a healthy upgrade, in order.
func TestHealthyNoCrashIsDone(t *testing.T) {
	w := newWorld(t, scenarios[0])
	r := w.run(t, nil)
	if r.Current.State != Done || r.Slots[boot.SlotB].Version != "v2" || !r.Slots[boot.SlotB].Verified {
		t.Fatalf("record = %+v slots %+v", r.Current, r.Slots)
	}
	want := []string{"boot A", "pull[pulling]", "cordon[cordoning]", "drain[draining]", "stop[stopping]", "write-slot[writing]", "arm[arming]",
		"reboot[rebooting]", "boot B", "trial[trial]", "commit[committing]", "finish[done]", "uncordon[done]"}
	if fmt.Sprint(w.log) != fmt.Sprint(want) {
		t.Errorf("sequence\n got %v\nwant %v", w.log, want)
	}
}

// TestRandomWalks: many random crash sequences (up to six cuts), all scenarios.
func TestRandomWalks(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	modes := []string{"before", "during", "after"}
	n := 3000
	if testing.Short() {
		n = 300
	}
	for i := range n {
		s := scenarios[rng.Intn(len(scenarios))]
		var cs []crash
		at := 0
		for range rng.Intn(7) {
			at += rng.Intn(4)
			cs = append(cs, crash{at, modes[rng.Intn(3)]})
			at++
		}
		w := newWorld(t, s)
		r := w.run(t, cs)
		check(t, s, w, r, fmt.Sprintf("walk %d %s %v", i, s.name, cs))
	}
}

// TestPersistFailures: META writes fail from the k-th on, for one write, three, or for good,
// at every k of every scenario. An upgrade whose record cannot be written still ends —
// aborted or rolled back saying so, or done — and never stalls while META works; once writes
// work again, a boot finds a record from which every invariant holds. With META gone for good
// the node does only what is safe without it, and stops rebooting.
func TestPersistFailures(t *testing.T) {
	runs := 0
	for _, s := range scenarios {
		for k := 1; k < 40; k++ {
			for _, span := range []int{1, 3, 1 << 20} {
				desc := fmt.Sprintf("%s: META writes %d..%d fail", s.name, k, k+span-1)
				w := newWorld(t, s)
				w.failWrites = func(n int) bool { return n >= k && n < k+span }
				if span > 3 {
					persistGone(t, w, desc)
					runs++
					continue
				}
				w.run(t, nil)
				// A later boot reads what META holds and settles from it.
				f := w.boot(t.Context(), false)
				_, r := settle(t, f)
				f.ex.Stop(time.Second)
				f.cancel()
				check(t, s, w, r, desc)
				runs++
			}
		}
	}
	t.Logf("%d runs with failing META writes", runs)
}

// persistGone runs an upgrade whose META stops taking writes for good at some point.
func persistGone(t *testing.T, w *world, desc string) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			if r == errFatal {
				t.FailNow()
			}
			panic(r)
		}
	}()
	f := w.boot(t.Context(), true)
	if err := f.ex.Request(t.Context(), w.request()); err != nil {
		if errors.Is(err, ErrPersist) {
			return // refused: nothing changed
		}
		t.Fatalf("%s: request: %v", desc, err)
	}
	for boots := 0; ; {
		if boots > 3 {
			t.Fatalf("%s: still rebooting after %d boots: %v", desc, boots, w.log)
		}
		select {
		case <-f.cut:
			f.cancel()
			f.ex.Stop(time.Second)
			f = w.boot(t.Context(), false)
			boots++
			continue
		case ir := <-f.idle:
			select {
			case <-f.cut:
				continue // the idle came just before a reboot
			default:
			}
			if ir.r.Current == nil {
				continue // the boot before the request
			}
			if ir.persisted && ir.r.Active() && ir.r.Current.State == Staged {
				// Staged and in service; with META gone its activation is refused: nothing
				// changes, which is safe.
				err := f.ex.Activate(t.Context(), "")
				if errors.Is(err, ErrPersist) {
					return
				}
				if err != nil {
					t.Fatalf("%s: activate with META gone: %v", desc, err)
				}
				continue // accepted (that write landed): the upgrade goes on
			}
			if ir.persisted && (ir.r.Active() || ir.r.RollingBack != nil) {
				t.Fatalf("%s: idle with an upgrade in flight: %+v", desc, ir.r.Current)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no end: %v", desc, w.log)
		}
		select {
		case <-f.cut:
			continue // the idle came just before a reboot
		default:
		}
		f.ex.Stop(time.Second)
		f.cancel()
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.bootable[w.committed()] || !w.bootable[w.booted] {
			t.Fatalf("%s: running %s, committed %s: not both good; log %v", desc, w.booted, w.committed(), w.log)
		}
		// A trial the node could not record may keep what is left of its tries (it cannot
		// record a disarm either): safe, both slots are good, and GRUB falls back by itself
		// once they are spent. A full set of tries would mean nothing was booted of it.
		if w.next != "" && w.next != w.committed() && (w.next != w.booted || w.tries >= boot.TrialTries) {
			t.Fatalf("%s: slot %s left armed with %d tries; log %v", desc, w.next, w.tries, w.log)
		}
		return
	}
}

// TestPersistFailedIsSafe: whatever the state, Step's answer to a record that could not be
// written holds only actions that are safe with the older record on disk, and leaves no
// upgrade in flight that needs another write to move on.
func TestPersistFailedIsSafe(t *testing.T) {
	now := simEpoch
	for _, st := range []State{Pulling, Locking, Checking, Cordoning, Draining, Leaving, Stopping, Writing, Wiping, Arming, Rebooting, Trial, Committing, Done, Aborted, RolledBack} {
		for _, lease := range []int64{0, 9} {
			r := Record{Current: &Upgrade{ID: "u", State: st, Lease: lease, Uncordon: true, ControlPlane: lease != 0, FromSlot: boot.SlotA, ToSlot: boot.SlotB}}
			n, acts, err := Step(r, PersistFailed{Reason: "EIO", Now: now})
			if err != nil {
				t.Fatalf("%s: %v", st, err)
			}
			for _, a := range acts {
				if !safeUnpersisted(a) {
					t.Errorf("%s: PersistFailed asks for %s, which needs the record written", st, a)
				}
			}
			reboots := false
			for _, a := range acts {
				_, reboots = a.(ActRebootCurrent)
			}
			if n.Active() && n.Current.State != Rebooting && !reboots {
				t.Errorf("%s: still in flight after PersistFailed, with no reboot to settle it: %s %v", st, n.Current.State, acts)
			}
		}
	}
	for _, phase := range []string{RollbackVerifying, RollbackCommitting} {
		r := Record{RollingBack: &Rollback{From: boot.SlotA, To: boot.SlotB, Phase: phase}}
		n, acts, _ := Step(r, PersistFailed{Reason: "EIO", Now: now})
		if n.RollingBack != nil {
			t.Errorf("rollback %s still in flight after PersistFailed", phase)
		}
		for _, a := range acts {
			if !safeUnpersisted(a) {
				t.Errorf("rollback %s: PersistFailed asks for %s", phase, a)
			}
		}
	}
}

// TestRacingInputs: requests, cancels and rollbacks fired from other goroutines at random
// moments of upgrades (and of their crashes) of every scenario, under -race. Whatever wins, the
// invariants hold, no rollback touches a slot an upgrade writes (the world checks it), and the
// node ends idle.
func TestRacingInputs(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	n := 400
	if testing.Short() {
		n = 60
	}
	for i := range n {
		s := scenarios[rng.Intn(len(scenarios))]
		var cs []crash
		if rng.Intn(3) == 0 {
			cs = append(cs, crash{rng.Intn(12), []string{"before", "during", "after"}[rng.Intn(3)]})
		}
		w := newWorld(t, s)
		seed := rng.Int63()
		stop := make(chan struct{})
		done := make(chan struct{})
		w.requested = make(chan struct{})
		go func() {
			defer close(done)
			select {
			case <-w.requested: // race the upgrade, not its request
			case <-stop:
				return
			}
			r := rand.New(rand.NewSource(seed))
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(r.Intn(300)) * time.Microsecond):
				}
				w.mu.Lock()
				f := w.inc
				w.mu.Unlock()
				if f == nil || f.ex == nil {
					continue
				}
				ctx, cancel := context.WithTimeout(t.Context(), time.Second)
				switch r.Intn(4) {
				case 0:
					req := w.request()
					req.ID = fmt.Sprintf("x%d", r.Intn(1000))
					w.mu.Lock()
					req.Booted = w.booted
					w.mu.Unlock()
					err := f.ex.Request(ctx, req)
					if err != nil && !errors.Is(err, ErrBusy) && !errors.Is(err, ErrStopped) && !errors.Is(err, ErrShutdown) &&
						!errors.Is(err, ErrPersist) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
						t.Errorf("racing request: %v", err)
					}
				case 1:
					f.ex.Cancel(ctx, "race")
				case 2:
					if s.broken {
						cancel()
						continue // a rollback to a slot whose kernel panics boot-loops by design
					}
					w.mu.Lock()
					booted := w.booted
					w.mu.Unlock()
					f.ex.Rollback(ctx, booted, "")
				case 3:
					_ = f.ex.Record() // readers race the loop (-race)
				}
				cancel()
			}
		}()
		func() {
			defer close(stop)
			w.run(t, cs)
		}()
		<-done
		// The racing calls may have left more upgrades or rollbacks in flight when run stopped
		// the executor: boot again and let whatever the record holds end.
		f := w.boot(t.Context(), false)
		for range 10 {
			cut, r := settleAny(t, f)
			if !cut {
				f.ex.Stop(time.Second)
				f.cancel()
				checkRaced(t, w, r, fmt.Sprintf("race %d %s %v", i, s.name, cs))
				break
			}
			f.cancel()
			f.ex.Stop(time.Second)
			f = w.boot(t.Context(), false)
		}
	}
}

// settleAny is settle that also accepts a node with no upgrade at all.
func settleAny(t testing.TB, f *incarnation) (bool, Record) {
	t.Helper()
again:
	select {
	case <-f.cut:
		return true, Record{}
	case ir := <-f.idle:
		select {
		case <-f.cut:
			return true, Record{}
		default:
		}
		r := ir.r
		if r.Active() && r.Current.State == Staged {
			// A racing request staged an upgrade: resting is right; activate it to the end
			// (an idle report may be older than the record: then the activate is refused).
			if err := f.ex.Activate(t.Context(), ""); err != nil && !errors.Is(err, ErrPersist) && !errors.Is(err, ErrUnexpected) && !errors.Is(err, ErrBusy) && !errors.Is(err, ErrShutdown) {
				t.Fatalf("activate: %v", err)
			}
			goto again
		}
		if r.Active() || r.RollingBack != nil {
			t.Fatalf("idle with work in flight: %+v", r.Current)
		}
		return false, r
	case <-time.After(10 * time.Second):
		t.Fatalf("no end within 10 s; log %v", f.w.log)
	}
	return false, Record{}
}

// checkRaced: the invariants that hold whatever the racing calls did.
func checkRaced(t testing.TB, w *world, r Record, desc string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.bootable[w.committed()] {
		t.Fatalf("%s: committed slot %s holds no good image; log %v", desc, w.committed(), w.log)
	}
	if !w.bootable[w.booted] {
		t.Fatalf("%s: running a slot with no good image", desc)
	}
	if w.next != "" {
		t.Fatalf("%s: trial of %s left armed; log %v", desc, w.next, w.log)
	}
	if u := r.Current; u != nil {
		if u.Uncordon || w.ourCordon {
			t.Fatalf("%s: left cordoned by us; log %v", desc, w.log)
		}
		if u.Lease != 0 || w.lockHeld {
			t.Fatalf("%s: lease still held; log %v", desc, w.log)
		}
	}
}

// TestStagingFailureKeepsServing: a staging whose write fails ends aborted and the node, which
// served all along, is neither cordoned nor rebooted (a whole upgrade's failed write reboots
// into the current slot: its services are stopped by then).
func TestStagingFailureKeepsServing(t *testing.T) {
	for _, s := range []scenario{{name: "staged, write fails", stage: true, writeFails: true}, {name: "write fails", writeFails: true}} {
		w := newWorld(t, s)
		r := w.run(t, nil)
		u := r.Current
		if u == nil || u.State != Aborted || !strings.Contains(u.Reason, "503") {
			t.Fatalf("%s: %+v", s.name, u)
		}
		w.mu.Lock()
		boots, log := w.boots, fmt.Sprint(w.log)
		w.mu.Unlock()
		if s.stage && (boots != 0 || strings.Contains(log, "cordon") || strings.Contains(log, "stop")) {
			t.Errorf("%s: %d boots, log %s: the node stopped serving", s.name, boots, log)
		}
		if !s.stage && boots != 1 {
			t.Errorf("%s: %d boots, want the reboot into the current slot", s.name, boots)
		}
	}
}
