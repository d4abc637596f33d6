package controller

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"keel/cluster/kube"
	"keel/netapi"
)

// Gate is the health gate between nodes, from the node's own status (st) and what the API
// server says of the node and its pods: Ready as reported by the kubelet of the node's current
// boot (a Ready left from before the reboot does not count), the upgrade's own cordon lifted
// (its record's uncordon obligation: a cordon someone else set stays, and does not hold the
// plan), and every pod bound to it that is meant to run (not finished, not being deleted)
// Ready again. A pod that was not Ready before the upgrade holds the gate too.
func Gate(node *corev1.Node, st netapi.Status, pods []corev1.Pod) (bool, string) {
	if ok, why := kube.ReadyFor(node, st.BootID); !ok {
		return false, "node not Ready: " + why
	}
	if st.Upgrade != nil && st.Upgrade.Uncordon {
		return false, "the upgrade's cordon is not lifted yet"
	}
	var notReady []string
	for _, p := range pods {
		if p.Spec.NodeName != node.Name || p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		ready := false
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		if !ready {
			notReady = append(notReady, p.Namespace+"/"+p.Name)
		}
	}
	if len(notReady) > 0 {
		if len(notReady) > 5 {
			notReady = append(notReady[:5], fmt.Sprintf("and %d more", len(notReady)-5))
		}
		return false, "pods not Ready: " + strings.Join(notReady, ", ")
	}
	return true, ""
}

// HTTPCheck is the plan's optional check: url answers 2xx.
func HTTPCheck(ctx context.Context, c *http.Client, url string) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := c.Do(req)
	if err != nil {
		return false, "health check: " + err.Error()
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return false, fmt.Sprintf("health check %s: %s", url, resp.Status)
	}
	return true, ""
}
