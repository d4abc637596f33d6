package upgrade

import (
	"keel/boot"
)

// Action is an effect the executor performs, in order, after persisting the record that asked
// for it. Each carries what its effect needs, so no effect reads the record: the record may
// have moved on (a cancel) by the time the effect runs, and the effect's answer is then
// discarded by the executor.
//
// String is the action's kind, stable: it names the action in logs, events and tests.
type Action interface {
	String() string
	isAction()
}

// Actions of an upgrade, in the order of a successful one.
type (
	// ActPull fetches the installer image and verifies it end to end (signature, slot size,
	// the slot's SHA-256 over all its bytes) without writing anything.
	ActPull struct {
		Image string
		Slot  boot.Slot // the slot it will go to (its partition bounds the slot size)
		// Versions is checked as soon as the image's version is known, before its slot
		// is downloaded (a refused downgrade costs a manifest, not the slot).
		Versions VersionPolicy
	}
	// ActGrant grants the etcd lease the upgrade lock will be held with (control plane).
	ActGrant struct{}
	// ActLock waits for the upgrade lock under the persisted lease, reporting holders.
	ActLock struct {
		Lease int64
		ID    string
	}
	// ActCheck is the quorum check, repeated until it passes or times out.
	ActCheck struct{ Preserve, Force bool }
	// ActCordon cordons the Kubernetes node (skipped without configuration).
	ActCordon struct{}
	// ActDrain drains it.
	ActDrain struct {
		ID       string
		TimeoutS int // 0: the node's configured timeout
		Force    bool
	}
	// ActPrepare saves a snapshot of this etcd member and hands its leadership over.
	// With Force, a snapshot that fails is a note, not the end (a node whose own member is
	// broken may still be upgraded, as force skips the quorum check).
	ActPrepare struct {
		ID       string
		Preserve bool
		Force    bool
	}
	// ActLeave removes this etcd member from the cluster.
	ActLeave struct{}
	// ActStop stops the services, kills what holds STATE and EPHEMERAL, unmounts them.
	ActStop struct{}
	// ActWriteSlot streams the image's slot onto the inactive partition, syncs, re-reads and
	// verifies it. Image names the pulled image by digest, so the bytes written are the ones
	// verified by the pull even if the tag moved since.
	ActWriteSlot struct {
		Slot   boot.Slot
		Image  string
		SHA256 string
		Size   int64
	}
	// ActWipe re-creates EPHEMERAL; Resume when a boot finishes a wipe a reboot cut short (an
	// obligation, retried).
	ActWipe struct {
		ID     string
		Resume bool
	}
	// ActArm puts the slot under trial (grubenv next_entry, trial_tries).
	ActArm struct{ Slot boot.Slot }
	// ActReboot reboots: GRUB boots the slot under trial while it has tries.
	ActReboot struct{ Reason string }
	// ActTrial arms the watchdog and runs the health gates; with Rejoin the etcd gate
	// promotes this member (a learner since its rejoin) before it passes.
	ActTrial struct{ Rejoin bool }
	// ActCommit makes Slot the default (grubenv saved_entry).
	ActCommit struct{ Slot boot.Slot }
	// ActFinish disarms the trial's watchdog; the upgrade is done.
	ActFinish struct {
		ID, Version string
		Slot        boot.Slot
	}
	// ActDisarm ends a trial: GRUB boots the committed slot (best effort).
	ActDisarm struct{}
	// ActRebootCurrent reboots into the committed slot.
	ActRebootCurrent struct{ Reason string }
)

// Obligations an upgrade owes until they are done, retried; each names its upgrade (ID), so
// a retry can never act for another upgrade than the one that owed it.
type (
	// ActKeepLease keeps the persisted lease alive again after a reboot.
	ActKeepLease struct {
		Lease int64
		ID    string
	}
	// ActRejoin makes this member a voter again (learner, caught up, promoted).
	ActRejoin struct{ ID string }
	// ActUncordon lifts our cordon.
	ActUncordon struct{ ID string }
	// ActRelease revokes the upgrade lease, once this node's member is healthy.
	ActRelease struct {
		Lease int64
		ID    string
	}
)

// A rollback's actions.
type (
	// ActVerifySlot checks every file of Slot against the slot's own manifest.
	ActVerifySlot struct{ Slot boot.Slot }
	// ActCommitRollback makes Slot the default (grubenv saved_entry, next_entry cleared).
	ActCommitRollback struct{ Slot boot.Slot }
)

func (ActPull) String() string           { return "pull" }
func (ActGrant) String() string          { return "grant-lease" }
func (ActLock) String() string           { return "lock" }
func (ActCheck) String() string          { return "check" }
func (ActCordon) String() string         { return "cordon" }
func (ActDrain) String() string          { return "drain" }
func (ActLeave) String() string          { return "leave-cluster" }
func (ActPrepare) String() string        { return "prepare-member" }
func (ActStop) String() string           { return "stop" }
func (ActWriteSlot) String() string      { return "write-slot" }
func (ActWipe) String() string           { return "wipe-ephemeral" }
func (ActArm) String() string            { return "arm" }
func (ActReboot) String() string         { return "reboot" }
func (ActTrial) String() string          { return "trial" }
func (ActCommit) String() string         { return "commit" }
func (ActFinish) String() string         { return "finish" }
func (ActDisarm) String() string         { return "disarm" }
func (ActRebootCurrent) String() string  { return "reboot-current" }
func (ActKeepLease) String() string      { return "keep-lease" }
func (ActRejoin) String() string         { return "rejoin" }
func (ActUncordon) String() string       { return "uncordon" }
func (ActRelease) String() string        { return "release-lease" }
func (ActVerifySlot) String() string     { return "verify-slot" }
func (ActCommitRollback) String() string { return "commit-rollback" }

func (ActPull) isAction()           {}
func (ActGrant) isAction()          {}
func (ActLock) isAction()           {}
func (ActCheck) isAction()          {}
func (ActCordon) isAction()         {}
func (ActDrain) isAction()          {}
func (ActLeave) isAction()          {}
func (ActPrepare) isAction()        {}
func (ActStop) isAction()           {}
func (ActWriteSlot) isAction()      {}
func (ActWipe) isAction()           {}
func (ActArm) isAction()            {}
func (ActReboot) isAction()         {}
func (ActTrial) isAction()          {}
func (ActCommit) isAction()         {}
func (ActFinish) isAction()         {}
func (ActDisarm) isAction()         {}
func (ActRebootCurrent) isAction()  {}
func (ActKeepLease) isAction()      {}
func (ActRejoin) isAction()         {}
func (ActUncordon) isAction()       {}
func (ActRelease) isAction()        {}
func (ActVerifySlot) isAction()     {}
func (ActCommitRollback) isAction() {}

// safeUnpersisted reports whether a can be performed while the record that asked for it
// could not be written: the actions that end an upgrade (obligations, ending the trial,
// a reboot into the committed slot) are each safe with the older record on disk, because the
// next boot redoes or settles them from that record. Step's answer to PersistFailed holds
// only such actions (TestPersistFailedIsSafe).
func safeUnpersisted(a Action) bool {
	switch a := a.(type) {
	case ActUncordon, ActRelease, ActRejoin, ActDisarm, ActRebootCurrent, ActFinish:
		return true
	case ActWipe:
		return a.Resume // owed by the record on META already
	}
	return false
}
