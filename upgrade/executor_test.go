package upgrade

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"keel/boot"
	"keel/disk/meta"
)

// Tests of the executor against stub effects whose timing the test controls, one per defect
// of the earlier executor (issue 10). The world model of world_test.go covers whole upgrades.

// stub effects: every method calls the function of the same name if set, else succeeds.
type stub struct {
	mu        sync.Mutex
	pull      func(ctx context.Context, image string) (PullResult, error)
	verify    func(ctx context.Context, slot boot.Slot) (string, error)
	committed boot.Slot
	down      bool
	reboots   []string
	calls     []string
}

// callList is what the effects were asked, in order.
func (s *stub) callList() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprint(s.calls)
}

func (s *stub) note(c string) {
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
}

func (s *stub) Pull(ctx context.Context, a ActPull) (PullResult, error) {
	s.note("pull " + a.Image)
	if s.pull != nil {
		return s.pull(ctx, a.Image)
	}
	return PullResult{Digest: "sha256:d", Version: "v2", SlotSHA256: "s", SlotSize: 10}, nil
}
func (s *stub) Write(ctx context.Context, a ActWriteSlot, progress func(int64, int64)) error {
	s.note(fmt.Sprintf("write %s %s", a.Slot, a.Image))
	return nil
}
func (s *stub) Verify(ctx context.Context, slot boot.Slot) (string, error) {
	s.note("verify " + string(slot))
	if s.verify != nil {
		return s.verify(ctx, slot)
	}
	return "v1", nil
}
func (s *stub) WipeEphemeral(context.Context) error { return nil }
func (s *stub) Committed() boot.Slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed == "" {
		return boot.SlotA
	}
	return s.committed
}
func (s *stub) Arm(boot.Slot) error { return nil }
func (s *stub) Disarm() error       { return nil }
func (s *stub) Commit(slot boot.Slot) error {
	s.note("commit " + string(slot))
	s.mu.Lock()
	s.committed = slot
	s.mu.Unlock()
	return nil
}
func (s *stub) Stop(context.Context) error                    { s.note("stop"); return nil }
func (s *stub) Trial(context.Context, bool, TrialNotes) error { return nil }
func (s *stub) Finish()                                       {}
func (s *stub) Cordon(context.Context) (bool, bool, error)    { s.note("cordon"); return true, false, nil }
func (s *stub) Drain(context.Context, ActDrain) error         { return nil }
func (s *stub) Uncordon(context.Context) error                { s.note("uncordon"); return nil }
func (s *stub) Reboot(reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reboots = append(s.reboots, reason)
	return nil
}
func (s *stub) Down() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.down
}

// memDevice is a META partition in memory.
type memDevice struct {
	mu sync.Mutex
	b  []byte
}

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(p, d.b[off:]), nil
}
func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(d.b[off:], p), nil
}
func (d *memDevice) Sync() error { return nil }

// newTestExecutor runs an executor over s and a real META store in memory, booted on slot A.
func newTestExecutor(t *testing.T, s *stub) (*Executor, *meta.Store) {
	t.Helper()
	st, _, err := meta.Open(&memDevice{b: make([]byte, 2*meta.CopySize)})
	if err != nil {
		t.Fatal(err)
	}
	idle := make(chan Record, 100)
	ex := NewExecutor(Record{}, Options{Store: st, Effects: Effects{Slots: s, Boot: s, Host: s, Kube: s, Power: s},
		Idle: func(r Record, _ bool) {
			select {
			case idle <- r:
			default:
			}
		}})
	ctx, cancel := context.WithCancel(context.Background())
	go ex.Run(ctx)
	t.Cleanup(func() { ex.Stop(time.Second); cancel() })
	if err := ex.Boot(ctx, Booted{Slot: boot.SlotA, Committed: boot.SlotA}); err != nil {
		t.Fatal(err)
	}
	ex.Ready()
	return ex, st
}

// waitFor polls the executor's record until cond holds.
func waitFor(t *testing.T, ex *Executor, what string, cond func(Record) bool) Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := ex.Record()
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; record %+v", what, r.Current)
		}
		time.Sleep(time.Millisecond)
	}
}

func req(id, image string) Request {
	return Request{ID: id, Image: image, Preserve: true, FromVersion: "v1", Booted: boot.SlotA}
}

