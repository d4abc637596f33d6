package upgrade

import (
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"keel/boot"
)

// world models what the state machine drives: grubenv, the slots' contents, and a GRUB that
// boots next_entry once (clearing it first) or else saved_entry (A when unset).
type world struct {
	saved, next boot.Slot
	bootable    map[boot.Slot]bool // holds a complete, good image
	newBroken   bool               // the new slot's kernel/init dies before reaching the trial
	unhealthy   bool               // the new slot boots but fails its health gates
	pullFails   bool
	stopFails   bool
	noKube      bool // the node has no Kubernetes configuration
	foreign     bool // someone else cordoned the node before the upgrade
	drainFails  bool
	force       bool
	ourCordon   bool // the API server holds a cordon of ours
	// Control-plane: an etcd member, the cluster-wide lease and lock.
	cp          bool
	wipe        bool   // preserve=false
	lockBusy    bool   // another node holds the lock when this one asks
	checkFails  bool   // the quorum check refuses
	leaveFails  bool   // the member removal is applied but its answer is lost
	leaseAlive  bool   // our lease exists in etcd
	lockHeld    bool   // and holds the upgrade lock
	member      string // how the cluster knows our member: voter, absent, learner
	etcdRunning bool
	booted      boot.Slot
	persisted   Record
	boots       int
	log         []string
}

// crash describes where the power goes: at the k-th action executed (counting from 0 over the
// whole run), before, in the middle of, or after its effect.
type crash struct {
	at   int
	mode string // "before", "during", "after"
}

func (w *world) grub() boot.Slot {
	for range 10 {
		s := w.saved
		if s == "" {
			s = boot.SlotA
		}
		if w.next != "" {
			s, w.next = w.next, "" // save_env before booting
		}
		w.boots++
		if w.bootable[s] && !(w.newBroken && s == boot.SlotB) {
			return s
		}
		w.log = append(w.log, "panic in slot "+string(s))
		// panic=1: the machine reboots by itself, GRUB again.
	}
	panic("no bootable slot")
}

