package upgrade

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"keel/boot"
	"keel/disk/meta"
)

func TestStepRejects(t *testing.T) {
	now := time.Unix(1, 0)
	r, _, err := Step(Record{}, Request{ID: "a", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Step(r, Request{ID: "b", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA}); err == nil {
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
		r, _, _ = Step(r, Request{ID: fmt.Sprint(i), Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA})
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
	r, _, _ := Step(Record{}, Request{ID: "a", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA})
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
	r, _, _ := Step(Record{}, Request{ID: "a", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA, Preserve: true, ControlPlane: true, Member: "n1", Now: now})
	r, acts, _ := Step(r, Pulled{ToVersion: "v2", Now: now})
	if r.Current.State != Locking || fmt.Sprint(acts) != "[grant-lease]" {
		t.Fatalf("after pull: %s %v", r.Current.State, acts)
	}
	r, acts, _ = Step(r, LeaseGranted{ID: 42, Now: now})
	if r.Current.Lease != 42 || fmt.Sprint(acts) != "[lock]" || acts[0].(ActLock).Lease != 42 {
		t.Fatalf("after the grant: lease %x, %v", r.Current.Lease, acts)
	}
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
	if r.Current.State != Preparing {
		t.Fatalf("state %s", r.Current.State)
	}
	if _, _, err := Step(r, Cancel{Now: now}); !errors.Is(err, ErrTooLate) {
		t.Errorf("cancel while preparing: %v, want ErrTooLate", err)
	}
	// An ended upgrade that still holds its lease (or owes an uncordon, a rejoin) refuses a
	// new request until that is done.
	if _, _, err := Step(c, Request{ID: "b", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA, Now: now}); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "release-lease") {
		t.Errorf("request while the last upgrade still holds its lease: %v", err)
	}
	c, _, _ = Step(c, Released{Now: now})
	if _, _, err := Step(c, Request{ID: "b", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA, Now: now}); err != nil {
		t.Errorf("request after the release: %v", err)
	}
}

// TestLeaseLostAndRejoin: a lease that expired while the node rebooted is recorded as a
// warning and no longer owed; a rejoin clears its obligation with a note. Neither is accepted
// when nothing is owed.
func TestLeaseLostAndRejoin(t *testing.T) {
	now := time.Unix(1, 0)
	r, _, _ := Step(Record{}, Request{ID: "a", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA, Preserve: false, ControlPlane: true, Member: "n1", Now: now})
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
	if r.Current.State != Preparing || r.Current.Rejoin || fmt.Sprint(acts) != "[prepare-member]" {
		t.Fatalf("after the cordon: %s rejoin=%v %v", r.Current.State, r.Current.Rejoin, acts)
	}
	r, acts, _ = Step(r, Completed{Now: now})
	if r.Current.State != Leaving || !r.Current.Rejoin || fmt.Sprint(acts) != "[leave-cluster]" {
		t.Fatalf("after the cordon: %s rejoin=%v %v", r.Current.State, r.Current.Rejoin, acts)
	}
	// On through the reboot into the new slot (the lease was lost while the node was away).
	r, _, _ = Step(r, Completed{Now: now}) // left
	r, _, _ = Step(r, Completed{Now: now}) // stopped
	r, _, _ = Step(r, Completed{Now: now}) // written
	r, _, _ = Step(r, Wiped{Now: now})
	r, _, _ = Step(r, Completed{Now: now}) // armed
	r, acts, _ = Step(r, Booted{Slot: boot.SlotB, Committed: boot.SlotA, Now: now})
	if r.Current.State != Trial || fmt.Sprint(acts) != "[keep-lease trial]" {
		t.Fatalf("boot of the new slot: %s %v", r.Current.State, acts)
	}
	r, _, _ = Step(r, LeaseLost{Reason: "expired during the reboot", Now: now})
	if r.Current.Lease != 0 || !strings.Contains(r.Current.Warning, "expired during the reboot") || r.Current.State != Trial {
		t.Errorf("after lease lost: %+v", r.Current)
	}
	r, _, _ = Step(r, Rejoined{Note: "still a voter", Now: now})
	if r.Current.Rejoin || !strings.Contains(r.Current.Etcd, "still a voter") {
		t.Errorf("after rejoined: %+v", r.Current)
	}
	// The Kubernetes gate's note lands in the record during the trial, and only then.
	r, _, _ = Step(r, KubeReady{Note: "Ready as reported by this boot's kubelet", Now: now})
	if !strings.Contains(r.Current.Kubernetes, "Ready as reported by this boot's kubelet") || r.Current.State != Trial {
		t.Errorf("after kubernetes ready: %+v", r.Current)
	}
	r, _, _ = Step(r, Health{OK: true, Now: now})
	if _, _, err := Step(r, KubeReady{Note: "late", Now: now}); !errors.Is(err, ErrUnexpected) || r.Current.State == Trial {
		t.Errorf("kubernetes ready after the trial (%s): %v", r.Current.State, err)
	}
}

// TestLeaseLostBeforeStopping: the lease watch reports a lost lease while the upgrade still
// needs the lock (before its member stops): another node may take the lock now, so the upgrade
// ends there, uncordoned, and does not go on to stop its member. A lease event of another
// lease is not ours to act on.
func TestLeaseLostBeforeStopping(t *testing.T) {
	now := time.Unix(1, 0)
	r, _, _ := Step(Record{}, Request{ID: "a", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA, Preserve: true, ControlPlane: true, Member: "n1", Now: now})
	r, _, _ = Step(r, Pulled{ToVersion: "v2", Now: now})
	r, _, _ = Step(r, LeaseGranted{ID: 9, Now: now})
	r, _, _ = Step(r, Completed{Now: now})
	r, _, _ = Step(r, Checked{Reason: "ok", Now: now})
	r, _, _ = Step(r, Cordoned{Ours: true, Now: now})
	if r.Current.State != Draining {
		t.Fatalf("state %s", r.Current.State)
	}
	if _, _, err := Step(r, LeaseLost{Lease: 8, Reason: "x", Now: now}); !errors.Is(err, ErrUnexpected) {
		t.Errorf("another lease's loss: %v", err)
	}
	n, acts, err := Step(r, LeaseLost{Lease: 9, Reason: "keep-alive failed for 300 s", Now: now})
	if err != nil || n.Current.State != Aborted || !strings.Contains(n.Current.Reason, "upgrade lease lost") || fmt.Sprint(acts) != "[uncordon]" || n.Current.Lease != 0 {
		t.Errorf("lease lost while draining: %+v %v %v", n.Current, acts, err)
	}
}

// TestRecordAlwaysFits: the largest record the bounds allow — every text at MaxText of the
// character JSON escapes longest, a full history and rollback list — fits one META copy with
// a quarter to spare. Before the bounds, a registry's error page as the reason of each failed pull
// filled the copy on the seventh.
func TestRecordAlwaysFits(t *testing.T) {
	long := strings.Repeat("<", 10*MaxText) // '<' is 6 bytes in JSON ("\u003c")
	now := time.Unix(1, 0)
	worst := func(id string) Upgrade {
		u := Upgrade{ID: strings.Repeat("i", 64), State: RolledBack, Image: strings.Repeat("<", MaxImageRef),
			Digest: bound(long), SlotSHA256: bound(long), FromVersion: bound(long), ToVersion: bound(long),
			Reason: bound(long), Kubernetes: bound(long), Warning: bound(long), Member: bound(long),
			Lock: bound(long), Etcd: bound(long), RequestedAt: now, UpdatedAt: now, FinishedAt: now}
		return u
	}
	r := Record{Slots: map[boot.Slot]SlotRecord{boot.SlotA: {Version: bound(long), SHA256: bound(long)}, boot.SlotB: {Version: bound(long), SHA256: bound(long)}}}
	u := worst("c")
	r.Current = &u
	for range HistoryLen {
		r.History = append(r.History, worst("h"))
		r.Rollbacks = append(r.Rollbacks, Rollback{Version: bound(long), At: now})
	}
	r.RollingBack = &Rollback{Version: bound(long), Phase: RollbackCommitting}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("largest record: %d bytes of %d", len(b), meta.MaxPayload)
	if len(b) > meta.MaxPayload*3/4 {
		t.Errorf("largest record is %d bytes, more than three quarters of a META copy (%d)", len(b), meta.MaxPayload)
	}
	// Every text Step stores goes through bound: a failure reason as long as a registry's
	// error page is cut.
	n, _, _ := Step(Record{}, Request{ID: "a", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA, Now: now})
	n, _, _ = Step(n, Failed{Reason: long + long, Now: now})
	if len(n.Current.Reason) > MaxText || !strings.HasSuffix(n.Current.Reason, "…") {
		t.Errorf("reason of %d bytes kept", len(n.Current.Reason))
	}
	if _, _, err := Step(n, Request{ID: "b", Image: strings.Repeat("x", MaxImageRef+1), Booted: boot.SlotA, Now: now}); !errors.Is(err, ErrInvalid) {
		t.Errorf("overlong image reference: %v", err)
	}
}

func TestBound(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ok", "ok"},
		{"a\nb\x00c", "a b c"},
		{"bad \xff utf8", "bad ? utf8"},
		{strings.Repeat("é", MaxText), strings.Repeat("é", (MaxText-3)/2) + "…"},
	} {
		if got := bound(tc.in); got != tc.want {
			t.Errorf("bound(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPinned(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.0.2.2:5000/keel:v2", "10.0.2.2:5000/keel@sha256:d"},
		{"10.0.2.2:5000/keel", "10.0.2.2:5000/keel@sha256:d"},
		{"reg/keel@sha256:old", "reg/keel@sha256:d"},
		{"reg/team/keel:v2@sha256:old", "reg/team/keel@sha256:d"},
	} {
		if got := pinned(tc.in, "sha256:d"); got != tc.want {
			t.Errorf("pinned(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRollbackSteps: a rollback is refused while an upgrade is in flight and blocks upgrades
// while it runs; verified, committed and rebooted, it is recorded; refused, it changes nothing.
// A boot that cut it short records it only if grubenv holds its commit.
func TestRollbackSteps(t *testing.T) {
	now := time.Unix(1, 0)
	busy, _, _ := Step(Record{}, Request{ID: "a", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA, Now: now})
	if _, _, err := Step(busy, RollbackRequest{Booted: boot.SlotA, Now: now}); !errors.Is(err, ErrBusy) {
		t.Errorf("rollback during an upgrade: %v", err)
	}
	r, acts, err := Step(Record{}, RollbackRequest{Booted: boot.SlotA, Now: now})
	if err != nil || fmt.Sprint(acts) != "[verify-slot]" || acts[0].(ActVerifySlot).Slot != boot.SlotB {
		t.Fatalf("rollback: %v %v", acts, err)
	}
	if _, _, err := Step(r, Request{ID: "b", Image: "r/i:v2", FromVersion: "v1", Booted: boot.SlotA, Now: now}); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "rollback") {
		t.Errorf("upgrade during a rollback: %v", err)
	}
	if n, acts, _ := Step(r, RollbackRefused{Reason: "no image", Now: now}); n.RollingBack != nil || len(acts) != 0 || len(n.Rollbacks) != 0 {
		t.Errorf("refused: %+v %v", n, acts)
	}
	r, acts, _ = Step(r, RollbackVerified{Version: "v1", Now: now})
	if fmt.Sprint(acts) != "[commit-rollback]" {
		t.Fatalf("verified: %v", acts)
	}
	cut, _, _ := Step(r, Booted{Slot: boot.SlotA, Committed: boot.SlotA, Now: now})
	if cut.RollingBack != nil || len(cut.Rollbacks) != 0 {
		t.Errorf("cut before the commit landed: %+v", cut)
	}
	cut, _, _ = Step(r, Booted{Slot: boot.SlotB, Committed: boot.SlotB, Now: now})
	if cut.RollingBack != nil || len(cut.Rollbacks) != 1 || cut.Rollbacks[0].Version != "v1" {
		t.Errorf("cut after the commit landed: %+v", cut)
	}
	r, acts, _ = Step(r, RollbackCommitted{Now: now})
	if r.RollingBack != nil || len(r.Rollbacks) != 1 || fmt.Sprint(acts) != "[reboot]" {
		t.Errorf("committed: %+v %v", r, acts)
	}
}
