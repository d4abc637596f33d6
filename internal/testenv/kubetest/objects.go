package kubetest

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Objects creates what a scheduler, kubelet and controller-manager would leave behind, on
// one node in one namespace. There are none of those in the tests.
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

// Pod creates a pod bound to the node, Running and Ready (PDBs protect only those; an unready
// pod may be evicted through a healthy budget).
func (o *Objects) Pod(t testing.TB, name string, labels map[string]string, owner *metav1.OwnerReference) {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.NS, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: o.Node, Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	created, err := o.CS.CoreV1().Pods(o.NS).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Phase = corev1.PodRunning
	created.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := o.CS.CoreV1().Pods(o.NS).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// Kubelet deletes the node's terminating pods, as a kubelet would once their containers stop.
func (o *Objects) Kubelet(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for ctx.Err() == nil {
			l, err := o.CS.CoreV1().Pods(o.NS).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + o.Node})
			if err == nil {
				for _, p := range l.Items {
					if p.DeletionTimestamp != nil {
						zero := int64(0)
						o.CS.CoreV1().Pods(o.NS).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
}

func template(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
}

// DaemonSet creates a DaemonSet for app and returns an owner reference to it.
func (o *Objects) DaemonSet(t testing.TB, app string) *metav1.OwnerReference {
	t.Helper()
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
	ds, err := o.CS.AppsV1().DaemonSets(o.NS).Create(context.Background(), &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: o.NS}, Spec: appsv1.DaemonSetSpec{Selector: sel, Template: template(app)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID, Controller: &yes}
}

// ReplicaSet creates a ReplicaSet for app and returns an owner reference to it.
func (o *Objects) ReplicaSet(t testing.TB, app string) *metav1.OwnerReference {
	t.Helper()
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
	rs, err := o.CS.AppsV1().ReplicaSets(o.NS).Create(context.Background(), &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: o.NS}, Spec: appsv1.ReplicaSetSpec{Selector: sel, Template: template(app)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: &yes}
}

// BlockingPDB creates a PDB for app with minAvailable 1 and the status a controller-manager
// would compute for one healthy pod: no disruption allowed.
func (o *Objects) BlockingPDB(t testing.TB, name, app string) {
	t.Helper()
	ctx := context.Background()
	one := intstr.FromInt32(1)
	pdb, err := o.CS.PolicyV1().PodDisruptionBudgets(o.NS).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.NS},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pdb.Status = policyv1.PodDisruptionBudgetStatus{ObservedGeneration: pdb.Generation, CurrentHealthy: 1, DesiredHealthy: 1, ExpectedPods: 1, DisruptionsAllowed: 0}
	if _, err := o.CS.PolicyV1().PodDisruptionBudgets(o.NS).UpdateStatus(ctx, pdb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// PodNames lists the namespace's pods.
func (o *Objects) PodNames(t testing.TB) []string {
	l, err := o.CS.CoreV1().Pods(o.NS).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range l.Items {
		out = append(out, p.Name)
	}
	return out
}

// NodeCordon reports the node's unschedulable flag and annotations.
func (o *Objects) NodeCordon(t testing.TB) (bool, map[string]string) {
	n, err := o.CS.CoreV1().Nodes().Get(context.Background(), o.Node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n.Spec.Unschedulable, n.Annotations
}