// TestCancelStopsThePull (defect 1): a cancel cancels the running pull; whatever that pull
// still reports — success with the old image's version, or a late failure — never reaches the
// upgrade requested after it, which runs its own pull.
func TestCancelStopsThePull(t *testing.T) {
	for _, late := range []string{"success", "failure"} {
		t.Run(late, func(t *testing.T) {
			first := make(chan struct{})
			second := make(chan struct{})
			s := &stub{}
			s.pull = func(ctx context.Context, image string) (PullResult, error) {
				if image == "r/old:v2" {
					close(first)
					<-ctx.Done() // cancelled ...
					if late == "failure" {
						return PullResult{}, errors.New("registry: 500 after the cancel")
					}
					// ... but it finished anyway, with the old image.
					return PullResult{Digest: "sha256:old", Version: "old", SlotSHA256: "o", SlotSize: 1}, nil
				}
				<-second
				return PullResult{Digest: "sha256:new", Version: "v3", SlotSHA256: "n", SlotSize: 2}, nil
			}
			ex, _ := newTestExecutor(t, s)
			ctx := t.Context()
			if err := ex.Request(ctx, req("u1", "r/old:v2")); err != nil {
				t.Fatal(err)
			}
			<-first
			if err := ex.Cancel(ctx, "by operator"); err != nil {
				t.Fatal(err)
			}
			// The new request is accepted once the cancelled pull has returned (a 409 before).
			var err error
			for range 100 {
				if err = ex.Request(ctx, req("u2", "r/new:v3")); !errors.Is(err, ErrBusy) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("request after the cancel: %v", err)
			}
			time.Sleep(50 * time.Millisecond) // room for a stale outcome to do damage
			r := ex.Record()
			if r.Current.ID != "u2" || r.Current.State != Pulling || r.Current.ToVersion != "" {
				t.Fatalf("the new upgrade moved on without its own pull: %+v", r.Current)
			}
			if r.History[0].ID != "u1" || r.History[0].State != Aborted || !strings.Contains(r.History[0].Reason, "cancelled") {
				t.Errorf("the cancelled upgrade: %+v", r.History[0])
			}
			close(second)
			r = waitFor(t, ex, "u2 pulled", func(r Record) bool { return r.Current.State != Pulling })
			if r.Current.ToVersion != "v3" || r.Current.Digest != "sha256:new" {
				t.Errorf("u2 took its version from %q (%s)", r.Current.ToVersion, r.Current.Digest)
			}
			r = waitFor(t, ex, "u2 written", func(r Record) bool { return r.Current.State == Rebooting })
			if !strings.Contains(s.callList(), "write B r/new@sha256:new") {
				t.Errorf("u2 wrote something else than its own pull: %v", s.callList())
			}
		})
	}
}

// TestRollbackSerialized (defect 2): while a rollback verifies the other slot, an upgrade
// (which would write that very slot) is refused; once the rollback committed it, an upgrade is
// refused too (the booted slot is no longer the committed one) until the node rebooted.
func TestRollbackSerialized(t *testing.T) {
	verifying := make(chan struct{})
	release := make(chan struct{})
	s := &stub{verify: func(ctx context.Context, slot boot.Slot) (string, error) {
		close(verifying)
		<-release
		return "v1", nil
	}}
	ex, _ := newTestExecutor(t, s)
	ctx := t.Context()
	done := make(chan error, 1)
	go func() { done <- ex.Rollback(ctx, boot.SlotA, "") }()
	<-verifying
	if err := ex.Request(ctx, req("u1", "r/i:v2")); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "rollback") {
		t.Fatalf("upgrade during the rollback's verify: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("rollback: %v", err)
	}
	waitFor(t, ex, "the reboot", func(Record) bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.reboots) == 1 })
	time.Sleep(10 * time.Millisecond) // the reboot request returned; this stub's node stays up
	if err := ex.Request(ctx, req("u1", "r/i:v2")); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "not the committed slot") {
		t.Fatalf("upgrade after the rollback committed B, booted A: %v", err)
	}
	r := ex.Record()
	if len(r.Rollbacks) != 1 || r.Rollbacks[0].To != boot.SlotB || r.Rollbacks[0].Version != "v1" || r.Current != nil {
		t.Errorf("record: %+v", r)
	}
	if strings.Contains(s.callList(), "write") {
		t.Errorf("a slot was written: %v", s.callList())
	}
}

// TestRollbackRefusedWhileShuttingDown (defect 3): a rollback asked for while the node shuts
// down is refused as such (a 409 at the endpoint), and commits nothing.
func TestRollbackRefusedWhileShuttingDown(t *testing.T) {
	s := &stub{}
	ex, _ := newTestExecutor(t, s)
	s.mu.Lock()
	s.down = true
	s.mu.Unlock()
	if err := ex.Rollback(t.Context(), boot.SlotA, ""); !errors.Is(err, ErrShutdown) {
		t.Fatalf("rollback while shutting down: %v", err)
	}
	if err := ex.Request(t.Context(), req("u1", "r/i:v2")); !errors.Is(err, ErrShutdown) {
		t.Fatalf("upgrade while shutting down: %v", err)
	}
	if s.Committed() != boot.SlotA || s.callList() != "[]" || ex.Record().RollingBack != nil {
		t.Errorf("something changed: committed %s, calls %v", s.Committed(), s.callList())
	}
}

