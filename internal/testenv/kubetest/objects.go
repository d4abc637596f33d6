package kubetest

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Objects is a Node object and a namespace for tests that need no pods to run: cordons and
// their marks against a bare API server. Anything with pods runs against real kubelets in
// QEMU (e2e), never against a test playing one.
type Objects struct {
	CS       kubernetes.Interface
	Node, NS string
}

// NewObjects creates the node and the namespace.
func NewObjects(t testing.TB, cs kubernetes.Interface, node, ns string) *Objects {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return &Objects{CS: cs, Node: node, NS: ns}
}
