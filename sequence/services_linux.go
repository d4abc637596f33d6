package sequence

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"keel/disk"
	"keel/events"
	"keel/machine"
	"keel/netapi"
	"keel/supervisor"
)

// ServiceLogDir is where service output also goes while EPHEMERAL is mounted.
const ServiceLogDir = MountEphemeral + "/log/services"

// startServices builds the supervisor from the config's services for this node's role and
// starts it; each service waits for its dependencies.
func (n *Node) startServices() error {
	specs := supervisor.ForRole(n.cfg.Services, n.cfg.Role)
	if n.controlPlane() {
		spec, err := n.etcdService()
		if err != nil {
			n.warn("etcd: %v", err)
		} else {
			specs = append([]supervisor.Spec{spec}, specs...)
		}
	}
	sup, err := supervisor.New(specs, supervisor.Options{
		Log:     n.log,
		Starter: n.Reaper,
		LogDir: func() string {
			if n.mounted(MountEphemeral) {
				return ServiceLogDir
			}
			return ""
		},
		OnChange: func(name string, from, to supervisor.State, detail string) {
			n.publish("service", name, string(to), map[string]any{"from": string(from), "detail": detail})
		},
	})
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.sup = sup
	n.mu.Unlock()
	sup.Start(context.Background())
	n.log.Info("services started", "count", len(specs), "role", n.cfg.Role)
	return nil
}

func (n *Node) mounted(target string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.mounts {
		if m.target == target {
			return true
		}
	}
	return false
}

// stopServices stops every service, dependents first (each: its stop signal, grace, SIGKILL).
func (n *Node) stopServices() {
	n.mu.Lock()
	sup := n.sup
	n.mu.Unlock()
	if sup != nil {
		sup.Stop()
	}
}

func (n *Node) publish(kind, source, msg string, data map[string]any) {
	if n.opts.Events != nil {
		n.opts.Events.Publish(kind, source, msg, data)
	}
}

// Services implements netapi.Node.
func (n *Node) Services() []supervisor.Status {
	n.mu.Lock()
	sup := n.sup
	n.mu.Unlock()
	if sup == nil {
		return []supervisor.Status{}
	}
	return sup.Status()
}

// RestartService implements netapi.Node.
func (n *Node) RestartService(name string) error {
	n.mu.Lock()
	sup := n.sup
	n.mu.Unlock()
	if sup == nil {
		return fmt.Errorf("%w: service %q", netapi.ErrNotFound, name)
	}
	err := sup.Restart(name)
	if errors.Is(err, supervisor.ErrUnknown) {
		return fmt.Errorf("%w: service %q", netapi.ErrNotFound, name)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", netapi.ErrConflict, err)
	}
	return nil
}

// LogRing implements netapi.Node: the init's own log is "init".
func (n *Node) LogRing(name string) (*events.Ring, error) {
	if name == "init" && n.opts.InitLog != nil {
		return n.opts.InitLog, nil
	}
	n.mu.Lock()
	sup := n.sup
	n.mu.Unlock()
	if sup != nil {
		if r, err := sup.Logs(name); err == nil {
			return r, nil
		}
	}
	return nil, fmt.Errorf("%w: no log %q (services and \"init\")", netapi.ErrNotFound, name)
}

// Events implements netapi.Node.
func (n *Node) Events() *events.Ring {
	if n.opts.Events == nil {
		r := events.NewRing(1, 0)
		r.Close()
		return r
	}
	return n.opts.Events.Ring()
}

// Dmesg implements netapi.Node.
func (n *Node) Dmesg(ctx context.Context, follow bool, emit func(any) error) error {
	return machine.ReadKmsg(ctx, follow, func(r machine.KmsgRecord) error { return emit(r) })
}

// Reset implements netapi.Node: the named partitions are re-made during the ordered shutdown
// (after services stop and filesystems unmount), then the node reboots. Wiping STATE removes
// the node's keys and config: it comes back without an endpoint, ready to be provisioned.
func (n *Node) Reset(wipe []string) error {
	n.mu.Lock()
	active := n.rec.Active()
	n.mu.Unlock()
	if active {
		return fmt.Errorf("%w: an upgrade is in flight", netapi.ErrConflict)
	}
	n.mu.Lock()
	n.pendingWipe = append([]string(nil), wipe...)
	n.mu.Unlock()
	if err := n.request(machine.ActionReboot, fmt.Sprintf("reset: wipe %v", wipe)); err != nil {
		return fmt.Errorf("%w: %v", netapi.ErrConflict, err)
	}
	return nil
}

// wipe re-makes the named partitions (unmounted by then).
func (n *Node) wipe(names []string) error {
	var errs []error
	for _, name := range names {
		d, ok := n.parts[name]
		if !ok || (name != disk.PartEphemeral && name != disk.PartState) {
			errs = append(errs, fmt.Errorf("wipe %s: not a wipeable partition", name))
			continue
		}
		out, err := exec.Command("/sbin/mke2fs", "-q", "-t", "ext4", "-F", "-L", name, d.Dev).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Errorf("wipe %s: mke2fs %s: %v: %s", name, d.Dev, err, out))
			continue
		}
		n.log.Info("reset: partition wiped", "partition", name, "device", d.Dev)
		n.publish("shutdown", "reset", "wiped "+name, nil)
	}
	return errors.Join(errs...)
}

// servicesGate waits until every service is up, for the trial boot.
func (n *Node) servicesGate(ctx context.Context) error {
	for {
		n.mu.Lock()
		sup := n.sup
		n.mu.Unlock()
		if sup == nil {
			return nil
		}
		ok, why := sup.AllUp()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", why, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
