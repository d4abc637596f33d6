package sequence

import (
	"context"
	"fmt"
	"time"

	"keel/internal/fault"
	"keel/machine"
)

// ShutdownOptions bound each step of the shutdown.
type ShutdownOptions struct {
	// Grace is how long processes get between SIGTERM and SIGKILL.
	Grace time.Duration
	// UnmountTimeout is how long an unmount may stay busy.
	UnmountTimeout time.Duration
}

// RunShutdown stops everything in order and unmounts every filesystem the boot mounted, newest
// first, so that the next boot finds them clean. It returns the errors it met; the caller
// reboots regardless (a node that cannot unmount must still go down).
//
// The endpoint stops accepting first (a new request must not start work we are about to
// kill), but requests in flight finish and follow streams stay open: a client following
// /v1/events sees every step below. The upgrade executor stops next: its running action is
// cancelled and nothing more is persisted or performed (META already says where it was; the
// next boot decides from it). The rings close last, which ends the streams cleanly.
func (n *Node) RunShutdown(ctx context.Context, a machine.Action, o ShutdownOptions) []error {
	if o.Grace == 0 {
		o.Grace = 5 * time.Second
	}
	if o.UnmountTimeout == 0 {
		o.UnmountTimeout = 5 * time.Second
	}
	var errs []error
	step := func(name string, f func() error) {
		t0 := time.Now()
		err := f()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			n.log.Error("shutdown step failed", "step", name, "err", err)
			n.publish("shutdown", name, "failed", map[string]any{"error": err.Error()})
			return
		}
		n.log.Info("shutdown step done", "step", name, "took", time.Since(t0).Round(time.Millisecond))
		n.publish("shutdown", name, "done", map[string]any{"duration_s": time.Since(t0).Seconds()})
	}
	n.log.Info("shutdown: begin", "action", a.String())
	n.publish("shutdown", "begin", a.String(), nil)

	n.mu.Lock()
	srv := n.srv
	n.mu.Unlock()
	apiDone := make(chan struct{})
	if srv != nil {
		go func() {
			// Closes the listener now; returns once every request in flight has ended.
			srv.Shutdown(context.Background())
			close(apiDone)
		}()
	} else {
		close(apiDone)
	}
	if n.exec != nil {
		step("upgrade", func() error { n.exec.Stop(10 * time.Second); return nil })
	}
	step("services", func() error { n.stopServices(); return nil })
	step("kill-processes", func() error {
		if left := machine.KillAll(o.Grace, n.Reaper.ReapOnce); left > 0 {
			n.log.Warn("processes needed SIGKILL", "count", left)
		}
		return nil
	})
	step("container-mounts", func() error { return releaseMounts([]string{MountEphemeral, MountState}) })
	n.closeJournal()
	machine.Sync()
	mounts := n.mounts.list()
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		step("unmount "+m.target, func() error { return machine.Unmount(m.target, o.UnmountTimeout) })
	}
	if wipe := n.power.wipe(); len(wipe) > 0 {
		step("reset", func() error { return n.wipe(wipe) })
	}
	machine.Sync()
	n.log.Info("shutdown: done", "action", a.String(), "errors", len(errs))
	n.publish("shutdown", "done", a.String(), map[string]any{"errors": len(errs)})
	// End the follow streams, then give their responses a moment to finish.
	if n.opts.Events != nil {
		n.opts.Events.Close()
	}
	if n.opts.InitLog != nil {
		n.opts.InitLog.Close()
	}
	if sup := n.supervisor(); sup != nil {
		sup.CloseLogs()
	}
	select {
	case <-apiDone:
	case <-time.After(2 * time.Second):
		srv.Close()
	}
	fmt.Fprintf(n.opts.Console, "%saction=%s errors=%d\n", ShutdownDonePrefix, a, len(errs))
	return errs
}

// RebootWatchdog bounds a reboot: the kernel's way down (device shutdown, reboot(2)) can hang,
// and a node nobody watches must still come back. Like systemd's RebootWatchdogSec.
const RebootWatchdog = 30 * time.Second

// ArmRebootWatchdog is called after the ordered shutdown, just before reboot(2): the hardware
// watchdog resets the machine if the reboot has not happened within RebootWatchdog. A trial's
// watchdog, already armed, simply stops being pinged. Only for reboots: a hung poweroff must
// not turn into a boot.
func (n *Node) ArmRebootWatchdog(a machine.Action) {
	if a != machine.ActionReboot {
		return
	}
	wd := n.trial.take()
	if wd == nil {
		var err error
		if wd, err = machine.ArmWatchdog("/dev/watchdog", RebootWatchdog); err != nil {
			n.log.Warn("reboot without a watchdog", "err", err)
			return
		}
	}
	wd.Hang()
	fmt.Fprintf(n.opts.Console, "keel: reboot watchdog armed (%s)\n", RebootWatchdog)
	if n.opts.Fault == fault.HangInReboot {
		n.log.Warn("fault injected: hanging instead of reboot(2)")
		select {}
	}
}
