package reconciler

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"

	"keel/cluster/kubelet"
)

// Labels and annotations on Node objects.
const (
	// LabelKeelNode marks a Node as a keel node: keel's kubelet registers with it. A plan
	// selects among these only: a node without keel has no endpoint to upgrade through.
	LabelKeelNode = kubelet.NodeLabel
	// LabelControlPlane is Kubernetes' control-plane role label; the node's own status
	// (control_plane: it runs an etcd member) counts too.
	LabelControlPlane = "node-role.kubernetes.io/control-plane"
	// AnnotationEndpoint overrides where a node's keel endpoint is (host:port), for a node
	// behind NAT or one whose endpoint is not on its InternalIP.
	AnnotationEndpoint = "keel.dev/endpoint"
)

// DefaultPort is the keel endpoint's port.
const DefaultPort = 50000

// Endpoint is where node's keel endpoint listens: its keel.dev/endpoint annotation, else its
// first InternalIP (then ExternalIP) at port.
func Endpoint(n *corev1.Node, port int) (string, error) {
	if a := n.Annotations[AnnotationEndpoint]; a != "" {
		host, p, err := net.SplitHostPort(a)
		if pn, perr := strconv.Atoi(p); err != nil || host == "" || perr != nil || pn < 1 || pn > 65535 {
			return "", fmt.Errorf("node %s: annotation %s=%q: want host:port", n.Name, AnnotationEndpoint, a)
		}
		return a, nil
	}
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != t {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				return net.JoinHostPort(ip.String(), strconv.Itoa(port)), nil
			}
		}
	}
	return "", fmt.Errorf("node %s has no InternalIP or ExternalIP address (and no %s annotation)", n.Name, AnnotationEndpoint)
}
