package kube

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReadyFor says whether node is Ready as reported by the kubelet of the boot bootID (its
// NodeInfo carries the kernel's boot id): a Ready condition left over from the previous boot
// does not count. why says what is missing.
func ReadyFor(node *corev1.Node, bootID string) (ok bool, why string) {
	if got := node.Status.NodeInfo.BootID; got != bootID {
		return false, fmt.Sprintf("the node's status is from boot %q, not this boot's kubelet (%s)", got, bootID)
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status == corev1.ConditionTrue {
				return true, ""
			}
			return false, fmt.Sprintf("Ready=%s: %s %s", c.Status, c.Reason, c.Message)
		}
	}
	return false, "no Ready condition yet"
}

// WaitReady waits until this boot's kubelet reports the node Ready (ReadyFor), polling the
// API server; the error says what was last missing.
func (c *Client) WaitReady(ctx context.Context, bootID string) error {
	why := "not registered yet"
	for {
		n, err := c.cs.CoreV1().Nodes().Get(ctx, c.node, metav1.GetOptions{})
		switch {
		case err == nil:
			var ok bool
			if ok, why = ReadyFor(n, bootID); ok {
				return nil
			}
		case ctx.Err() == nil:
			why = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not Ready: %s: %w", c.node, why, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// WaitReady is the trial's Kubernetes gate: the node Ready as reported by this boot's
// kubelet, within the configured ready timeout. Nodes that run no kubelet pass at once.
func (n *Node) WaitReady(ctx context.Context, bootID string) error {
	if n.o.Config == nil || n.o.Config.Kubelet == nil {
		return nil
	}
	c, err := n.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(n.o.Config.ReadyTimeout())*time.Second)
	defer cancel()
	return c.WaitReady(ctx, bootID)
}
