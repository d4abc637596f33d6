package sequence

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"keel/host"
	"keel/internal/fault"
	"keel/machine"
	"keel/upgrade"
)

// upgradeHost is the running node as the upgrade executor sees it (upgrade.Host): stopping what uses
// STATE and EPHEMERAL before the slot is written, and the trial of a new slot.
type upgradeHost struct{ n *Node }

// Stop implements upgrade.Host: the services stop (dependents first); every process left
// (containers and their shims outlive containerd) and whatever else holds STATE or EPHEMERAL
// is killed; the mounts that pin them (container roots, pod volumes, network namespaces) come
// down; then both are unmounted. An unmount that still fails is the upgrade's failure (it
// aborts and reboots into the current slot) and names the mount.
func (h upgradeHost) Stop(context.Context) error {
	n := h.n
	n.stopServices()
	if k := machine.KillAll(10*time.Second, n.Reaper.ReapOnce); k > 0 {
		n.log.Warn("upgrade: leftover processes needed SIGKILL", "count", k)
	}
	mounts := []string{MountEphemeral, MountState}
	if err := releaseMounts(mounts); err != nil {
		return err
	}
	n.closeJournal()
	if k := machine.KillHolders(5*time.Second, n.Reaper.ReapOnce, mounts...); k > 0 {
		n.log.Warn("upgrade: processes needed SIGKILL", "count", k)
	}
	machine.Sync()
	for _, m := range mounts {
		if err := machine.Unmount(m, 5*time.Second); err != nil {
			return fmt.Errorf("%w (still in use after killing every process holding it)", err)
		}
		n.mounts.drop(m)
	}
	return nil
}

// releaseMounts unmounts what pins the filesystems at roots (host.ReleaseOrder), deepest
// first, trying every one and going over the table again while that makes progress (a mount
// hidden under another comes out once the one above it is gone). What is left is the error,
// named.
func releaseMounts(roots []string) error {
	var left []string
	for range 5 {
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		order := host.ReleaseOrder(string(b), roots)
		if len(order) == 0 || slices.Equal(order, left) {
			break
		}
		left = order
		for _, m := range order {
			_ = machine.Unmount(m, 2*time.Second)
		}
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	if order := host.ReleaseOrder(string(b), roots); len(order) > 0 {
		return fmt.Errorf("container mounts still busy: %s", strings.Join(order, ", "))
	}
	return nil
}

// trialWatchdog is the hardware watchdog a trial arms: if the new slot hangs, it resets the
// machine (into the old slot: the new one is not committed).
type trialWatchdog struct {
	mu sync.Mutex
	wd *machine.Watchdog
}

func (t *trialWatchdog) set(wd *machine.Watchdog) {
	t.mu.Lock()
	t.wd = wd
	t.mu.Unlock()
}

func (t *trialWatchdog) take() *machine.Watchdog {
	t.mu.Lock()
	defer t.mu.Unlock()
	wd := t.wd
	t.wd = nil
	return wd
}

// Trial implements upgrade.Host: arm the watchdog, then run the health gates in order within
// the trial's time.
func (h upgradeHost) Trial(ctx context.Context, rejoin bool, notes upgrade.TrialNotes) error {
	n := h.n
	cfg := n.config().Upgrade
	wd, err := machine.ArmWatchdog("/dev/watchdog", time.Duration(cfg.WatchdogTimeout())*time.Second)
	if err != nil {
		n.warn("trial without a hardware watchdog: %v", err)
	} else {
		n.trial.set(wd)
		n.log.Info("upgrade: watchdog armed", "timeout_s", cfg.WatchdogTimeout())
	}
	if n.opts.Fault == fault.HangInTrial && wd != nil {
		n.log.Warn("fault injected: hanging in the trial boot")
		wd.Hang()
		select {} // the watchdog resets the machine
	}
	timeout := time.Duration(cfg.TrialTimeout()) * time.Second
	if k := n.config().Kubernetes; k != nil && k.Kubelet != nil {
		timeout += time.Duration(k.ReadyTimeout()) * time.Second // the kubernetes-ready gate's own
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, g := range h.gates(rejoin, notes) {
		if err := g.check(ctx); err != nil {
			n.log.Error("upgrade: health gate failed", "gate", g.name, "err", err)
			return fmt.Errorf("%s: %w", g.name, err)
		}
		n.log.Info("upgrade: health gate passed", "gate", g.name)
		n.publish("upgrade", g.name, "gate passed", nil)
	}
	return nil
}

// Finish implements upgrade.Host: the upgrade is done, the trial's watchdog stands down.
func (h upgradeHost) Finish() {
	if wd := h.n.trial.take(); wd != nil {
		if err := wd.Disarm(); err != nil {
			h.n.warn("%v", err)
		}
	}
}

type gate struct {
	name  string
	check func(context.Context) error
}

// gates are the trial's health checks, in order.
func (h upgradeHost) gates(rejoin bool, notes upgrade.TrialNotes) []gate {
	n := h.n
	g := []gate{
		{"mounts", func(context.Context) error {
			for _, want := range []string{MountState, MountEphemeral} {
				if !n.mounts.has(want) {
					return fmt.Errorf("%s is not mounted", want)
				}
			}
			return nil
		}},
	}
	if n.etcd != nil {
		// Before the services gate: a rejoining member is a learner until this gate promotes
		// it, and the services gate waits for etcd's health.
		g = append(g, gate{"etcd", func(ctx context.Context) error { return n.etcd.Gate(ctx, rejoin, notes.Rejoined) }})
	}
	g = append(g, gate{"services", n.servicesUp})
	if k := n.config().Kubernetes; k != nil && k.Kubelet != nil && n.kube != nil {
		// This boot's kubelet reports the node Ready (not the status the last boot left).
		g = append(g, gate{"kubernetes-ready", func(ctx context.Context) error {
			if err := n.kube.WaitReady(ctx, n.bootID); err != nil {
				return err
			}
			notes.KubeReady("Ready as reported by this boot's kubelet")
			return nil
		}})
	}
	g = append(g,
		gate{"api", func(ctx context.Context) error {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", n.config().APIPort()))
			if err != nil {
				return err
			}
			return c.Close()
		}})
	switch n.opts.Fault {
	case fault.SlowTrial:
		g = append(g, gate{"fault-slow", func(ctx context.Context) error {
			select {
			case <-time.After(15 * time.Second):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
	case fault.HealthFail:
		g = append(g, gate{"fault-injected", func(context.Context) error { return errors.New("this test image always fails its health gate") }})
	}
	return g
}
