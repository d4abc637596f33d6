// Package upgrade is the upgrade state machine and the one executor that runs it.
//
// The record (record.go) is persisted on META. Step (step.go) is a pure, deterministic
// transition function Step(record, event) → (record, actions): no I/O, no clock. The Executor
// (executor.go) is the only owner of the record: every input (API requests, cancel,
// rollback, the boot, effect outcomes, retry timers, the lease watch) is an event on its one
// queue; it steps, persists (synced), then performs the actions through small effect
// interfaces (effects.go), whose outcomes come back as events.
package upgrade

import (
	"encoding/json"
	"fmt"
	"time"

	"keel/boot"
)

// State is where an upgrade is. The executor persists a state before starting its effect, so
// after a power cut the record names the effect that may have been interrupted.
type State string

// States, in the order of a successful upgrade.
const (
	Pulling State = "pulling" // download and verify the installer image; nothing changed yet
	// A staged upgrade ("stage": true) writes the inactive slot while the node stays in
	// service, then waits in Staged (across reboots) until it is activated (it goes on from
	// Locking or Cordoning, and skips Writing) or cancelled.
	Staging State = "staging" // stream the slot onto the inactive partition, in service
	Staged  State = "staged"  // the slot is written and verified; waiting for activate
	// Control-plane nodes only: take the cluster-wide upgrade lease (waiting while another
	// node holds it), then check that the cluster can spare this etcd member.
	Locking   State = "locking"
	Checking  State = "checking"
	Cordoning State = "cordoning" // mark the Kubernetes node unschedulable (skipped without config)
	Draining  State = "draining"  // evict its pods, honouring PodDisruptionBudgets
	// Preparing: control-plane only: save a snapshot of the etcd member's database, then hand
	// leadership over if it leads, so that its stop or leave costs the cluster no election.
	Preparing State = "preparing"
	// Leaving: control-plane, preserve=false: remove this etcd member from the cluster.
	Leaving    State = "leaving"
	Stopping   State = "stopping"   // stop services, kill what holds STATE/EPHEMERAL, unmount
	Writing    State = "writing"    // stream the slot onto the inactive partition, re-read, verify
	Wiping     State = "wiping"     // preserve=false: re-create EPHEMERAL
	Arming     State = "arming"     // put the new slot under trial (grubenv next_entry, trial_tries)
	Rebooting  State = "rebooting"  // point of no return passed: reboot into the new slot
	Trial      State = "trial"      // booted the new slot: watchdog armed, health gates running
	Committing State = "committing" // make the new slot the default (grubenv saved_entry)
	// A control-plane node that left rejoins (learner, promoted) during the trial, before the
	// commit; after it, the node is uncordoned and releases the upgrade lease.
	Done       State = "done"        // terminal: running the new version
	Aborted    State = "aborted"     // terminal: stopped before the point of no return
	RolledBack State = "rolled-back" // terminal: the new slot failed; back on the old one
)

// States are every state (a client tells them from other events of an upgrade).
var States = []State{Pulling, Staging, Staged, Locking, Checking, Cordoning, Draining, Preparing, Leaving, Stopping,
	Writing, Wiping, Arming, Rebooting, Trial, Committing, Done, Aborted, RolledBack}

// Terminal reports whether s ends an upgrade.
func (s State) Terminal() bool { return s == Done || s == Aborted || s == RolledBack }

// Staging reports whether u is a staged upgrade still in service: pulling, staging, or
// staged and waiting for its activation (a cluster controller counts such a node as serving).
func (u *Upgrade) Staging() bool {
	return u != nil && (u.State == Staging || u.State == Staged || u.Stage && u.State == Pulling)
}

// OutOfService reports whether u has the node out of service: in flight, and not a staged
// upgrade still serving.
func (u *Upgrade) OutOfService() bool { return u != nil && !u.State.Terminal() && !u.Staging() }

// MaxBoots bounds the boots one upgrade may see before it is ended, so that no sequence of
// crashes can reboot a node forever.
const MaxBoots = 3

// Progress counts bytes of the slot write.
type Progress struct {
	Written int64 `json:"written"`
	Total   int64 `json:"total"`
}

