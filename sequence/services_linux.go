package sequence

import (
	"context"
	"fmt"
	"time"

	"keel/cluster/etcd"
	"keel/supervisor"
	"keel/upgrade"
)

// startServices builds the supervisor from the config's services for this node's role and
// starts it; each service waits for its dependencies. A control-plane node's etcd member comes
// first, its pending rejoin (if any) settled before it starts.
func (n *Node) startServices(ctx context.Context) error {
	cfg := n.config()
	specs := supervisor.ForRole(cfg.Services, cfg.Role)
	if n.etcd != nil {
		pending := false
		if u := n.exec.Record().Current; u != nil {
			pending = u.Rejoin
		}
		spec, rejoined, err := n.etcd.ServiceSpec(ctx, pending)
		switch {
		case err != nil:
			n.warn("etcd: %v", err)
		default:
			specs = append([]supervisor.Spec{spec}, specs...)
		}
		if rejoined != "" {
			n.exec.Post(upgrade.Rejoined{Note: rejoined, Now: now()})
		}
	}
	kube, err := n.kubeletServices()
	if err != nil {
		n.warn("%v", err)
	}
	specs = append(specs, kube...)
	sup, err := supervisor.New(specs, supervisor.Options{
		Log:     n.log,
		Starter: n.Reaper,
		LogDir: func() string {
			if j := n.logJournal(); j != nil {
				return j.Dir()
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
	n.log.Info("services started", "count", len(specs), "role", cfg.Role)
	return nil
}

func (n *Node) supervisor() *supervisor.Supervisor {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sup
}

// stopServices stops every service, dependents first (each: its stop signal, grace, SIGKILL).
func (n *Node) stopServices() {
	n.downloads.closeAll() // the filesystems they read are about to be unmounted
	sup := n.supervisor()
	if sup == nil {
		return
	}
	// A leading etcd member that stops leaves the cluster without a leader for an election
	// timeout: it hands leadership over first (an upgrade did so already while preparing).
	if n.etcd != nil {
		for _, s := range sup.Status() {
			if s.Name == etcd.ServiceName && (s.State == supervisor.Healthy || s.State == supervisor.Running) {
				n.etcd.HandOver(context.Background())
			}
		}
	}
	sup.Stop()
}

// servicesUp waits until every service is up (the trial's services gate).
func (n *Node) servicesUp(ctx context.Context) error {
	for {
		sup := n.supervisor()
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
