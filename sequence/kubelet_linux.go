package sequence

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"keel/host"
	"keel/internal/fault"
	"keel/supervisor"
)

// kubeletServices writes the files the node's container runtime and kubelet read (generated
// from kubernetes.kubelet at every boot) and returns their services. Without EPHEMERAL they
// are not started: their images, pods and registration belong on /var, not in RAM.
func (n *Node) kubeletServices() ([]supervisor.Spec, error) {
	cfg := n.config()
	if cfg.Kubernetes == nil || cfg.Kubernetes.Kubelet == nil {
		return nil, nil
	}
	if !n.mounts.has(MountEphemeral) {
		return nil, errors.New("kubelet and containerd not started: EPHEMERAL is not mounted")
	}
	plan, err := cfg.KubeletPlan(n.nodeIP())
	if err != nil {
		return nil, err
	}
	if n.opts.Fault == fault.KubeletNoRegister {
		if err := host.WriteFile(unreachableKubeconfig, []byte(unreachableAPI), 0o600); err == nil {
			n.log.Warn("fault injected: the kubelet's API server does not answer")
			plan.Kubeconfig = unreachableKubeconfig
		}
	}
	files, err := plan.Files()
	if err != nil {
		return nil, err
	}
	for _, p := range slices.Sorted(maps.Keys(files)) {
		if err := host.WriteFile(p, files[p], 0o644); err != nil {
			return nil, fmt.Errorf("kubelet: %w", err)
		}
	}
	return plan.Services()
}

// nodeIP is the primary link's first IPv4 address (the kubelet's default node IP).
func (n *Node) nodeIP() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.addrs {
		if p.Addr().Is4() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// The fault kubelet-no-register's kubeconfig: a server nothing listens on.
const (
	unreachableKubeconfig = "/run/keel/kubelet/unreachable.kubeconfig"
	unreachableAPI        = `apiVersion: v1
kind: Config
clusters:
- name: x
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: x
  user: {token: x}
contexts:
- name: x
  context: {cluster: x, user: x}
current-context: x
`
)
