package upgrade

import (
	"errors"
	"fmt"
	"time"

	"keel/boot"
)

// Event is an input to Step.
type Event interface{ isEvent() }

// Request asks for an upgrade (POST /v1/upgrade, already validated).
type Request struct {
	ID, Image     string
	Preserve      bool
	Force         bool
	DrainTimeoutS int
	FromVersion   string
	Booted        boot.Slot
	// ControlPlane nodes run an etcd member named Member: the lease, check and leave steps
	// apply to them.
	ControlPlane bool
	Member       string
	Now          time.Time
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

// Rejoined reports that this node's etcd member is a voter again (or never left).
type Rejoined struct {
	Note string
	Now  time.Time
}

// Released reports that the upgrade lease is revoked.
type Released struct{ Now time.Time }

// LeaseLost reports that the lease expired while the upgrade held it (the node was away
// longer than its TTL): the lock may have passed to another node.
type LeaseLost struct {
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
	Now             time.Time
}

// Health reports the trial boot's health gates.
type Health struct {
	OK     bool
	Reason string
	Now    time.Time
}

func (Request) isEvent()    {}
func (Pulled) isEvent()     {}
func (Completed) isEvent()  {}
func (Cordoned) isEvent()   {}
func (Uncordoned) isEvent() {}
func (Failed) isEvent()     {}
func (Progressed) isEvent() {}
func (Booted) isEvent()     {}
func (Health) isEvent()     {}

func (LeaseGranted) isEvent() {}
func (LockWaiting) isEvent()  {}
func (Checked) isEvent()      {}
func (Rejoined) isEvent()     {}
func (Released) isEvent()     {}
func (LeaseLost) isEvent()    {}
func (Cancel) isEvent()       {}

// Action is an effect the executor performs, in order, after persisting the record.
type Action string

// Actions.
const (
	ActPull          Action = "pull"           // fetch and verify the installer image
	ActCordon        Action = "cordon"         // cordon the Kubernetes node (skip without config)
	ActDrain         Action = "drain"          // drain it
	ActUncordon      Action = "uncordon"       // lift our cordon; retried until it succeeds
	ActStop          Action = "stop"           // stop services, kill holders, unmount
	ActWriteSlot     Action = "write-slot"     // stream, sync, re-read, verify the inactive slot
	ActWipe          Action = "wipe-ephemeral" // mkfs EPHEMERAL
	ActArm           Action = "arm"            // grubenv next_entry = ToSlot
	ActReboot        Action = "reboot"         // reboot: GRUB boots the armed slot once
	ActTrial         Action = "trial"          // arm the watchdog, run the health gates
	ActCommit        Action = "commit"         // grubenv saved_entry = ToSlot
	ActFinish        Action = "finish"         // disarm the watchdog, post-commit steps
	ActDisarm        Action = "disarm"         // best effort: clear next_entry
	ActRebootCurrent Action = "reboot-current" // reboot into the committed slot

	ActLock      Action = "lock"          // grant a lease, persist it, wait for the upgrade lock
	ActCheck     Action = "check"         // the quorum check, repeated until it passes or times out
	ActLeave     Action = "leave-cluster" // remove this etcd member
	ActKeepLease Action = "keep-lease"    // after a reboot: keep the persisted lease alive again
	ActRejoin    Action = "rejoin"        // make this member a voter again (learner, caught up, promoted)
	ActRelease   Action = "release-lease" // once the member is healthy: revoke the lease
)

// effect is the action that enters a state performs.
var effect = map[State]Action{
	Pulling: ActPull, Locking: ActLock, Checking: ActCheck, Leaving: ActLeave, Cordoning: ActCordon, Draining: ActDrain, Stopping: ActStop, Writing: ActWriteSlot, Wiping: ActWipe, Arming: ActArm,
	Rebooting: ActReboot, Trial: ActTrial, Committing: ActCommit, Done: ActFinish,
}

// Errors Step returns; the record is unchanged when it does.
var (
	ErrBusy       = errors.New("upgrade: another upgrade is in flight")
	ErrUnexpected = errors.New("upgrade: event not expected in this state")
	ErrTooLate    = errors.New("upgrade: too late to cancel")
)

// Step is the transition function. It never mutates r.
func Step(r Record, ev Event) (Record, []Action, error) {
	n := r.Clone()
	u := n.Current
	switch e := ev.(type) {
	case Request:
		if r.Active() {
			return r, nil, fmt.Errorf("%w: %s is %s", ErrBusy, r.Current.ID, r.Current.State)
		}
		if u != nil && len(obligations(u)) > 0 {
			// Its obligations live in the current record: a new one must not bury them.
			return r, nil, fmt.Errorf("%w: %s ended %s but still has to %v", ErrBusy, u.ID, u.State, obligations(u))
		}
		if u != nil {
			n.History = append([]Upgrade{*u}, n.History...)
			if len(n.History) > HistoryLen {
				n.History = n.History[:HistoryLen]
			}
		}
		n.Current = &Upgrade{
			ID: e.ID, State: Pulling, Image: e.Image, Preserve: e.Preserve, Force: e.Force, DrainTimeoutS: e.DrainTimeoutS,
			FromVersion: e.FromVersion, FromSlot: e.Booted, ToSlot: e.Booted.Other(),
			ControlPlane: e.ControlPlane, Member: e.Member,
			RequestedAt: e.Now, UpdatedAt: e.Now,
		}
		return n, []Action{ActPull}, nil

	case Booted:
		return stepBoot(n, e)

	case Uncordoned:
		if u == nil || !u.Uncordon {
			return r, nil, fmt.Errorf("%w: uncordoned with no cordon pending", ErrUnexpected)
		}
		u.Uncordon = false
		u.UpdatedAt = e.Now
		return n, nil, nil

	case Rejoined:
		if u == nil || !u.Rejoin {
			return r, nil, fmt.Errorf("%w: rejoined with no rejoin pending", ErrUnexpected)
		}
		u.Rejoin = false
		u.Etcd = appendNote(u.Etcd, e.Note)
		u.UpdatedAt = e.Now
		return n, nil, nil

	case Released:
		if u == nil || u.Lease == 0 {
			return r, nil, fmt.Errorf("%w: released with no lease held", ErrUnexpected)
		}
		u.Lease = 0
		u.Lock = "released at " + e.Now.Format(time.RFC3339)
		u.UpdatedAt = e.Now
		return n, nil, nil

	case LeaseLost:
		if u == nil || u.Lease == 0 {
			return r, nil, fmt.Errorf("%w: lease lost with no lease held", ErrUnexpected)
		}
		u.Lease = 0
		u.Lock = "lost: " + e.Reason
		u.Warning = appendNote(u.Warning, "upgrade lease lost: "+e.Reason)
		u.UpdatedAt = e.Now
		return n, nil, nil
	}

	if !r.Active() {
		return r, nil, fmt.Errorf("%w: %T with no upgrade in flight", ErrUnexpected, ev)
	}
	switch e := ev.(type) {
	case Pulled:
		if u.State != Pulling {
			return r, nil, fmt.Errorf("%w: pulled in %s", ErrUnexpected, u.State)
		}
		u.Digest, u.ToVersion, u.SlotSHA256, u.SlotSize = e.Digest, e.ToVersion, e.SlotSHA256, e.SlotSize
		if u.ControlPlane {
			return enter(n, Locking, e.Now)
		}
		return enter(n, Cordoning, e.Now)

	case Cancel:
		switch u.State {
		case Pulling, Locking, Checking:
			return finish(n, Aborted, "cancelled: "+e.Reason, e.Now)
		}
		return r, nil, fmt.Errorf("%w: the upgrade is %s (cancel works while pulling, waiting for the lease or checking)", ErrTooLate, u.State)

	case LeaseGranted:
		if u.State != Locking || u.Lease != 0 {
			return r, nil, fmt.Errorf("%w: lease granted in %s (lease %x)", ErrUnexpected, u.State, u.Lease)
		}
		u.Lease = e.ID
		u.UpdatedAt = e.Now
		return n, nil, nil

	case LockWaiting:
		if u.State != Locking {
			return r, nil, fmt.Errorf("%w: lock waiting in %s", ErrUnexpected, u.State)
		}
		u.Lock = "waiting for the upgrade lease, held by " + e.Holder
		u.UpdatedAt = e.Now
		return n, nil, nil

	case Checked:
		if u.State != Checking {
			return r, nil, fmt.Errorf("%w: checked in %s", ErrUnexpected, u.State)
		}
		u.Etcd = e.Reason
		return enter(n, Cordoning, e.Now)

	case Cordoned:
		if u.State != Cordoning {
			return r, nil, fmt.Errorf("%w: cordoned in %s", ErrUnexpected, u.State)
		}
		switch {
		case e.Skipped:
			u.Uncordon = false
			u.Kubernetes = "skipped: no Kubernetes configuration"
			return afterDrain(n, e.Now) // nothing to drain either
		case e.Ours:
			u.Kubernetes = "cordoned"
		default:
			// Someone else's cordon: leave it exactly as it is, before and after.
			u.Uncordon = false
			u.Kubernetes = "already cordoned by someone else; left as it is"
		}
		if e.Note != "" {
			u.Kubernetes += " (" + e.Note + ")"
		}
		return enter(n, Draining, e.Now)

	case Progressed:
		if u.State != Writing {
			return r, nil, fmt.Errorf("%w: progress in %s", ErrUnexpected, u.State)
		}
		u.Progress = Progress{Written: e.Written, Total: e.Total}
		u.UpdatedAt = e.Now
		return n, nil, nil

	case Completed:
		switch u.State {
		case Locking:
			u.Lock = "held since " + e.Now.Format(time.RFC3339)
			return enter(n, Checking, e.Now)
		case Draining:
			u.Kubernetes += "; drained"
			return afterDrain(n, e.Now)
		case Leaving:
			u.Etcd = appendNote(u.Etcd, "left the cluster")
			return enter(n, Stopping, e.Now)
		case Stopping:
			// From here the inactive slot is being overwritten: it holds nothing bootable
			// until verified again.
			setSlot(&n, u.ToSlot, SlotRecord{})
			return enter(n, Writing, e.Now)
		case Writing:
			setSlot(&n, u.ToSlot, SlotRecord{Version: u.ToVersion, SHA256: u.SlotSHA256, Size: u.SlotSize, Verified: true})
			u.Progress.Written = u.SlotSize
			if u.Preserve {
				return enter(n, Arming, e.Now)
			}
			return enter(n, Wiping, e.Now)
		case Wiping:
			return enter(n, Arming, e.Now)
		case Arming:
			return enter(n, Rebooting, e.Now)
		case Committing:
			return enter(n, Done, e.Now)
		}
		return r, nil, fmt.Errorf("%w: done in %s", ErrUnexpected, u.State)

	case Failed:
		switch u.State {
		case Pulling, Locking, Checking, Cordoning:
			// Nothing was changed but (perhaps) the cordon: the node keeps running.
			return finish(n, Aborted, e.Reason, e.Now)
		case Draining:
			if u.Force {
				u.Warning = "forced past a failed drain: " + e.Reason
				return afterDrain(n, e.Now)
			}
			return finish(n, Aborted, e.Reason, e.Now)
		case Leaving, Stopping, Writing, Wiping, Arming:
			// Services are stopped and filesystems unmounted (or the member may be gone):
			// reboot into the current slot, which brings everything back in order, the etcd
			// member included. Clear a half-made boot-once.
			n, acts, err := finishRebooting(n, Aborted, e.Reason, e.Now)
			return n, append([]Action{ActDisarm}, acts...), err
		case Trial:
			return r, nil, fmt.Errorf("%w: failed in trial (use Health)", ErrUnexpected)
		}
		return r, nil, fmt.Errorf("%w: failed in %s", ErrUnexpected, u.State)

	case Health:
		if u.State != Trial {
			return r, nil, fmt.Errorf("%w: health in %s", ErrUnexpected, u.State)
		}
		if e.OK {
			return enter(n, Committing, e.Now)
		}
		// The committed slot is still the old one: a plain reboot goes back to it.
		return finishRebooting(n, RolledBack, "health gate failed: "+e.Reason, e.Now)
	}
	return r, nil, fmt.Errorf("%w: %T", ErrUnexpected, ev)
}

// stepBoot decides what a boot means for the upgrade in flight. GRUB consumes a one-shot
// before booting it, so a boot of the old slot after arming means the new one did not make
// it to a healthy trial (panic, hang and watchdog, or power loss).
func stepBoot(n Record, e Booted) (Record, []Action, error) {
	if !n.Active() {
		if n.Current != nil {
			// Obligations a reboot interrupted (or deferred to this boot): go on.
			return n, obligations(n.Current), nil
		}
		return n, nil, nil
	}
	u := n.Current
	u.Boots++
	u.UpdatedAt = e.Now
	if u.Boots > MaxBoots {
		st := Aborted
		if pastNoReturn(u.State) {
			st = RolledBack
		}
		reason := fmt.Sprintf("gave up after %d boots in state %s", u.Boots, u.State)
		if e.Slot != e.Committed {
			return finishRebooting(n, st, reason, e.Now)
		}
		return finish(n, st, reason, e.Now)
	}
	switch u.State {
	case Pulling, Locking, Checking, Cordoning, Draining, Leaving, Stopping, Writing, Wiping:
		reason := fmt.Sprintf("interrupted by a reboot while %s", u.State)
		if u.State == Writing {
			setSlot(&n, u.ToSlot, SlotRecord{})
			reason += fmt.Sprintf("; slot %s left unbootable and was never armed", u.ToSlot)
		}
		n, acts, err := finish(n, Aborted, reason, e.Now)
		if u.State == Wiping {
			// The user asked for a wiped EPHEMERAL and it may be half-made: finish the job.
			acts = append([]Action{ActWipe}, acts...)
		}
		return n, acts, err
	case Arming:
		if e.Slot == u.ToSlot {
			return enter(n, Trial, e.Now) // the boot-once took effect before the record said so
		}
		n, acts, err := finish(n, Aborted, "interrupted by a reboot while arming", e.Now)
		return n, append([]Action{ActDisarm}, acts...), err
	case Rebooting, Trial:
		if e.Slot == u.ToSlot && e.Committed == u.ToSlot {
			return keepLease(enter(n, Committing, e.Now)) // committed in grubenv, not yet in META
		}
		if e.Slot == u.ToSlot {
			// The first boot of the new slot; or a second one without a commit (someone
			// re-armed it): try the trial again, MaxBoots bounds it.
			return keepLease(enter(n, Trial, e.Now))
		}
		reason := "the new slot never reported healthy"
		if u.State == Trial {
			reason += " (reset during the trial boot)"
		}
		return finish(n, RolledBack, reason, e.Now)
	case Committing:
		if e.Slot == u.ToSlot {
			if e.Committed == u.ToSlot {
				return keepLease(enter(n, Done, e.Now))
			}
			return keepLease(enter(n, Committing, e.Now))
		}
		return finish(n, RolledBack, "power lost while committing; the old slot is still the default", e.Now)
	}
	return n, nil, fmt.Errorf("%w: boot in %s", ErrUnexpected, u.State)
}

func pastNoReturn(s State) bool {
	switch s {
	case Rebooting, Trial, Committing:
		return true
	}
	return false
}

func enter(n Record, s State, now time.Time) (Record, []Action, error) {
	u := n.Current
	u.State = s
	u.UpdatedAt = now
	acts := []Action{effect[s]}
	switch s {
	case Cordoning:
		// From the cordon on, a cordon of ours may exist: it must be lifted however this ends.
		u.Uncordon = true
	case Leaving:
		// From here the member may be gone: it must be verified, and rejoined if so.
		u.Rejoin = true
	case Done:
		u.FinishedAt = now
		acts = append(acts, obligations(u)...) // uncordon, then release the lease
	}
	return n, acts, nil
}

// afterDrain is where a drained (or never cordoned) node goes: a control-plane node asked not
// to preserve its data leaves the etcd cluster first.
func afterDrain(n Record, now time.Time) (Record, []Action, error) {
	if n.Current.ControlPlane && !n.Current.Preserve {
		return enter(n, Leaving, now)
	}
	return enter(n, Stopping, now)
}

// keepLease puts the lease's keep-alive before the actions of a boot that resumes an upgrade
// holding one.
func keepLease(n Record, acts []Action, err error) (Record, []Action, error) {
	if n.Current.Lease != 0 {
		acts = append([]Action{ActKeepLease}, acts...)
	}
	return n, acts, err
}

// obligations are what an ended upgrade still owes, in order: a member that may have left
// rejoins, our cordon is lifted, and only then is the upgrade lease released, so the next
// node starts once this one is whole and back in service.
func obligations(u *Upgrade) []Action {
	var acts []Action
	if u.Rejoin {
		acts = append(acts, ActRejoin)
	}
	if u.Uncordon {
		acts = append(acts, ActUncordon)
	}
	if u.Lease != 0 {
		acts = append(acts, ActRelease)
	}
	return acts
}

// finish ends the upgrade; its obligations (a pending uncordon first) are its actions, so a
// node never stays cordoned, or holds the lease, because its upgrade failed.
func finish(n Record, s State, reason string, now time.Time) (Record, []Action, error) {
	n.Current.State = s
	n.Current.Reason = reason
	n.Current.UpdatedAt = now
	n.Current.FinishedAt = now
	return n, obligations(n.Current), nil
}

// finishRebooting ends the upgrade with a reboot into the committed slot. The cordon is lifted
// before it; a rejoin and the lease release wait for the next boot, when the member is back.
func finishRebooting(n Record, s State, reason string, now time.Time) (Record, []Action, error) {
	n, _, err := finish(n, s, reason, now)
	var acts []Action
	if n.Current.Uncordon {
		acts = append(acts, ActUncordon)
	}
	return n, append(acts, ActRebootCurrent), err
}

func appendNote(s, note string) string {
	switch {
	case note == "":
		return s
	case s == "":
		return note
	}
	return s + "; " + note
}

func setSlot(n *Record, s boot.Slot, rec SlotRecord) {
	if n.Slots == nil {
		n.Slots = map[boot.Slot]SlotRecord{}
	}
	n.Slots[s] = rec
}