// run drives the machine until the upgrade is terminal and the node is up, with the given
// crashes. It returns the final record.
func (w *world) run(t *testing.T, crashes []crash) Record {
	t.Helper()
	now := time.Unix(1000, 0)
	actionN := 0
	crashAt := map[int]string{}
	for _, c := range crashes {
		crashAt[c.at] = c.mode
	}
	step := func(ev Event) []Action {
		n, acts, err := Step(w.persisted, ev)
		if err != nil {
			t.Fatalf("Step(%s, %#v): %v\nlog: %v", stateOf(w.persisted), ev, err, w.log)
		}
		w.persisted = n // persisted (synced) before any action
		return acts
	}
	reboot := func() []Action {
		w.etcdRunning = false
		w.booted = w.grub()
		// The services phase starts etcd: a member that is a voter with its data, or (when a
		// rejoin is pending) one that was added back as a learner with an empty data dir.
		if u := w.persisted.Current; u != nil && u.Rejoin && w.member == "absent" {
			w.member = "learner"
		}
		if w.cp && w.member == "absent" {
			t.Fatalf("booting with our member removed and no rejoin pending; log %v", w.log)
		}
		w.etcdRunning = w.cp
		w.log = append(w.log, "boot "+string(w.booted))
		return step(Booted{Slot: w.booted, Committed: w.committed(), Now: now})
	}
	acts := step(Request{ID: "u1", Image: "r/i:v2", Preserve: !w.wipe, Force: w.force, FromVersion: "v1", Booted: boot.SlotA,
		ControlPlane: w.cp, Member: "n1", Now: now})
	for guard := 0; guard < 200; guard++ {
		if len(acts) == 0 {
			return w.persisted
		}
		a := acts[0]
		acts = acts[1:]
		mode, crashing := crashAt[actionN]
		actionN++
		w.log = append(w.log, fmt.Sprintf("%s[%s]", a, stateOf(w.persisted)))
		if crashing && mode == "before" {
			acts = reboot()
			continue
		}
		u := w.persisted.Current
		var ev Event
		switch a {
		case ActPull:
			if w.pullFails {
				ev = Failed{Reason: "404", Now: now}
			} else {
				ev = Pulled{Digest: "sha256:d", ToVersion: "v2", SlotSHA256: "s", SlotSize: 10, Now: now}
			}
		case ActCordon:
			switch {
			case w.noKube:
				ev = Cordoned{Skipped: true, Now: now}
			case w.foreign:
				ev = Cordoned{Ours: false, Now: now}
			default:
				w.ourCordon = true // lands even if the power goes before the answer
				ev = Cordoned{Ours: true, Now: now}
			}
		case ActDrain:
			if w.drainFails {
				ev = Failed{Reason: "drain blocked by PodDisruptionBudget ns/db", Now: now}
			} else {
				ev = Completed{Now: now}
			}
		case ActUncordon:
			w.ourCordon = false
			ev = Uncordoned{Now: now}
		case ActLock:
			if u.Lease == 0 {
				w.leaseAlive = true // granted: exists even if the power goes before it is recorded
				if crashing && mode == "during" {
					acts = reboot()
					continue
				}
				step(LeaseGranted{ID: 7, Now: now})
			}
			if w.lockBusy {
				step(LockWaiting{Holder: "n2 since T", Now: now})
			}
			w.lockHeld = true
			ev = Completed{Now: now}
		case ActCheck:
			if !w.lockHeld {
				t.Fatalf("quorum check without the lock; log %v", w.log)
			}
			if w.checkFails {
				ev = Failed{Reason: "restarting n1 leaves 1 of 3 voters healthy, quorum 2", Now: now}
			} else {
				ev = Checked{Reason: "ok", Now: now}
			}
		case ActLeave:
			if !w.lockHeld {
				t.Fatalf("leaving the cluster without the lock; log %v", w.log)
			}
			w.member = "absent"
			if w.leaveFails {
				ev = Failed{Reason: "etcdserver: server stopped", Now: now}
			} else {
				ev = Completed{Now: now}
			}
		case ActKeepLease:
			if !w.leaseAlive {
				t.Fatalf("keep-alive of a lease that does not exist; log %v", w.log)
			}
			continue
		case ActRejoin:
			if w.member != "voter" {
				w.member = "voter"
			}
			ev = Rejoined{Now: now}
		case ActRelease:
			w.leaseAlive, w.lockHeld = false, false
			ev = Released{Now: now}
		case ActStop:
			if w.cp && !w.lockHeld {
				t.Fatalf("stopping etcd for the upgrade without the lock; log %v", w.log)
			}
			w.etcdRunning = false
			if w.stopFails {
				ev = Failed{Reason: "unmount /var: busy", Now: now}
			} else {
				ev = Completed{Now: now}
			}
		case ActWriteSlot:
			if w.next == u.ToSlot || w.saved == u.ToSlot {
				t.Fatalf("writing slot %s while grubenv points at it (next %q saved %q)", u.ToSlot, w.next, w.saved)
			}
			w.bootable[u.ToSlot] = false
			if crashing && mode == "during" {
				acts = reboot()
				continue
			}
			w.bootable[u.ToSlot] = true
			ev = Completed{Now: now}
		case ActWipe, ActFinish:
			if a == ActWipe && w.cp && w.member == "voter" {
				t.Fatalf("wiping etcd data of a voting member; log %v", w.log)
			}
			ev = Completed{Now: now}
			if a == ActFinish {
				ev = nil
			}
		case ActArm:
			if !w.bootable[u.ToSlot] {
				t.Fatalf("arming slot %s, which holds no complete image", u.ToSlot)
			}
			if crashing && mode == "during" {
				acts = reboot() // the grubenv write did not land
				continue
			}
			w.next = u.ToSlot
			ev = Completed{Now: now}
		case ActCommit:
			if w.booted != u.ToSlot {
				t.Fatalf("committing %s while running %s", u.ToSlot, w.booted)
			}
			if crashing && mode == "during" {
				acts = reboot()
				continue
			}
			w.saved = u.ToSlot
			ev = Completed{Now: now}
		case ActTrial:
			if u.Lease != 0 && !w.leaseAlive {
				t.Fatalf("trial holding a lease that is gone; log %v", w.log)
			}
			if u.Rejoin && !w.unhealthy {
				// The etcd gate promotes the rejoined learner before the commit.
				w.member = "voter"
				step(Rejoined{Now: now})
			}
			ev = Health{OK: !w.unhealthy, Reason: "gate api: refused", Now: now}
		case ActDisarm:
			w.next = ""
			continue
		case ActReboot, ActRebootCurrent:
			acts = reboot()
			continue
		default:
			t.Fatalf("unknown action %s", a)
		}
		if crashing && (mode == "after" || mode == "during") {
			acts = reboot()
			continue
		}
		if ev != nil {
			acts = append(step(ev), acts...)
		}
	}
	t.Fatalf("no end after 200 actions: %v", w.log)
	return Record{}
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

type scenario struct {
	name                                    string
	broken, unhealthy, pullFails, stopFails bool
	noKube, foreign, drainFails, force      bool
	cp, wipe, lockBusy, checkFails          bool
	leaveFails                              bool
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
	{name: "control plane", cp: true, lockBusy: true},
	{name: "control plane, leave", cp: true, wipe: true},
	{name: "control plane, leave, new slot panics", cp: true, wipe: true, broken: true},
	{name: "control plane, leave, new slot unhealthy", cp: true, wipe: true, unhealthy: true},
	{name: "control plane, new slot unhealthy", cp: true, unhealthy: true},
	{name: "control plane, check refuses", cp: true, checkFails: true},
	{name: "control plane, leave answer lost", cp: true, wipe: true, leaveFails: true},
	{name: "control plane, leave, unmount fails", cp: true, wipe: true, stopFails: true},
}

func newWorld(s scenario) *world {
	return &world{bootable: map[boot.Slot]bool{boot.SlotA: true}, newBroken: s.broken, unhealthy: s.unhealthy,
		pullFails: s.pullFails, stopFails: s.stopFails, booted: boot.SlotA,
		noKube: s.noKube, foreign: s.foreign, drainFails: s.drainFails, force: s.force,
		cp: s.cp, wipe: s.wipe, lockBusy: s.lockBusy, checkFails: s.checkFails, leaveFails: s.leaveFails,
		member: "voter", etcdRunning: s.cp}
}

// check asserts the invariants on a finished run.
func check(t *testing.T, s scenario, w *world, r Record, desc string) {
	t.Helper()
	u := r.Current
	if u == nil || !u.State.Terminal() {
		t.Fatalf("%s: not terminal: %+v\nlog %v", desc, u, w.log)
	}
	if !w.bootable[w.committed()] {
		t.Fatalf("%s: committed slot %s holds no good image", desc, w.committed())
	}
	if w.next != "" {
		t.Fatalf("%s: boot-once %s left armed", desc, w.next)
	}
	if u.Boots > MaxBoots+1 {
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
	if s.foreign && u.Kubernetes != "" && !strings.Contains(u.Kubernetes, "someone else") {
		t.Fatalf("%s: status %q does not say the node was already cordoned", desc, u.Kubernetes)
	}
	switch u.State {
	case Done:
		if w.booted != boot.SlotB || w.committed() != boot.SlotB {
			t.Fatalf("%s: done but running %s, committed %s", desc, w.booted, w.committed())
		}
		if s.broken || s.unhealthy || s.pullFails || s.stopFails || (s.drainFails && !s.force) || s.checkFails || s.leaveFails {
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
// its effect; then every pair of such cuts.
func TestEveryCrashPoint(t *testing.T) {
	for _, s := range scenarios {
		// The number of actions of the run without crashes bounds k.
		w := newWorld(s)
		r := w.run(t, nil)
		check(t, s, w, r, s.name+": no crash")
		n := len(w.log) + 4
		runs := 0
		for k := 0; k < n; k++ {
			for _, m := range []string{"before", "during", "after"} {
				w := newWorld(s)
				r := w.run(t, []crash{{k, m}})
				check(t, s, w, r, fmt.Sprintf("%s: crash %s action %d", s.name, m, k))
				runs++
				for k2 := k + 1; k2 < n+4; k2++ {
					for _, m2 := range []string{"before", "during", "after"} {
						w := newWorld(s)
						r := w.run(t, []crash{{k, m}, {k2, m2}})
						check(t, s, w, r, fmt.Sprintf("%s: crashes %s@%d, %s@%d", s.name, m, k, m2, k2))
						runs++
					}
				}
			}
		}
		t.Logf("%s: %d crash runs", s.name, runs)
	}
}

// TestHealthyRunSucceedsDespiteLateCrashes: crashes after the point of no return still end
// in done when the new slot is healthy, unless the crash lands in the trial itself.
func TestHealthyNoCrashIsDone(t *testing.T) {
	w := newWorld(scenarios[0])
	r := w.run(t, nil)
	if r.Current.State != Done || r.Slots[boot.SlotB].Version != "v2" || !r.Slots[boot.SlotB].Verified {
		t.Fatalf("record = %+v slots %+v", r.Current, r.Slots)
	}
	want := []string{"pull[pulling]", "cordon[cordoning]", "drain[draining]", "stop[stopping]", "write-slot[writing]", "arm[arming]",
		"reboot[rebooting]", "boot B", "trial[trial]", "commit[committing]", "finish[done]", "uncordon[done]"}
	if fmt.Sprint(w.log) != fmt.Sprint(want) {
		t.Errorf("sequence\n got %v\nwant %v", w.log, want)
	}
}

// TestRandomWalks: many random crash sequences (up to six cuts), all scenarios.
func TestRandomWalks(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	modes := []string{"before", "during", "after"}
	for i := range 3000 {
		s := scenarios[rng.Intn(len(scenarios))]
		var cs []crash
		at := 0
		for range rng.Intn(7) {
			at += rng.Intn(4)
			cs = append(cs, crash{at, modes[rng.Intn(3)]})
			at++
		}
		w := newWorld(s)
		r := w.run(t, cs)
		check(t, s, w, r, fmt.Sprintf("walk %d %s %v", i, s.name, cs))
	}
}

func TestStepRejects(t *testing.T) {
	now := time.Unix(1, 0)
	r, _, err := Step(Record{}, Request{ID: "a", Booted: boot.SlotA, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Step(r, Request{ID: "b", Booted: boot.SlotA}); err == nil {
		t.Error("second request while one is in flight accepted")
	}
	if _, _, err := Step(r, Health{OK: true}); err == nil {
		t.Error("health while pulling accepted")
	}
	if _, _, err := Step(Record{}, Completed{}); err == nil {
		t.Error("done with no upgrade accepted")
	}
	before := r.Clone()
	Step(r, Pulled{ToVersion: "v2"})
	if r.Current.ToVersion != before.Current.ToVersion {
		t.Error("Step mutated its input")
	}
	// History keeps the last HistoryLen upgrades.
	for i := range HistoryLen + 3 {
		r, _, _ = Step(r, Failed{Reason: "x"})
		r, _, _ = Step(r, Request{ID: fmt.Sprint(i), Booted: boot.SlotA})
	}
	if len(r.History) != HistoryLen {
		t.Errorf("history = %d", len(r.History))
	}
}

func TestRecordRoundTrip(t *testing.T) {
	r, _, _ := Step(Record{}, Request{ID: "a", Image: "x", Booted: boot.SlotB, Now: time.Unix(5, 0).UTC()})
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil || got.Current.ToSlot != boot.SlotA || got.Current.State != Pulling {
		t.Fatalf("round trip: %+v %v", got.Current, err)
	}
	if _, err := Decode([]byte(`{"current":{"state":"exploded"}}`)); err == nil {
		t.Error("unknown state accepted")
	}
	if r, err := Decode(nil); err != nil || r.Current != nil {
		t.Error("empty payload is not an empty record")
	}
}

func FuzzDecode(f *testing.F) {
	r, _, _ := Step(Record{}, Request{ID: "a", Booted: boot.SlotA})
	b, _ := r.Encode()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			return
		}
		enc, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		r2, err := Decode(enc)
		if err != nil {
			t.Fatal(err)
		}
		enc2, _ := r2.Encode()
		if string(enc) != string(enc2) {
			t.Fatalf("decode→encode→decode disagrees")
		}
	})
}

// TestCancel: an upgrade waiting for the lease can be cancelled (its lease is then released);
// one that has changed something cannot.
func TestCancel(t *testing.T) {
	now := time.Unix(1, 0)
	r, _, _ := Step(Record{}, Request{ID: "a", Booted: boot.SlotA, Preserve: true, ControlPlane: true, Member: "n1", Now: now})
	r, acts, _ := Step(r, Pulled{ToVersion: "v2", Now: now})
	if r.Current.State != Locking || fmt.Sprint(acts) != "[lock]" {
		t.Fatalf("after pull: %s %v", r.Current.State, acts)
	}
	r, _, _ = Step(r, LeaseGranted{ID: 42, Now: now})
	r, _, _ = Step(r, LockWaiting{Holder: "n2 since T", Now: now})
	if r.Current.Lock != "waiting for the upgrade lease, held by n2 since T" {
		t.Errorf("lock = %q", r.Current.Lock)
	}
	c, acts, err := Step(r, Cancel{Reason: "by operator", Now: now})
	if err != nil || c.Current.State != Aborted || fmt.Sprint(acts) != "[release-lease]" || c.Current.Reason != "cancelled: by operator" {
		t.Fatalf("cancel while waiting: %+v %v %v", c.Current, acts, err)
	}
	r, _, _ = Step(r, Completed{Now: now})
	r, _, _ = Step(r, Checked{Reason: "ok", Now: now})
	r, _, _ = Step(r, Cordoned{Skipped: true, Now: now})
	if r.Current.State != Stopping {
		t.Fatalf("state %s", r.Current.State)
	}
	if _, _, err := Step(r, Cancel{Now: now}); !errors.Is(err, ErrTooLate) {
		t.Errorf("cancel while stopping: %v, want ErrTooLate", err)
	}
	// An ended upgrade that still holds its lease (or owes an uncordon, a rejoin) refuses a
	// new request until that is done.
	if _, _, err := Step(c, Request{ID: "b", Booted: boot.SlotA, Now: now}); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "release-lease") {
		t.Errorf("request while the last upgrade still holds its lease: %v", err)
	}
	c, _, _ = Step(c, Released{Now: now})
	if _, _, err := Step(c, Request{ID: "b", Booted: boot.SlotA, Now: now}); err != nil {
		t.Errorf("request after the release: %v", err)
	}
}

// TestLeaseLostAndRejoin: a lease that expired while the node rebooted is recorded as a
// warning and no longer owed; a rejoin clears its obligation with a note. Neither is accepted
// when nothing is owed.
func TestLeaseLostAndRejoin(t *testing.T) {
	now := time.Unix(1, 0)
	r, _, _ := Step(Record{}, Request{ID: "a", Booted: boot.SlotA, Preserve: false, ControlPlane: true, Member: "n1", Now: now})
	if _, _, err := Step(r, LeaseLost{Reason: "x", Now: now}); !errors.Is(err, ErrUnexpected) {
		t.Errorf("lease lost with no lease: %v", err)
	}
	if _, _, err := Step(r, Rejoined{Now: now}); !errors.Is(err, ErrUnexpected) {
		t.Errorf("rejoined with nothing pending: %v", err)
	}
	r, _, _ = Step(r, Pulled{ToVersion: "v2", Now: now})
	r, _, _ = Step(r, LeaseGranted{ID: 9, Now: now})
	r, _, _ = Step(r, Completed{Now: now})
	r, _, _ = Step(r, Checked{Reason: "ok", Now: now})
	r, acts, _ := Step(r, Cordoned{Skipped: true, Now: now})
	if r.Current.State != Leaving || !r.Current.Rejoin || fmt.Sprint(acts) != "[leave-cluster]" {
		t.Fatalf("after the cordon: %s rejoin=%v %v", r.Current.State, r.Current.Rejoin, acts)
	}
	r, _, _ = Step(r, LeaseLost{Reason: "expired during the reboot", Now: now})
	if r.Current.Lease != 0 || !strings.Contains(r.Current.Warning, "expired during the reboot") {
		t.Errorf("after lease lost: %+v", r.Current)
	}
	r, _, _ = Step(r, Rejoined{Note: "still a voter", Now: now})
	if r.Current.Rejoin || !strings.Contains(r.Current.Etcd, "still a voter") {
		t.Errorf("after rejoined: %+v", r.Current)
	}
}
