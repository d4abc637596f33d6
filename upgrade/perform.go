package upgrade

import (
	"context"
	"errors"
	"fmt"
)

// perform runs one action through the effects and returns its outcome. It runs in the action's
// own goroutine; post puts intermediate events (progress, a lease granted, who holds the lock)
// on the executor's queue, tagged with this run.
func (e *Executor) perform(ctx context.Context, a Action, post func(Event)) outcome {
	fx := e.o.Effects
	now := e.o.Now
	fail := func(format string, args ...any) outcome {
		reason := fmt.Sprintf(format, args...)
		e.o.Log.Error("upgrade: action failed", "action", a.String(), "reason", reason)
		return outcome{ev: Failed{Reason: reason, Now: now()}}
	}
	done := func() outcome { return outcome{ev: Completed{Now: now()}} } // when the effect ends
	switch a := a.(type) {
	case ActPull:
		p, err := fx.Slots.Pull(ctx, a)
		if errors.Is(err, ErrVersion) {
			return fail("refused: %v", err) // as Step says it of a pulled image
		}
		if err != nil {
			return fail("pull %s: %v", a.Image, err)
		}
		return outcome{ev: Pulled{Digest: p.Digest, ToVersion: p.Version, SignedBy: p.SignedBy, SignerKey: p.SignerKey, SlotSHA256: p.SlotSHA256, SlotSize: p.SlotSize, Now: now()}}

	case ActGrant:
		if fx.Cluster == nil {
			return fail("grant the upgrade lease: no etcd configured")
		}
		id, err := fx.Cluster.Grant(ctx)
		if err != nil {
			return fail("%v", err)
		}
		return outcome{ev: LeaseGranted{ID: id, Now: now()}}

	case ActLock:
		if fx.Cluster == nil {
			return fail("upgrade lock: no etcd configured")
		}
		err := fx.Cluster.Lock(ctx, a.Lease, a.ID,
			func(holder string) { post(LockWaiting{Holder: holder, Now: now()}) },
			func(reason string) { e.Post(LeaseLost{Lease: a.Lease, Reason: reason, Now: now()}) })
		if err != nil {
			return fail("%v", err)
		}
		return done()

	case ActCheck:
		if a.Force {
			return outcome{ev: Checked{Reason: "quorum check skipped: force", Now: now()}}
		}
		if fx.Cluster == nil {
			return fail("quorum check: no etcd configured")
		}
		verdict, err := fx.Cluster.Check(ctx, a.Preserve)
		if err != nil {
			return fail("%v", err)
		}
		return outcome{ev: Checked{Reason: verdict, Now: now()}}

	case ActCordon:
		if fx.Kube == nil {
			return outcome{ev: Cordoned{Skipped: true, Now: now()}}
		}
		ours, skipped, err := fx.Kube.Cordon(ctx)
		if err != nil {
			return fail("cordon: %v", err)
		}
		return outcome{ev: Cordoned{Ours: ours, Skipped: skipped, Now: now()}}

	case ActDrain:
		if fx.Kube == nil {
			return done()
		}
		if err := fx.Kube.Drain(ctx, a); err != nil {
			return fail("%v", err)
		}
		return outcome{ev: Completed{Now: now()}}

	case ActPrepare:
		if fx.Cluster == nil {
			return fail("prepare the etcd member: no etcd configured")
		}
		if err := fx.Cluster.Prepare(ctx, a.ID, a.Preserve, a.Force, func(note string) { post(EtcdNoted{Note: note, Now: now()}) }); err != nil {
			return fail("%v", err)
		}
		return outcome{ev: Completed{Now: now()}}

	case ActLeave:
		if fx.Cluster == nil {
			return fail("leave the etcd cluster: no etcd configured")
		}
		if err := fx.Cluster.Leave(ctx); err != nil {
			return fail("%v", err)
		}
		return outcome{ev: Completed{Now: now()}}

	case ActStop:
		if err := fx.Host.Stop(ctx); err != nil {
			return fail("%v", err)
		}
		return outcome{ev: Completed{Now: now()}}

	case ActWriteSlot:
		err := fx.Slots.Write(ctx, a, func(written, total int64) {
			post(Progressed{Written: written, Total: total, Now: now()})
		})
		if err != nil {
			return fail("write slot %s: %v", a.Slot, err)
		}
		return outcome{ev: Completed{Now: now()}}

	case ActWipe:
		if err := fx.Slots.WipeEphemeral(ctx); err != nil {
			if a.Resume {
				return outcome{retry: fmt.Errorf("wipe EPHEMERAL: %w", err)}
			}
			return fail("wipe EPHEMERAL: %v", err)
		}
		return outcome{ev: Wiped{Now: now()}}

	case ActArm:
		if err := fx.Boot.Arm(a.Slot); err != nil {
			return fail("arm the trial of slot %s: %v", a.Slot, err)
		}
		return outcome{ev: Completed{Now: now()}}

	case ActDisarm:
		if err := fx.Boot.Disarm(); err != nil {
			e.o.Log.Warn("upgrade: disarm the trial", "err", err)
		}
		return outcome{}

	case ActReboot:
		e.reboot(a.Reason)
		return outcome{}

	case ActRebootCurrent:
		e.reboot(a.Reason)
		return outcome{}

	case ActTrial:
		err := fx.Host.Trial(ctx, a.Rejoin, TrialNotes{
			Rejoined:  func(note string) { post(Rejoined{Note: note, Now: now()}) },
			KubeReady: func(note string) { post(KubeReady{Note: note, Now: now()}) },
		})
		if err != nil {
			return outcome{ev: Health{OK: false, Reason: err.Error(), Now: now()}}
		}
		return outcome{ev: Health{OK: true, Now: now()}}

	case ActCommit:
		if err := fx.Boot.Commit(a.Slot); err != nil {
			return fail("commit slot %s: %v", a.Slot, err)
		}
		return outcome{ev: Completed{Now: now()}}

	case ActFinish:
		fx.Host.Finish()
		e.o.Log.Info("upgrade: done", "id", a.ID, "version", a.Version, "slot", string(a.Slot))
		return outcome{}

	case ActKeepLease:
		if fx.Cluster == nil {
			return outcome{}
		}
		err := fx.Cluster.KeepLease(ctx, a.Lease, a.ID, func(reason string) {
			e.Post(LeaseLost{Lease: a.Lease, Reason: reason, Now: now()})
		})
		switch {
		case errors.Is(err, ErrLeaseExpired):
			return outcome{ev: LeaseLost{Lease: a.Lease, Reason: err.Error(), Now: now()}}
		case err != nil:
			return outcome{retry: err}
		}
		return outcome{}

	case ActRejoin:
		if fx.Cluster == nil {
			return outcome{ev: Rejoined{Note: "no etcd configured", Now: now()}}
		}
		note, err := fx.Cluster.Rejoin(ctx)
		if err != nil {
			return outcome{retry: err}
		}
		return outcome{ev: Rejoined{Note: note, Now: now()}}

	case ActUncordon:
		if fx.Kube != nil {
			if err := fx.Kube.Uncordon(ctx); err != nil {
				return outcome{retry: fmt.Errorf("uncordon: %w", err)}
			}
		}
		return outcome{ev: Uncordoned{Now: now()}}

	case ActRelease:
		if fx.Cluster != nil {
			if err := fx.Cluster.Release(ctx, a.Lease); err != nil {
				return outcome{retry: err}
			}
		}
		return outcome{ev: Released{Now: now()}}

	case ActVerifySlot:
		v, err := fx.Slots.Verify(ctx, a.Slot)
		if err != nil {
			return outcome{ev: RollbackRefused{Reason: err.Error(), Now: now()}}
		}
		return outcome{ev: RollbackVerified{Version: v, Now: now()}}

	case ActCommitRollback:
		if err := fx.Boot.Commit(a.Slot); err != nil {
			return outcome{ev: RollbackFailed{Reason: err.Error(), Now: now()}}
		}
		return outcome{ev: RollbackCommitted{Now: now()}}
	}
	return fail("unknown action %T", a)
}

func (e *Executor) reboot(reason string) {
	if err := e.o.Effects.Power.Reboot(reason); err != nil {
		e.o.Log.Warn("upgrade: reboot", "reason", reason, "err", err)
	}
}
