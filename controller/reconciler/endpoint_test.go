package reconciler

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestEndpoint(t *testing.T) {
	node := func(ann string, addrs ...corev1.NodeAddress) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w1"}, Status: corev1.NodeStatus{Addresses: addrs}}
		if ann != "" {
			n.Annotations = map[string]string{AnnotationEndpoint: ann}
		}
		return n
	}
	host := corev1.NodeAddress{Type: corev1.NodeHostName, Address: "w1"}
	in := corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.0.0.5"}
	ex := corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "2001:db8::5"}
	for _, c := range []struct {
		n    *corev1.Node
		want string
	}{
		{node("", host, ex, in), "10.0.0.5:50000"},
		{node("", host, ex), "[2001:db8::5]:50000"},
		{node("127.0.0.1:41000", in), "127.0.0.1:41000"},
		{node("w1.example:443"), "w1.example:443"},
	} {
		if got, err := Endpoint(c.n, DefaultPort); err != nil || got != c.want {
			t.Errorf("%+v: %q %v, want %q", c.n.Status.Addresses, got, err, c.want)
		}
	}
	for _, n := range []*corev1.Node{node("", host), node("10.0.0.5", in), node(":50000"), node("h:0"), node("h:http")} {
		if got, err := Endpoint(n, DefaultPort); err == nil {
			t.Errorf("%v %v: accepted as %q", n.Annotations, n.Status.Addresses, got)
		}
	}
}