// TestLongFailureReasonsPersist (defect 4): pulls failing with a registry's whole error page
// as the reason, twenty times over, each end aborted and persisted on a real META store; the
// record stays bounded. (The earlier executor failed to persist on the 7th and left the
// upgrade in pulling with nothing running.)
func TestLongFailureReasonsPersist(t *testing.T) {
	page := strings.Repeat("<html>Internal Server Error &amp; more</html>\n", 2500) // ~110 KB
	s := &stub{pull: func(context.Context, string) (PullResult, error) { return PullResult{}, errors.New(page) }}
	ex, st := newTestExecutor(t, s)
	for i := range 20 {
		id := fmt.Sprintf("u%d", i)
		gen := st.Generation()
		if err := ex.Request(t.Context(), req(id, "r/i:v2")); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		r := waitFor(t, ex, id+" aborted", func(r Record) bool { return r.Current.ID == id && r.Current.State.Terminal() })
		if r.Current.State != Aborted || len(r.Current.Reason) > MaxText {
			t.Fatalf("%s: %s, reason of %d bytes", id, r.Current.State, len(r.Current.Reason))
		}
		if st.Generation() < gen+2 {
			t.Fatalf("%s: META generation %d → %d: not persisted", id, gen, st.Generation())
		}
	}
	b, _ := ex.Record().Encode()
	t.Logf("record after 20 failed pulls: %d bytes (room for %d)", len(b), meta.MaxPayload)
}

// TestRecordReadersRace (defect 6): status readers copy the record while the executor changes
// it (go test -race).
func TestRecordReadersRace(t *testing.T) {
	s := &stub{}
	ex, _ := newTestExecutor(t, s)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := ex.Record()
				if r.Current != nil {
					_ = r.Current.State
					r.Current.Reason = "readers get copies" // must not reach the executor
				}
			}
		}()
	}
	if err := ex.Request(t.Context(), req("u1", "r/i:v2")); err != nil {
		t.Fatal(err)
	}
	r := waitFor(t, ex, "rebooting", func(r Record) bool { return r.Current.State == Rebooting })
	close(stop)
	wg.Wait()
	if r.Current.Reason != "" {
		t.Errorf("a reader's change reached the record: %q", r.Current.Reason)
	}
}

// flakyStore fails the writes it is told to, then works.
type flakyStore struct {
	mu   sync.Mutex
	st   *meta.Store
	fail int // writes still to fail
}

func (f *flakyStore) Write(b []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail > 0 {
		f.fail--
		return errors.New("EIO")
	}
	return f.st.Write(b)
}

// TestStopWaitsForTheRunningAction: Stop returns only once the action it cancelled has
// returned (the shutdown unmounts and reboots after it), within its grace.
func TestStopWaitsForTheRunningAction(t *testing.T) {
	started := make(chan struct{})
	var returned time.Time
	var mu sync.Mutex
	s := &stub{pull: func(ctx context.Context, image string) (PullResult, error) {
		close(started)
		<-ctx.Done()
		time.Sleep(200 * time.Millisecond) // an effect slow to notice
		mu.Lock()
		returned = time.Now()
		mu.Unlock()
		return PullResult{}, ctx.Err()
	}}
	ex, _ := newTestExecutor(t, s)
	if err := ex.Request(t.Context(), req("u1", "r/i:v2")); err != nil {
		t.Fatal(err)
	}
	<-started
	ex.Stop(5 * time.Second)
	stopped := time.Now()
	mu.Lock()
	defer mu.Unlock()
	if returned.IsZero() || stopped.Before(returned) {
		t.Fatalf("Stop returned at %v, before the pull returned (%v)", stopped, returned)
	}
}

// TestObligationOutlivesMETAFailure: an obligation done while META fails to record it (the
// uncordon worked, writing Uncordoned did not) is not owed again once META works: the record
// catches up by itself, and the next upgrade is taken without a reboot.
func TestObligationOutlivesMETAFailure(t *testing.T) {
	dev := &memDevice{b: make([]byte, 2*meta.CopySize)}
	st, _, err := meta.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	owed := Record{Current: &Upgrade{ID: "u0", State: Aborted, Reason: "drain blocked", Uncordon: true, FromSlot: boot.SlotA, ToSlot: boot.SlotB}}
	b, _ := owed.Encode()
	if err := st.Write(b); err != nil {
		t.Fatal(err)
	}
	fs := &flakyStore{st: st}
	s := &stub{}
	ex := NewExecutor(owed, Options{Store: fs, Effects: Effects{Slots: s, Boot: s, Host: s, Kube: s, Power: s},
		RetryMin: 5 * time.Millisecond, PersistBackoff: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ex.Run(ctx)
	defer ex.Stop(time.Second)
	if err := ex.Boot(ctx, Booted{Slot: boot.SlotA, Committed: boot.SlotA}); err != nil {
		t.Fatal(err)
	}
	fs.mu.Lock()
	fs.fail = 3 // every try of the write that records the uncordon
	fs.mu.Unlock()
	ex.Ready()
	waitFor(t, ex, "the uncordon recorded", func(r Record) bool { return !r.Current.Uncordon })
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, payload, err := meta.Open(dev)
		if err != nil {
			t.Fatal(err)
		}
		onMeta, _ := Decode(payload)
		if !onMeta.Current.Uncordon {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("META still owes the uncordon: the record never caught up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := ex.Request(ctx, req("u1", "r/i:v2")); err != nil {
		t.Fatalf("request after META came back: %v", err)
	}
	if got := strings.Count(s.callList(), "uncordon"); got != 1 {
		t.Errorf("uncordon done %d times", got)
	}
}
