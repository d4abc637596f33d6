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
	Now           time.Time
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
)

// effect is the action that enters a state performs.
var effect = map[State]Action{
	Pulling: ActPull, Cordoning: ActCordon, Draining: ActDrain, Stopping: ActStop, Writing: ActWriteSlot, Wiping: ActWipe, Arming: ActArm,
	Rebooting: ActReboot, Trial: ActTrial, Committing: ActCommit, Done: ActFinish,
}

// Errors Step returns; the record is unchanged when it does.
var (
	ErrBusy       = errors.New("upgrade: another upgrade is in flight")
	ErrUnexpected = errors.New("upgrade: event not expected in this state")
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
		if u != nil {
			n.History = append([]Upgrade{*u}, n.History...)
			if len(n.History) > HistoryLen {
				n.History = n.History[:HistoryLen]
			}
		}
		n.Current = &Upgrade{
			ID: e.ID, State: Pulling, Image: e.Image, Preserve: e.Preserve, Force: e.Force, DrainTimeoutS: e.DrainTimeoutS,
			FromVersion: e.FromVersion, FromSlot: e.Booted, ToSlot: e.Booted.Other(),
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
		// From the cordon on, a cordon of ours may exist: it must be lifted however this ends.
		u.Uncordon = true
		return enter(n, Cordoning, e.Now)

	case Cordoned:
		if u.State != Cordoning {
			return r, nil, fmt.Errorf("%w: cordoned in %s", ErrUnexpected, u.State)
		}
		switch {
		case e.Skipped:
			u.Uncordon = false
			u.Kubernetes = "skipped: no Kubernetes configuration"
			return enter(n, Stopping, e.Now) // nothing to drain either
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
		case Draining:
			u.Kubernetes += "; drained"
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
		case Pulling, Cordoning:
			// Nothing was changed but (perhaps) the cordon: the node keeps running.
			return finish(n, Aborted, e.Reason, e.Now)
		case Draining:
			if u.Force {
				u.Warning = "forced past a failed drain: " + e.Reason
				return enter(n, Stopping, e.Now)
			}
			return finish(n, Aborted, e.Reason, e.Now)
		case Stopping, Writing, Wiping, Arming:
			// Services are stopped and filesystems unmounted: reboot into the current slot,
			// which also brings everything back in order. Clear a half-made boot-once.
			n, acts, err := finish(n, Aborted, e.Reason, e.Now)
			return n, append([]Action{ActDisarm}, append(acts, ActRebootCurrent)...), err
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
		n, acts, err := finish(n, RolledBack, "health gate failed: "+e.Reason, e.Now)
		return n, append(acts, ActRebootCurrent), err
	}
	return r, nil, fmt.Errorf("%w: %T", ErrUnexpected, ev)
}

// stepBoot decides what a boot means for the upgrade in flight. GRUB consumes a one-shot
// before booting it, so a boot of the old slot after arming means the new one did not make
// it to a healthy trial (panic, hang and watchdog, or power loss).
func stepBoot(n Record, e Booted) (Record, []Action, error) {
	if !n.Active() {
		if n.Current != nil && n.Current.Uncordon {
			return n, []Action{ActUncordon}, nil // a reboot interrupted the uncordon: go on
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
		n, acts, err := finish(n, st, fmt.Sprintf("gave up after %d boots in state %s", u.Boots, u.State), e.Now)
		if e.Slot != e.Committed {
			acts = append(acts, ActRebootCurrent)
		}
		return n, acts, err
	}
	switch u.State {
	case Pulling, Cordoning, Draining, Stopping, Writing, Wiping:
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
			return enter(n, Committing, e.Now) // committed in grubenv, not yet in META
		}
		if e.Slot == u.ToSlot && u.State == Rebooting {
			return enter(n, Trial, e.Now)
		}
		if e.Slot == u.ToSlot {
			// A second boot of the new slot without a commit: someone re-armed it. Try the
			// trial again; MaxBoots bounds it.
			return enter(n, Trial, e.Now)
		}
		reason := "the new slot never reported healthy"
		if u.State == Trial {
			reason += " (reset during the trial boot)"
		}
		return finish(n, RolledBack, reason, e.Now)
	case Committing:
		if e.Slot == u.ToSlot {
			if e.Committed == u.ToSlot {
				return enter(n, Done, e.Now)
			}
			return enter(n, Committing, e.Now)
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
	n.Current.State = s
	n.Current.UpdatedAt = now
	acts := []Action{effect[s]}
	if s == Done {
		n.Current.FinishedAt = now
		if n.Current.Uncordon {
			acts = append(acts, ActUncordon) // uncordon once the commit is done
		}
	}
	return n, acts, nil
}

// finish ends the upgrade; a pending uncordon is always its first action, so a node never
// stays cordoned because its upgrade failed.
func finish(n Record, s State, reason string, now time.Time) (Record, []Action, error) {
	n.Current.State = s
	n.Current.Reason = reason
	n.Current.UpdatedAt = now
	n.Current.FinishedAt = now
	if n.Current.Uncordon {
		return n, []Action{ActUncordon}, nil
	}
	return n, nil, nil
}

func setSlot(n *Record, s boot.Slot, rec SlotRecord) {
	if n.Slots == nil {
		n.Slots = map[boot.Slot]SlotRecord{}
	}
	n.Slots[s] = rec
}
