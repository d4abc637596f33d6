package kube

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"keel/cluster"
	"keel/config"
	"keel/upgrade"
)

// Node is the Kubernetes side of a node's upgrades (upgrade.Kube). Its client is built once,
// on first use, from the kubeconfig on STATE, and kept: the uncordon after an abort may run
// when STATE is already unmounted. Without Kubernetes configuration cordon reports skipped,
// and drain and uncordon have nothing to do.
type Node struct {
	o NodeOptions

	mu              sync.Mutex
	c               *Client
	progress        *DrainStatus
	uncordonFailing bool
}

// NodeOptions configure a Node.
type NodeOptions struct {
	Config *config.Kubernetes // nil: not configured
	// Kubeconfig is the kubeconfig's path (on STATE).
	Kubeconfig string
	cluster.Report
}

// DrainStatus is how far the last drain got.
type DrainStatus struct {
	UpgradeID   string
	PodsLeft    int
	LastEvicted string
}

// NewNode returns the Kubernetes side of a node.
func NewNode(o NodeOptions) *Node {
	o.Report = o.Report.Filled()
	return &Node{o: o}
}

// Configured says whether the node has Kubernetes configuration.
func (n *Node) Configured() bool { return n.o.Config != nil }

// Drained is the last drain's progress (nil before any).
func (n *Node) Drained() *DrainStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.progress == nil {
		return nil
	}
	p := *n.progress
	return &p
}

func (n *Node) client() (*Client, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.c != nil {
		return n.c, nil
	}
	b, err := os.ReadFile(n.o.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	rc, err := RESTConfig(b, 15*time.Second)
	if err != nil {
		return nil, err
	}
	c, err := New(rc, n.o.Config.NodeName, n.o.Log)
	if err != nil {
		return nil, err
	}
	n.c = c
	return c, nil
}

// Cordon implements upgrade.Kube.
func (n *Node) Cordon(ctx context.Context) (ours, skipped bool, err error) {
	if n.o.Config == nil {
		return false, true, nil
	}
	c, err := n.client()
	if err != nil {
		return false, false, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ours, err = c.Cordon(ctx)
	return ours, false, err
}

// Drain implements upgrade.Kube: the request's timeout, else the configured one.
func (n *Node) Drain(ctx context.Context, a upgrade.ActDrain) error {
	if n.o.Config == nil {
		return nil
	}
	c, err := n.client()
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	timeout := a.TimeoutS
	if timeout <= 0 {
		timeout = n.o.Config.DrainTimeout()
	}
	return c.Drain(ctx, DrainOptions{
		Timeout: time.Duration(timeout) * time.Second,
		Force:   a.Force,
		Progress: func(p Progress) {
			n.mu.Lock()
			n.progress = &DrainStatus{UpgradeID: a.ID, PodsLeft: p.Left, LastEvicted: p.Evicted}
			n.mu.Unlock()
			n.o.Event("upgrade", a.ID, "drain", map[string]any{"pods_left": p.Left, "evicted": p.Evicted})
		},
	})
}

// Uncordon implements upgrade.Kube: our cordon only (the executor retries a failure; the
// first of a run of them is a warning in status).
func (n *Node) Uncordon(ctx context.Context) error {
	if n.o.Config == nil {
		return nil
	}
	err := n.uncordon(ctx)
	n.mu.Lock()
	first := err != nil && !n.uncordonFailing
	n.uncordonFailing = err != nil
	n.mu.Unlock()
	if first {
		n.o.Warn("uncordon failed, retrying until the API server answers: %v", err)
	}
	return err
}

func (n *Node) uncordon(ctx context.Context) error {
	c, err := n.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return c.Uncordon(ctx)
}
