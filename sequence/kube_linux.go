package sequence

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"keel/cluster/kube"
	"keel/netapi"
	"keel/upgrade"
)

// kubeClient returns the Kubernetes client, built once from the kubeconfig on STATE and kept:
// the uncordon after an abort may run when STATE is already unmounted. nil, nil without
// Kubernetes configuration. Nothing here runs on the boot path before the endpoint is up.
func (n *Node) kubeClient() (*kube.Client, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.kube != nil {
		return n.kube, nil
	}
	k := n.cfg.Kubernetes
	if k == nil {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(MountState, k.KubeconfigPath()))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	rc, err := kube.RESTConfig(b, 15*time.Second)
	if err != nil {
		return nil, err
	}
	c, err := kube.New(rc, k.NodeName, n.log)
	if err != nil {
		return nil, err
	}
	n.kube = c
	return c, nil
}

func (n *Node) cordon(ctx context.Context) upgrade.Event {
	c, err := n.kubeClient()
	if err != nil {
		return upgrade.Failed{Reason: "cordon: " + err.Error(), Now: now()}
	}
	if c == nil {
		return upgrade.Cordoned{Skipped: true, Now: now()}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ours, err := c.Cordon(ctx)
	if err != nil {
		return upgrade.Failed{Reason: err.Error(), Now: now()}
	}
	return upgrade.Cordoned{Ours: ours, Now: now()}
}

func (n *Node) drain(ctx context.Context, u upgrade.Upgrade) upgrade.Event {
	c, err := n.kubeClient()
	if err != nil {
		return upgrade.Failed{Reason: "drain: " + err.Error(), Now: now()}
	}
	if c == nil {
		return upgrade.Completed{Now: now()}
	}
	timeout := u.DrainTimeoutS
	if timeout <= 0 {
		timeout = n.cfg.Kubernetes.DrainTimeout()
	}
	err = c.Drain(ctx, kube.DrainOptions{
		Timeout: time.Duration(timeout) * time.Second,
		Force:   u.Force,
		Progress: func(p kube.Progress) {
			n.mu.Lock()
			n.drainProg = &netapi.DrainProgress{UpgradeID: u.ID, PodsLeft: p.Left, LastEvicted: p.Evicted}
			n.mu.Unlock()
			n.publish("upgrade", u.ID, "drain", map[string]any{"pods_left": p.Left, "evicted": p.Evicted})
		},
	})
	if err != nil {
		return upgrade.Failed{Reason: err.Error(), Now: now()}
	}
	return upgrade.Completed{Now: now()}
}

// uncordon lifts our cordon. It tries once; on failure a background loop retries with backoff
// until the API server answers (the obligation is on META, so a reboot resumes it too).
func (n *Node) uncordon(ctx context.Context) upgrade.Event {
	try := func() error {
		c, err := n.kubeClient()
		if err != nil || c == nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return c.Uncordon(ctx)
	}
	if err := try(); err == nil {
		return upgrade.Uncordoned{Now: now()}
	} else {
		n.warn("uncordon failed, retrying until the API server answers: %v", err)
	}
	n.mu.Lock()
	running := n.uncordonRetry
	n.uncordonRetry = true
	n.mu.Unlock()
	if running {
		return nil
	}
	go func() {
		defer func() { n.mu.Lock(); n.uncordonRetry = false; n.mu.Unlock() }()
		wait := time.Second
		for {
			time.Sleep(wait)
			wait = min(2*wait, 30*time.Second)
			if err := try(); err != nil {
				n.log.Warn("uncordon retry failed", "err", err, "next_in", wait)
				continue
			}
			if _, err := n.apply(upgrade.Uncordoned{Now: now()}); err != nil {
				n.log.Error("uncordon: record", "err", err)
			}
			return
		}
	}()
	return nil
}