// Upgrade is one upgrade's record.
type Upgrade struct {
	ID         string `json:"id"`
	State      State  `json:"state"`
	Image      string `json:"image"`
	Digest     string `json:"digest,omitempty"`     // of the installer image's manifest
	SignedBy   string `json:"signed_by,omitempty"`  // the trusted key that signed it
	SignerKey  string `json:"signer_key,omitempty"` // its installer.KeyID ("" unsigned): a staged upgrade is checked again (Trust)
	SlotSHA256 string `json:"slot_sha256,omitempty"`
	SlotSize   int64  `json:"slot_size,omitempty"`
	Preserve   bool   `json:"preserve"`
	Force      bool   `json:"force"`
	Downgrade  bool   `json:"downgrade,omitempty"` // the request allows an older version
	// Stage: the slot is written while the node serves (Staging) and the upgrade waits in
	// Staged for its activation; the out-of-service part then skips the write.
	Stage         bool      `json:"stage,omitempty"`
	DrainTimeoutS int       `json:"drain_timeout_s,omitempty"`
	FromVersion   string    `json:"from_version"`
	ToVersion     string    `json:"to_version,omitempty"`
	FromSlot      boot.Slot `json:"from_slot"`
	ToSlot        boot.Slot `json:"to_slot"`
	Boots         int       `json:"boots"` // boots seen while this upgrade was in flight
	// TrialBoots counts the boots of the new slot that reached its init: more than one is a
	// trial resumed after a cut (GRUB gives the slot boot.TrialTries boots).
	TrialBoots int `json:"trial_boots,omitempty"`
	// SentBack: after the upgrade ended, a boot of the new slot on a try left over was sent
	// back to the committed slot (once only).
	SentBack    bool      `json:"sent_back,omitempty"`
	Progress    Progress  `json:"progress"`
	RequestedAt time.Time `json:"requested_at"`
	// ActivatedAt is when a staged upgrade was activated (its time out of service starts).
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	UpdatedAt   time.Time `json:"updated_at"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	// Reason says why an upgrade was aborted or rolled back.
	Reason string `json:"reason,omitempty"`
	// Kubernetes says what the Kubernetes steps did ("skipped: not configured", "cordoned",
	// "already cordoned by someone else", ...).
	Kubernetes string `json:"kubernetes,omitempty"`
	// Uncordon is a persisted obligation: a cordon of ours may exist and must be lifted when
	// the upgrade ends, whatever the outcome, retried until the API server answers and across
	// reboots.
	Uncordon bool `json:"uncordon,omitempty"`
	// Warning records what force let pass (a drain that failed).
	Warning string `json:"warning,omitempty"`

	// ControlPlane: this node runs an etcd member; the lease, check and leave steps apply.
	ControlPlane bool `json:"control_plane,omitempty"`
	// Member is this node's etcd member name.
	Member string `json:"member,omitempty"`
	// Lease is a persisted obligation: the id of the etcd lease this upgrade holds (or waits
	// with) for the upgrade lock, kept alive across the reboot and revoked when it ends.
	Lease int64 `json:"lease,omitempty"`
	// Lock says where the upgrade lock stands ("waiting for the upgrade lease, held by N
	// since T", "held since T", "released at T").
	Lock string `json:"lock,omitempty"`
	// Etcd records the quorum check's verdict with its numbers, and the leave and rejoin.
	Etcd string `json:"etcd,omitempty"`
	// Rejoin is a persisted obligation: this node's member may have been removed from the
	// cluster; verify it, and rejoin (learner, caught up, promoted) before trusting its etcd.
	Rejoin bool `json:"rejoin,omitempty"`
	// Wipe is a persisted obligation: EPHEMERAL's re-creation was started (preserve=false) and
	// may be half done; it is done again, before EPHEMERAL is mounted, until it completes.
	Wipe bool `json:"wipe,omitempty"`
}

// SlotRecord is what META knows of a slot's content.
type SlotRecord struct {
	Version  string `json:"version,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Size     int64  `json:"size,omitempty"`
	Verified bool   `json:"verified"` // written and read back with the expected digest
}

// HistoryLen is how many finished upgrades the record keeps.
const HistoryLen = 8

