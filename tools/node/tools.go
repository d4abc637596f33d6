//go:build tools

// Package tools pins the container runtime a Kubernetes node runs (see
// ../../scripts/k8s-bins.sh): containerd 2.x with its runc shim, runc, and the CNI plugins the
// node's bridge network uses. Its own module, like ../k8s: none of it is linked into the init.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/opencontainers/runc"
)
