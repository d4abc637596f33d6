package upgrade

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"keel/boot"
)

// Errors Step returns; the record is unchanged when it does.
var (
	ErrBusy       = errors.New("upgrade: busy")
	ErrUnexpected = errors.New("upgrade: event not expected in this state")
	ErrTooLate    = errors.New("upgrade: too late to cancel")
	ErrInvalid    = errors.New("upgrade: invalid request")
)

// Step is the transition function. It never mutates r.
func Step(r Record, ev Event) (Record, []Action, error) {
	n := r.Clone()
	u := n.Current
	switch e := ev.(type) {
	case Request:
		if busy := r.Busy(); busy != "" {
			return r, nil, fmt.Errorf("%w: %s", ErrBusy, busy)
		}
		if e.Committed != "" && e.Booted != e.Committed {
			return r, nil, fmt.Errorf("%w: booted slot %s is not the committed slot %s; reboot first", ErrBusy, e.Booted, e.Committed)
		}
		if e.Image == "" || len(e.Image) > MaxImageRef || e.ID == "" || len(e.ID) > 64 {
			return r, nil, fmt.Errorf("%w: image reference of %d bytes (1-%d), id %q", ErrInvalid, len(e.Image), MaxImageRef, e.ID)
		}
		raiseFloor(&n, e.MinVersion)
		if u != nil {
			n.History = append([]Upgrade{*u}, n.History...)
			if len(n.History) > HistoryLen {
				n.History = n.History[:HistoryLen]
			}
		}
		n.Current = &Upgrade{
			ID: e.ID, State: Pulling, Image: e.Image, Preserve: e.Preserve, Force: e.Force, Downgrade: e.Downgrade, Stage: e.Stage, DrainTimeoutS: e.DrainTimeoutS,
			FromVersion: bound(e.FromVersion), FromSlot: e.Booted, ToSlot: e.Booted.Other(),
			ControlPlane: e.ControlPlane, Member: bound(e.Member),
			RequestedAt: e.Now, UpdatedAt: e.Now,
		}
		return n, []Action{effect(n.Current, Pulling, n.Floor)}, nil

	case Booted:
		raiseFloor(&n, e.MinVersion)
		return stepBoot(n, e)

	case RollbackRequest, RollbackVerified, RollbackRefused, RollbackCommitted, RollbackFailed:
		return stepRollback(r, n, ev)

	case PersistFailed:
		return persistFailed(r, n, e)

	case Wiped:
		if u == nil || !u.Wipe {
			return r, nil, fmt.Errorf("%w: wiped with no wipe pending", ErrUnexpected)
		}
		u.Wipe = false
		u.UpdatedAt = e.Now
		if u.State == Wiping {
			return enter(n, Arming, e.Now)
		}
		return n, nil, nil

	case Uncordoned:
		if u == nil || !u.Uncordon {
			return r, nil, fmt.Errorf("%w: uncordoned with no cordon pending", ErrUnexpected)
		}
		u.Uncordon = false
		u.UpdatedAt = e.Now
		return n, nil, nil

	case KubeReady:
		if u == nil || u.State != Trial {
			return r, nil, fmt.Errorf("%w: kubernetes-ready outside a trial", ErrUnexpected)
		}
		u.Kubernetes = appendNote(u.Kubernetes, e.Note)
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
		if u == nil || u.Lease == 0 || (e.Lease != 0 && e.Lease != u.Lease) {
			return r, nil, fmt.Errorf("%w: lease %x lost with no such lease held", ErrUnexpected, e.Lease)
		}
		u.Lease = 0
		u.Lock = bound("lost: " + e.Reason)
		u.UpdatedAt = e.Now
		switch u.State {
		case Locking, Checking, Cordoning, Draining, Preparing, Leaving:
			// The lock may pass to another node at any moment: going on could stop two
			// members at once. Nothing of ours is stopped yet: end here.
			return failed(n, "upgrade lease lost: "+e.Reason, e.Now)
		}
		// Our member is stopped or the upgrade is past it: the lease only kept the next node
		// waiting until we were whole again. Say so.
		u.Warning = appendNote(u.Warning, "upgrade lease lost: "+e.Reason)
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
		u.Digest, u.ToVersion, u.SlotSHA256, u.SlotSize = bound(e.Digest), bound(e.ToVersion), bound(e.SlotSHA256), e.SlotSize
		u.SignedBy = unsignedBy
		if e.SignedBy != "" {
			u.SignedBy, u.SignerKey = bound(e.SignedBy), bound(e.SignerKey)
		}
		if err := checkVersion(u, n.Floor); err != nil {
			return failed(n, "refused: "+err.Error(), e.Now)
		}
		if u.Stage {
			// The inactive slot holds nothing bootable from here until verified again.
			setSlot(&n, u.ToSlot, SlotRecord{})
			return enter(n, Staging, e.Now)
		}
		return outOfService(n, e.Now)

	case Activate:
		if u.State != Staged {
			return r, nil, fmt.Errorf("%w: upgrade %s is %s, not staged", ErrBusy, u.ID, u.State)
		}
		if e.ID != "" && e.ID != u.ID {
			return r, nil, fmt.Errorf("%w: upgrade %s is staged, not %s", ErrBusy, u.ID, e.ID)
		}
		// The floor may have risen since the staging (a boot with a new min_version).
		if err := checkVersion(u, n.Floor); err != nil {
			return r, nil, fmt.Errorf("%w: %w: %v: discard it (POST /v1/upgrade/cancel)", ErrRefused, ErrStale, err)
		}
		// Its key may have expired since the boot checked it.
		if err := e.Trust.check(u, e.Now); err != nil {
			return r, nil, fmt.Errorf("%w: %w: %v: discard it (POST /v1/upgrade/cancel)", ErrRefused, ErrStale, err)
		}
		u.ActivatedAt = e.Now
		return outOfService(n, e.Now)

	case Cancel:
		switch u.State {
		case Pulling, Locking, Checking:
			return finish(n, Aborted, "cancelled: "+e.Reason, e.Now)
		case Staging, Staged:
			// Discarded: the slot is left as it is (written, or half written) and never armed.
			setSlot(&n, u.ToSlot, SlotRecord{})
			return finish(n, Aborted, "discarded: "+e.Reason, e.Now)
		}
		return r, nil, fmt.Errorf("%w: the upgrade is %s (cancel works while pulling, staging, staged, waiting for the lease or checking)", ErrTooLate, u.State)

	case LeaseGranted:
		if u.State != Locking || u.Lease != 0 || e.ID == 0 {
			return r, nil, fmt.Errorf("%w: lease %x granted in %s (lease %x)", ErrUnexpected, e.ID, u.State, u.Lease)
		}
		u.Lease = e.ID
		u.UpdatedAt = e.Now
		return n, []Action{ActLock{Lease: e.ID, ID: u.ID}}, nil

	case LockWaiting:
		if u.State != Locking {
			return r, nil, fmt.Errorf("%w: lock waiting in %s", ErrUnexpected, u.State)
		}
		u.Lock = bound("waiting for the upgrade lease, held by " + e.Holder)
		u.UpdatedAt = e.Now
		return n, nil, nil

	case Checked:
		if u.State != Checking {
			return r, nil, fmt.Errorf("%w: checked in %s", ErrUnexpected, u.State)
		}
		u.Etcd = bound(e.Reason)
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
			u.Kubernetes = bound(u.Kubernetes + " (" + e.Note + ")")
		}
		return enter(n, Draining, e.Now)

	case EtcdNoted:
		if u.State != Preparing {
			return r, nil, fmt.Errorf("%w: etcd note in %s", ErrUnexpected, u.State)
		}
		u.Etcd = appendNote(u.Etcd, e.Note)
		u.UpdatedAt = e.Now
		return n, nil, nil

	case Progressed:
		if u.State != Writing && u.State != Staging {
			return r, nil, fmt.Errorf("%w: progress in %s", ErrUnexpected, u.State)
		}
		u.Progress = Progress{Written: e.Written, Total: e.Total}
		u.UpdatedAt = e.Now
		return n, nil, nil

	case Completed:
		switch u.State {
		case Locking:
			if u.Lease == 0 {
				return r, nil, fmt.Errorf("%w: locked without a lease", ErrUnexpected)
			}
			u.Lock = "held since " + e.Now.Format(time.RFC3339)
			return enter(n, Checking, e.Now)
		case Draining:
			u.Kubernetes = appendNote(u.Kubernetes, "drained")
			return afterDrain(n, e.Now)
		case Preparing:
			if !u.Preserve {
				return enter(n, Leaving, e.Now)
			}
			return enter(n, Stopping, e.Now)
		case Leaving:
			u.Etcd = appendNote(u.Etcd, "left the cluster")
			return enter(n, Stopping, e.Now)
		case Stopping:
			if u.Stage {
				return afterWrite(n, e.Now) // written while the node served
			}
			// From here the inactive slot is being overwritten: it holds nothing bootable
			// until verified again.
			setSlot(&n, u.ToSlot, SlotRecord{})
			return enter(n, Writing, e.Now)
		case Writing, Staging:
			setSlot(&n, u.ToSlot, SlotRecord{Version: u.ToVersion, SHA256: u.SlotSHA256, Size: u.SlotSize, Verified: true})
			u.Progress.Written = u.SlotSize
			if u.State == Staging {
				// The boots it took are not the out-of-service part's: that one gets
				// MaxBoots of its own (a resumed trial included).
				u.Boots = 0
				return enter(n, Staged, e.Now)
			}
			return afterWrite(n, e.Now)
		case Arming:
			return enter(n, Rebooting, e.Now)
		case Committing:
			return enter(n, Done, e.Now)
		}
		return r, nil, fmt.Errorf("%w: done in %s", ErrUnexpected, u.State)

	case Failed:
		if u.State == Trial {
			return r, nil, fmt.Errorf("%w: failed in trial (use Health)", ErrUnexpected)
		}
		if u.State == Draining && u.Force {
			u.Warning = appendNote(u.Warning, "forced past a failed drain: "+e.Reason)
			return afterDrain(n, e.Now)
		}
		switch u.State {
		case Rebooting:
			return r, nil, fmt.Errorf("%w: failed in %s", ErrUnexpected, u.State)
		case Committing:
			// grubenv may or may not hold the commit: end the trial (no try of the new slot
			// left to retry on: the outcome must not depend on earlier cuts), reboot, and the
			// boot decides from grubenv (the new slot committed: done; else rolled back).
			u.Warning = appendNote(u.Warning, "commit: "+e.Reason+"; rebooting to settle it from grubenv")
			u.UpdatedAt = e.Now
			return n, []Action{ActDisarm{}, ActRebootCurrent{Reason: fmt.Sprintf("upgrade %s: the commit failed", u.ID)}}, nil
		}
		return failed(n, e.Reason, e.Now)

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

// failed ends an upgrade whose current effect failed, before the point of no return.
func failed(n Record, reason string, now time.Time) (Record, []Action, error) {
	switch n.Current.State {
	case Pulling, Locking, Checking, Cordoning, Draining, Preparing:
		// Nothing was changed but (perhaps) the cordon, a snapshot saved and the leadership
		// moved: the node keeps running.
		return finish(n, Aborted, reason, now)
	case Staging, Staged:
		// The node served all along: it keeps serving; the inactive slot is not counted as
		// holding anything (a write may have stopped half way).
		setSlot(&n, n.Current.ToSlot, SlotRecord{})
		return finish(n, Aborted, reason, now)
	}
	// Leaving, Stopping, Writing, Wiping, Arming: services are stopped and filesystems
	// unmounted (or the member may be gone): reboot into the current slot, which brings
	// everything back in order, the etcd member included (finishRebooting clears a half-made
	// arming).
	return finishRebooting(n, Aborted, reason, now)
}

// persistFailed answers a record that could not be written. r is the last record written (what
// the next boot will read); the answer must be safe to act on with r still on disk, so it ends
// the upgrade with actions from safeUnpersisted only.
func persistFailed(r, n Record, e PersistFailed) (Record, []Action, error) {
	if rb := n.RollingBack; rb != nil {
		// Give the rollback up. Committing, grubenv may hold it already: reboot into the
		// committed slot, whichever it is, and the boot settles the record from grubenv.
		n.RollingBack = nil
		if rb.Phase == RollbackCommitting {
			return n, []Action{ActRebootCurrent{Reason: "rollback: cannot persist the record; the boot settles it from grubenv"}}, nil
		}
		return n, nil, nil
	}
	if !r.Active() {
		// A request, an obligation's discharge, or a rollback step that could not be
		// recorded: nothing changed that the next boot cannot redo from r.
		return r, nil, nil
	}
	u := n.Current
	reason := "cannot persist the upgrade record: " + e.Reason
	switch u.State {
	case Rebooting:
		return r, nil, nil // the reboot is under way; the boot decides from r
	case Trial:
		return finishRebooting(n, RolledBack, reason, e.Now)
	case Committing:
		// The commit may or may not be in grubenv: reboot, and the boot settles the record
		// from it (the new slot committed: done, its obligations then; else rolled back).
		u.Warning = appendNote(u.Warning, reason+"; rebooting to settle the commit from grubenv")
		u.UpdatedAt = e.Now
		return n, []Action{ActDisarm{}, ActRebootCurrent{Reason: fmt.Sprintf("upgrade %s: %s", u.ID, reason)}}, nil
	}
	return failed(n, reason, e.Now)
}

// stepRollback runs a rollback: verify the other slot, commit it, reboot. It is refused while
// an upgrade is in flight or owes something, and it blocks upgrades while it runs: both would
// write or commit the same slot.
func stepRollback(r, n Record, ev Event) (Record, []Action, error) {
	rb := n.RollingBack
	switch e := ev.(type) {
	case RollbackRequest:
		// An ended upgrade's obligations do not stand in the way: they stay in the record
		// and are carried out after the rollback's reboot too.
		if r.Active() || r.RollingBack != nil {
			return r, nil, fmt.Errorf("%w: %s", ErrBusy, r.Busy())
		}
		raiseFloor(&n, e.MinVersion)
		n.RollingBack = &Rollback{From: e.Booted, To: e.Booted.Other(), At: e.Now, Phase: RollbackVerifying}
		return n, []Action{ActVerifySlot{Slot: e.Booted.Other()}}, nil
	case RollbackVerified:
		if rb == nil || rb.Phase != RollbackVerifying {
			return r, nil, fmt.Errorf("%w: rollback verified with none verifying", ErrUnexpected)
		}
		if n.Floor != "" {
			if c, ok := CompareVersions(e.Version, n.Floor); !ok || c < 0 {
				// Refused as a slot that holds no image is: the executor answers the call.
				n.RollingBack = nil
				return n, nil, nil
			}
		}
		rb.Phase, rb.Version = RollbackCommitting, bound(e.Version)
		return n, []Action{ActCommitRollback{Slot: rb.To}}, nil
	case RollbackRefused:
		if rb == nil || rb.Phase != RollbackVerifying {
			return r, nil, fmt.Errorf("%w: rollback refused with none verifying", ErrUnexpected)
		}
		n.RollingBack = nil
		return n, nil, nil
	case RollbackCommitted:
		if rb == nil || rb.Phase != RollbackCommitting {
			return r, nil, fmt.Errorf("%w: rollback committed with none committing", ErrUnexpected)
		}
		done := *rb
		done.Phase = ""
		n.Rollbacks = append([]Rollback{done}, n.Rollbacks...)
		if len(n.Rollbacks) > HistoryLen {
			n.Rollbacks = n.Rollbacks[:HistoryLen]
		}
		n.RollingBack = nil
		return n, []Action{ActReboot{Reason: fmt.Sprintf("rollback to slot %s (%s)", done.To, done.Version)}}, nil
	case RollbackFailed:
		if rb == nil || rb.Phase != RollbackCommitting {
			return r, nil, fmt.Errorf("%w: rollback failed with none committing", ErrUnexpected)
		}
		n.RollingBack = nil
		return n, nil, nil
	}
	return r, nil, fmt.Errorf("%w: %T", ErrUnexpected, ev)
}

// effect is the action that entering s performs.
func effect(u *Upgrade, s State, floor string) Action {
	switch s {
	case Staged:
		return nil // rests until activated or cancelled
	case Pulling:
		return ActPull{Image: u.Image, Slot: u.ToSlot, Versions: VersionPolicy{From: u.FromVersion, Floor: floor, Downgrade: u.Downgrade}}
	case Locking:
		if u.Lease != 0 {
			return ActLock{Lease: u.Lease, ID: u.ID}
		}
		return ActGrant{}
	case Checking:
		return ActCheck{Preserve: u.Preserve, Force: u.Force}
	case Cordoning:
		return ActCordon{}
	case Draining:
		return ActDrain{ID: u.ID, TimeoutS: u.DrainTimeoutS, Force: u.Force}
	case Preparing:
		return ActPrepare{ID: u.ID, Preserve: u.Preserve, Force: u.Force}
	case Leaving:
		return ActLeave{}
	case Stopping:
		return ActStop{}
	case Writing, Staging:
		img := u.Image
		if u.Digest != "" {
			img = pinned(u.Image, u.Digest)
		}
		return ActWriteSlot{Slot: u.ToSlot, Image: img, SHA256: u.SlotSHA256, Size: u.SlotSize}
	case Wiping:
		return ActWipe{ID: u.ID}
	case Arming:
		return ActArm{Slot: u.ToSlot}
	case Rebooting:
		return ActReboot{Reason: fmt.Sprintf("upgrade %s: boot slot %s (under trial)", u.ID, u.ToSlot)}
	case Trial:
		return ActTrial{Rejoin: u.Rejoin}
	case Committing:
		return ActCommit{Slot: u.ToSlot}
	case Done:
		return ActFinish{ID: u.ID, Version: u.ToVersion, Slot: u.ToSlot}
	}
	return nil
}

// pinned names image by its manifest digest: REPO@DIGEST (a tag, if any, dropped).
func pinned(image, digest string) string {
	repo, _, _ := strings.Cut(image, "@")
	// A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	return repo + "@" + digest
}

func enter(n Record, s State, now time.Time) (Record, []Action, error) {
	u := n.Current
	u.State = s
	u.UpdatedAt = now
	switch s {
	case Cordoning:
		// From the cordon on, a cordon of ours may exist: it must be lifted however this ends.
		u.Uncordon = true
	case Leaving:
		// From here the member may be gone: it must be verified, and rejoined if so.
		u.Rejoin = true
	case Wiping:
		// From here EPHEMERAL may be half made: it must be made whole.
		u.Wipe = true
	case Done:
		u.FinishedAt = now
	}
	var acts []Action
	if a := effect(u, s, n.Floor); a != nil {
		acts = append(acts, a)
	}
	if s == Done {
		acts = append(acts, obligations(u)...) // uncordon, then release the lease
	}
	return n, acts, nil
}

// outOfService takes the node out of service for the upgrade: a control-plane node takes the
// upgrade lease first.
func outOfService(n Record, now time.Time) (Record, []Action, error) {
	if n.Current.ControlPlane {
		return enter(n, Locking, now)
	}
	return enter(n, Cordoning, now)
}

// afterWrite follows a verified slot: EPHEMERAL re-created first if asked, then arming.
func afterWrite(n Record, now time.Time) (Record, []Action, error) {
	if n.Current.Preserve {
		return enter(n, Arming, now)
	}
	return enter(n, Wiping, now)
}

// afterDrain is where a drained (or never cordoned) node goes: a control-plane node prepares
// its member (a snapshot, leadership handed over), then stops it or (preserve=false) leaves
// the etcd cluster first.
func afterDrain(n Record, now time.Time) (Record, []Action, error) {
	if n.Current.ControlPlane {
		return enter(n, Preparing, now)
	}
	return enter(n, Stopping, now)
}

// keepLease puts the lease's keep-alive before the actions of a boot that resumes an upgrade
// holding one (in flight, or ended with the release still owed).
func keepLease(n Record, acts []Action, err error) (Record, []Action, error) {
	if u := n.Current; u != nil && u.Lease != 0 && !u.State.Terminal() {
		acts = append([]Action{ActKeepLease{Lease: u.Lease, ID: u.ID}}, acts...)
	}
	return n, acts, err
}

// obligations are what an ended upgrade still owes, in order: EPHEMERAL half made is made
// whole (before it is mounted), a member that may have left rejoins, our cordon is lifted, and
// only then is the upgrade lease released, so the next node starts once this one is whole and
// back in service.
func obligations(u *Upgrade) []Action {
	var acts []Action
	if u.Wipe {
		acts = append(acts, ActWipe{ID: u.ID, Resume: true})
	}
	if u.Rejoin {
		acts = append(acts, ActRejoin{ID: u.ID})
	}
	if u.Uncordon {
		acts = append(acts, ActUncordon{ID: u.ID})
	}
	if u.Lease != 0 {
		acts = append(acts, ActRelease{Lease: u.Lease, ID: u.ID})
	}
	return acts
}

// finish ends the upgrade; its obligations (a pending uncordon first) are its actions, so a
// node never stays cordoned, or holds the lease, because its upgrade failed.
func finish(n Record, s State, reason string, now time.Time) (Record, []Action, error) {
	n.Current.State = s
	n.Current.Reason = bound(reason)
	n.Current.UpdatedAt = now
	n.Current.FinishedAt = now
	return n, obligations(n.Current), nil
}

// finishRebooting ends the upgrade with a reboot into the committed slot. The cordon is lifted
// before it; a rejoin and the lease release wait for the next boot, when the member is back.
func finishRebooting(n Record, s State, reason string, now time.Time) (Record, []Action, error) {
	n, _, err := finish(n, s, reason, now)
	// The trial may still hold boot tries: the reboot must reach the committed slot.
	acts := []Action{ActDisarm{}}
	if n.Current.Uncordon {
		acts = append(acts, ActUncordon{ID: n.Current.ID})
	}
	return n, append(acts, ActRebootCurrent{Reason: fmt.Sprintf("upgrade %s %s: back to the committed slot", n.Current.ID, s)}), err
}

func setSlot(n *Record, s boot.Slot, rec SlotRecord) {
	if n.Slots == nil {
		n.Slots = map[boot.Slot]SlotRecord{}
	}
	n.Slots[s] = rec
}