// Record is the whole META payload.
type Record struct {
	// Current is the upgrade in flight, or the last one (terminal) until the next starts.
	Current *Upgrade `json:"current,omitempty"`
	// History holds earlier finished upgrades, newest first.
	History []Upgrade `json:"history,omitempty"`
	// Slots records what each slot holds, as far as the node wrote or verified it.
	Slots map[boot.Slot]SlotRecord `json:"slots,omitempty"`
	// Rollbacks records operator rollbacks (not upgrades), newest first.
	Rollbacks []Rollback `json:"rollbacks,omitempty"`
	// RollingBack is a rollback in flight: its slot is being verified or committed. No
	// upgrade starts while it is set; the next boot settles one a reboot interrupted.
	RollingBack *Rollback `json:"rolling_back,omitempty"`
	// Floor is the rollback floor: no version below it is installed or rolled back to. It
	// is raised from the config (upgrade.min_version) and never lowered, so that a config
	// that loses it (or an old one written back) does not lower it.
	Floor string `json:"floor,omitempty"`
}

// Rollback is one POST /v1/rollback.
type Rollback struct {
	From boot.Slot `json:"from"`
	To   boot.Slot `json:"to"`
	At   time.Time `json:"at"`
	// Version is what the slot rolled back to holds, once verified.
	Version string `json:"version,omitempty"`
	// Phase is where a rollback in flight is: verifying, committing.
	Phase string `json:"phase,omitempty"`
}

// Rollback phases.
const (
	RollbackVerifying  = "verifying"
	RollbackCommitting = "committing"
)

// Active reports whether an upgrade is in flight.
func (r Record) Active() bool { return r.Current != nil && !r.Current.State.Terminal() }

// Busy says why no upgrade or rollback may start now ("" when one may): an upgrade in
// flight, a rollback in flight, or an ended upgrade that still owes an obligation (which a
// new record would bury in the history).
func (r Record) Busy() string {
	switch u := r.Current; {
	case r.Active() && u.State == Staged:
		return fmt.Sprintf("upgrade %s to %s is staged: activate it (POST /v1/upgrade/activate) or discard it (POST /v1/upgrade/cancel)", u.ID, u.ToVersion)
	case r.Active():
		return fmt.Sprintf("upgrade %s is %s", u.ID, u.State)
	case r.RollingBack != nil:
		return fmt.Sprintf("a rollback to slot %s is %s", r.RollingBack.To, r.RollingBack.Phase)
	case u != nil && len(obligations(u)) > 0:
		return fmt.Sprintf("upgrade %s ended %s but still has to %v", u.ID, u.State, obligations(u))
	}
	return ""
}

// Clone returns a deep copy, so Step never mutates its input.
func (r Record) Clone() Record {
	out := r // value fields; what is shared below is copied
	out.History, out.Rollbacks = append([]Upgrade(nil), r.History...), append([]Rollback(nil), r.Rollbacks...)
	out.Current, out.RollingBack, out.Slots = nil, nil, nil
	if r.Current != nil {
		c := *r.Current
		out.Current = &c
	}
	if r.RollingBack != nil {
		rb := *r.RollingBack
		out.RollingBack = &rb
	}
	if r.Slots != nil {
		out.Slots = map[boot.Slot]SlotRecord{}
		for k, v := range r.Slots {
			out.Slots[k] = v
		}
	}
	return out
}

// Encode is the META payload. Maps are encoded by encoding/json with sorted keys, so the same
// record always gives the same bytes.
func (r Record) Encode() ([]byte, error) { return json.Marshal(r) }

// Decode parses a META payload; an empty payload is an empty record (a fresh node).
func Decode(b []byte) (Record, error) {
	var r Record
	if len(b) == 0 {
		return r, nil
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, fmt.Errorf("upgrade: decode record: %w", err)
	}
	if r.Current != nil && !validState(r.Current.State) {
		return Record{}, fmt.Errorf("upgrade: decode record: unknown state %q", r.Current.State)
	}
	return r, nil
}

func validState(s State) bool {
	switch s {
	case Pulling, Staging, Staged, Locking, Checking, Cordoning, Draining, Preparing, Leaving, Stopping, Writing, Wiping, Arming, Rebooting, Trial, Committing, Done, Aborted, RolledBack:
		return true
	}
	return false
}
