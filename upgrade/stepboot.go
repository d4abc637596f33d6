package upgrade

import (
	"fmt"

	"keel/boot"
)

// stepBoot decides what a boot means for the upgrade (or rollback) in flight. GRUB spends a try
// before each boot of the slot under trial, so a boot of the new slot after arming is its trial
// (first or resumed), and a boot of the old one means the new one spent its tries without a
// healthy trial (panic, hang and watchdog, or power loss each time).
func stepBoot(n Record, e Booted) (Record, []Action, error) {
	if rb := n.RollingBack; rb != nil {
		// A reboot cut the rollback short. grubenv says whether its commit landed.
		n.RollingBack = nil
		if rb.Phase == RollbackCommitting && e.Committed == rb.To {
			done := *rb
			done.Phase = ""
			n.Rollbacks = append([]Rollback{done}, n.Rollbacks...)
			if len(n.Rollbacks) > HistoryLen {
				n.Rollbacks = n.Rollbacks[:HistoryLen]
			}
		}
	}
	if !n.Active() {
		if u := n.Current; u != nil {
			rolledSince := len(n.Rollbacks) > 0 && n.Rollbacks[0].At.After(u.FinishedAt)
			if (u.State == RolledBack || u.State == Aborted) && e.Slot == u.ToSlot && e.Slot != e.Committed && !u.SentBack && !rolledSince {
				// The upgrade ended, but a cut between recording that and the disarm left
				// GRUB a try of the new slot, which it just spent: back to the committed
				// slot, once (SentBack: should grubenv be unreadable, or the disarm fail,
				// this must not become a loop; GRUB's tries run out by themselves). The
				// obligations wait for that boot.
				u.SentBack = true
				return n, []Action{ActDisarm{}, ActRebootCurrent{Reason: fmt.Sprintf("upgrade %s %s: booted slot %s on a try left over; back to the committed slot", u.ID, u.State, e.Slot)}}, nil
			}
			// Obligations a reboot interrupted (or deferred to this boot): go on.
			return n, obligations(u), nil
		}
		return n, nil, nil
	}
	u := n.Current
	if u.State == Staged {
		// A staged upgrade waits across reboots; they are not its boots. It stays staged as
		// long as the node runs the slot it was staged from.
		if e.Slot == u.FromSlot && e.Committed == u.FromSlot {
			if err := e.Trust.check(u, e.Now); err != nil {
				setSlot(&n, u.ToSlot, SlotRecord{})
				return finish(n, Aborted, "discarded: "+err.Error(), e.Now)
			}
			return n, nil, nil
		}
		setSlot(&n, u.ToSlot, SlotRecord{})
		return finish(n, Aborted, fmt.Sprintf("discarded: the node booted slot %s (committed %s), not slot %s it was staged from", e.Slot, e.Committed, u.FromSlot), e.Now)
	}
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
	case Staging:
		// A cut in the middle of the write, with the node in service: write it again (the
		// image by digest); MaxBoots bounds the tries. Not if this boot's config no longer
		// trusts its signature (it could never be activated).
		if err := e.Trust.check(u, e.Now); err != nil {
			setSlot(&n, u.ToSlot, SlotRecord{})
			return finish(n, Aborted, "discarded: "+err.Error(), e.Now)
		}
		return enter(n, Staging, e.Now)
	case Pulling, Locking, Checking, Cordoning, Draining, Preparing, Leaving, Stopping, Writing, Wiping:
		was := u.State // finish changes u
		reason := fmt.Sprintf("interrupted by a reboot while %s", was)
		if was == Writing {
			setSlot(&n, u.ToSlot, SlotRecord{})
			reason += fmt.Sprintf("; slot %s left unbootable and was never armed", u.ToSlot)
		}
		// A wipe cut short is owed (Wipe): the user asked for a new EPHEMERAL and it may be
		// half made; obligations put it first.
		return finish(n, Aborted, reason, e.Now)
	case Arming:
		if e.Slot == u.ToSlot {
			u.TrialBoots++
			return keepLease(enter(n, Trial, e.Now)) // the arming took effect before the record said so
		}
		n, acts, err := finish(n, Aborted, "interrupted by a reboot while arming", e.Now)
		return n, append([]Action{ActDisarm{}}, acts...), err // GRUB would try the slot later
	case Rebooting, Trial:
		if e.Slot == u.ToSlot && e.Committed == u.ToSlot {
			return keepLease(enter(n, Committing, e.Now)) // committed in grubenv, not yet in META
		}
		if e.Slot == u.ToSlot {
			// The first boot of the new slot; or another one, GRUB having boot tries left
			// after a trial cut short (power, reset): the trial resumes, gates again.
			// TrialBoots tells a resumed trial from a first one; MaxBoots bounds it all.
			u.TrialBoots++
			return keepLease(enter(n, Trial, e.Now))
		}
		// GRUB spent the new slot's tries without a commit: it panicked or hung before
		// the init saw it, or every trial boot was cut short.
		reason := "the new slot never reported healthy"
		switch {
		case u.TrialBoots == 0:
			reason += fmt.Sprintf(" (GRUB spent its %d boot tries and none reached the init: panic, hang or power loss)", boot.TrialTries)
		default:
			reason += fmt.Sprintf(" (GRUB spent its %d boot tries; %d reached the init, none finished: reset or power loss during the trial)", boot.TrialTries, u.TrialBoots)
		}
		return finish(n, RolledBack, reason, e.Now)
	case Committing:
		if e.Slot == u.ToSlot {
			if e.Committed == u.ToSlot {
				return keepLease(enter(n, Done, e.Now))
			}
			return keepLease(enter(n, Committing, e.Now))
		}
		return finish(n, RolledBack, "the commit never reached grubenv (power lost, or its write failed); the old slot is still the default", e.Now)
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
