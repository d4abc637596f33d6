package upgrade

import (
	"time"

	"keel/boot"
)

// Event is an input to Step: a request, a boot, or what an effect reported.
type Event interface{ isEvent() }

// Request asks for an upgrade (POST /v1/upgrade, already validated).
type Request struct {
	ID, Image string
	Preserve  bool
	Force     bool
	// Downgrade allows a version older than the running one (never below the floor).
	Downgrade bool
	// Stage writes the slot while the node serves and waits for Activate.
	Stage      bool
	MinVersion string // the config's rollback floor; raises the record's

	DrainTimeoutS int
	FromVersion   string
	// Booted is the running slot; Committed the one grubenv commits (an upgrade starts only
	// from the committed slot: the other one is about to be overwritten).
	Booted, Committed boot.Slot
	// ControlPlane nodes run an etcd member named Member: the lease, check and leave steps
	// apply to them.
	ControlPlane bool
	Member       string
	Now          time.Time
}

// Activate goes on with a staged upgrade: the cordon, drain and stop, then the reboot into
// the slot written while the node served.
type Activate struct {
	ID    string // the staged upgrade meant ("": whichever is staged)
	Trust *Trust // the boot's signature policy (the executor fills it in)
	Now   time.Time
}

// LeaseGranted reports the etcd lease the upgrade lock will be held with; persisted before
// waiting for the lock so that a node cut off while waiting or holding revokes it later.
type LeaseGranted struct {
	ID  int64
	Now time.Time
}

// LockWaiting reports who holds the upgrade lock this upgrade waits for.
type LockWaiting struct {
	Holder string // "NODE since T"
	Now    time.Time
}

// Checked reports the quorum check's verdict (passed; a refusal is Failed).
type Checked struct {
	Reason string
	Now    time.Time
}

// KubeReady reports, during a trial, that this boot's kubelet has the node Ready.
type KubeReady struct {
	Note string
	Now  time.Time
}

// EtcdNoted reports, while the node prepares its etcd member, a step taken (the snapshot
// saved, leadership handed over): it goes into the record's Etcd.
type EtcdNoted struct {
	Note string
	Now  time.Time
}

// Rejoined reports that this node's etcd member is a voter again (or never left).
type Rejoined struct {
	Note string
	Now  time.Time
}

// Released reports that the upgrade lease is revoked.
type Released struct{ Now time.Time }

// LeaseLost reports that the lease can no longer be kept alive: it expired while the node was
// away longer than its TTL, or its keep-alive failed for that long. The lock may have passed
// to another node.
type LeaseLost struct {
	Lease  int64 // the lease lost (0: whichever the upgrade holds)
	Reason string
	Now    time.Time
}

// Cancel asks to give up an upgrade that has changed nothing yet (pulling, waiting for the
// lease, checking).
type Cancel struct {
	Reason string
	Now    time.Time
}

// Pulled reports a pulled and verified installer image.
type Pulled struct {
	Digest, ToVersion, SlotSHA256 string
	SignedBy, SignerKey           string
	SlotSize                      int64
	Now                           time.Time
}

// Cordoned reports the cordon step: Ours when this init now owns a cordon, Skipped when the
// node has no Kubernetes configuration.
type Cordoned struct {
	Ours, Skipped bool
	Note          string // e.g. "already cordoned by someone else"
	Now           time.Time
}

// Wiped reports that EPHEMERAL was re-created.
type Wiped struct{ Now time.Time }

// Uncordoned reports that our cordon (if any) is lifted.
type Uncordoned struct{ Now time.Time }

// Completed reports that the current state's effect completed.
type Completed struct{ Now time.Time }

// Failed reports that the current state's effect failed.
type Failed struct {
	Reason string
	Now    time.Time
}

// Progressed reports slot-write progress (no state change).
type Progressed struct {
	Written, Total int64
	Now            time.Time
}

// Booted is the first event of every boot: which slot GRUB started, and which one grubenv
// commits (saved_entry, A when unset).
type Booted struct {
	Slot, Committed boot.Slot
	MinVersion      string // the config's rollback floor; raises the record's
	// Trust is this boot's signature policy: a staged upgrade it no longer allows is
	// discarded (nil: not checked).
	Trust *Trust
	Now   time.Time
}

// Health reports the trial boot's health gates.
type Health struct {
	OK     bool
	Reason string
	Now    time.Time
}

// RollbackRequest asks to make the other slot the committed one and reboot into it
// (POST /v1/rollback), once its content checks out against its manifest.
type RollbackRequest struct {
	Booted     boot.Slot
	MinVersion string // the config's rollback floor; raises the record's
	Now        time.Time
}

// RollbackVerified reports that the rollback's slot holds a whole image of Version.
type RollbackVerified struct {
	Version string
	Now     time.Time
}

// RollbackRefused reports that the rollback's slot holds no verifiable image.
type RollbackRefused struct {
	Reason string
	Now    time.Time
}

// RollbackCommitted reports that grubenv now commits the rollback's slot.
type RollbackCommitted struct{ Now time.Time }

// RollbackFailed reports that the commit of the rollback's slot failed.
type RollbackFailed struct {
	Reason string
	Now    time.Time
}

// PersistFailed reports that the record Step returned could not be written to META. It is
// applied to the last record that was written, and ends the upgrade by a path that needs no
// further write to be safe.
type PersistFailed struct {
	Reason string
	Now    time.Time
}

func (Request) isEvent()           {}
func (Activate) isEvent()          {}
func (Pulled) isEvent()            {}
func (Completed) isEvent()         {}
func (Cordoned) isEvent()          {}
func (Uncordoned) isEvent()        {}
func (Wiped) isEvent()             {}
func (Failed) isEvent()            {}
func (Progressed) isEvent()        {}
func (Booted) isEvent()            {}
func (Health) isEvent()            {}
func (LeaseGranted) isEvent()      {}
func (LockWaiting) isEvent()       {}
func (Checked) isEvent()           {}
func (Rejoined) isEvent()          {}
func (EtcdNoted) isEvent()         {}
func (KubeReady) isEvent()         {}
func (Released) isEvent()          {}
func (LeaseLost) isEvent()         {}
func (Cancel) isEvent()            {}
func (RollbackRequest) isEvent()   {}
func (RollbackVerified) isEvent()  {}
func (RollbackRefused) isEvent()   {}
func (RollbackCommitted) isEvent() {}
func (RollbackFailed) isEvent()    {}
func (PersistFailed) isEvent()     {}
