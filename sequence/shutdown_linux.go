package sequence

import (
	"context"
	"fmt"
	"time"

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
// Order matters: the endpoint stops accepting before processes are killed (a new request
// must not start work we are about to kill), but only after the answer to the request that
// asked for the shutdown has been written (srv.Shutdown waits for active handlers).
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
			return
		}
		n.log.Info("shutdown step done", "step", name, "took", time.Since(t0).Round(time.Millisecond))
	}
	n.log.Info("shutdown: begin", "action", a.String())

	n.mu.Lock()
	srv := n.srv
	n.mu.Unlock()
	if srv != nil {
		step("api", func() error {
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				return srv.Close()
			}
			return nil
		})
	}
	// Services join here (issue: services the init supervises), stopped in reverse order.
	step("kill-processes", func() error {
		if left := machine.KillAll(o.Grace, n.Reaper.ReapOnce); left > 0 {
			n.log.Warn("processes needed SIGKILL", "count", left)
		}
		return nil
	})
	machine.Sync()
	n.mu.Lock()
	mounts := append([]mounted(nil), n.mounts...)
	n.mu.Unlock()
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		step("unmount "+m.target, func() error { return machine.Unmount(m.target, o.UnmountTimeout) })
	}
	machine.Sync()
	n.log.Info("shutdown: done", "action", a.String(), "errors", len(errs))
	fmt.Fprintf(n.opts.Console, "%saction=%s errors=%d\n", ShutdownDonePrefix, a, len(errs))
	return errs
}
