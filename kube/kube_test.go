package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"keel/kubetest"
)

// One API server for the package's tests (started in TestMain); each test uses its own node
// and namespace (deleted namespaces stay Terminating without a controller-manager).
var api *kubetest.APIServer

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		panic(err)
	}
	t0 := time.Now()
	api, err = kubetest.Run(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube tests:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "kube tests: etcd and kube-apiserver ready in %.1fs\n", time.Since(t0).Seconds())
	code := m.Run()
	api.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

type env struct {
	cs   kubernetes.Interface
	node string
	ns   string
	c    *Client
}

func setup(t *testing.T, name string) *env {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(api.Config)
	ctx := context.Background()
	e := &env{cs: cs, node: "node-" + name, ns: "ns-" + name}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: e.node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := New(api.Config, e.node, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	return e
}

// pod creates a Running pod bound to the node (as the scheduler and kubelet would).
func (e *env) pod(t *testing.T, name string, labels map[string]string, owner *metav1.OwnerReference) {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: e.node, Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	created, err := e.cs.CoreV1().Pods(e.ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// PDBs protect only Running, Ready pods (an unready one may be evicted through a healthy
	// budget): mark it so, as a kubelet would.
	created.Status.Phase = corev1.PodRunning
	created.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := e.cs.CoreV1().Pods(e.ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// kubelet deletes pods of the node once they are terminating, as a kubelet would after their
// containers stop. There is no kubelet in these tests.
func (e *env) kubelet(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for ctx.Err() == nil {
			l, err := e.cs.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + e.node})
			if err == nil {
				for _, p := range l.Items {
					if p.DeletionTimestamp != nil {
						zero := int64(0)
						e.cs.CoreV1().Pods(e.ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
}

func (e *env) daemonSetOwner(t *testing.T) *metav1.OwnerReference {
	t.Helper()
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "ds", Namespace: e.ns},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "ds"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "ds"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}},
		},
	}
	created, err := e.cs.AppsV1().DaemonSets(e.ns).Create(context.Background(), ds, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: created.Name, UID: created.UID, Controller: &yes}
}

func (e *env) rsOwner(t *testing.T) *metav1.OwnerReference {
	t.Helper()
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "rs", Namespace: e.ns},
		Spec: appsv1.ReplicaSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}},
		},
	}
	created, err := e.cs.AppsV1().ReplicaSets(e.ns).Create(context.Background(), rs, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: created.Name, UID: created.UID, Controller: &yes}
}

func (e *env) names(t *testing.T) []string {
	l, err := e.cs.CoreV1().Pods(e.ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range l.Items {
		out = append(out, p.Name)
	}
	return out
}

func TestCordonDrainUncordon(t *testing.T) {
	e := setup(t, "drain")
	e.kubelet(t)
	rs := e.rsOwner(t)
	e.pod(t, "web-1", map[string]string{"app": "web"}, rs)
	e.pod(t, "web-2", map[string]string{"app": "web"}, rs)
	e.pod(t, "ds-1", map[string]string{"app": "ds"}, e.daemonSetOwner(t))
	ctx := context.Background()

	ours, err := e.c.Cordon(ctx)
	if err != nil || !ours {
		t.Fatalf("cordon: ours %v, %v", ours, err)
	}
	var progress []Progress
	var mu sync.Mutex
	err = e.c.Drain(ctx, DrainOptions{Timeout: 60 * time.Second, Progress: func(p Progress) { mu.Lock(); progress = append(progress, p); mu.Unlock() }})
	if err != nil {
		t.Fatalf("drain: %v", err)
	}
	if got := strings.Join(e.names(t), ","); got != "ds-1" {
		t.Errorf("pods left after drain: %s, want only the DaemonSet pod", got)
	}
	if len(progress) < 3 || progress[0].Left != 2 || progress[len(progress)-1].Left != 0 {
		t.Errorf("progress = %+v", progress)
	}
	if err := e.c.Uncordon(ctx); err != nil {
		t.Fatal(err)
	}
	if c, _, _ := e.c.Cordoned(ctx); c {
		t.Error("still cordoned after our uncordon")
	}
}

func TestCordonedBySomeoneElseStaysCordoned(t *testing.T) {
	e := setup(t, "theirs")
	ctx := context.Background()
	n, _ := e.cs.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
	n.Spec.Unschedulable = true // an operator's cordon
	if _, err := e.cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ours, err := e.c.Cordon(ctx)
	if err != nil || ours {
		t.Fatalf("cordon of a cordoned node: ours %v, %v", ours, err)
	}
	if err := e.c.Uncordon(ctx); err != nil {
		t.Fatal(err)
	}
	if c, _, _ := e.c.Cordoned(ctx); !c {
		t.Error("uncordoned a cordon that was not ours")
	}
}

// TestDrainBlockedByPDB: a budget that allows no disruption blocks the eviction; the drain
// gives up at its timeout (not client-go's retry horizon) and names the budget.
func TestDrainBlockedByPDB(t *testing.T) {
	e := setup(t, "pdb")
	e.kubelet(t)
	ctx := context.Background()
	e.pod(t, "db-0", map[string]string{"app": "db"}, e.rsOwner(t))
	one := intstr.FromInt32(1)
	pdb, err := e.cs.PolicyV1().PodDisruptionBudgets(e.ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "db-pdb", Namespace: e.ns},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// No controller-manager computes PDB status: set what it would (1 healthy, 1 needed).
	pdb.Status = policyv1.PodDisruptionBudgetStatus{ObservedGeneration: pdb.Generation, CurrentHealthy: 1, DesiredHealthy: 1, ExpectedPods: 1, DisruptionsAllowed: 0}
	if _, err := e.cs.PolicyV1().PodDisruptionBudgets(e.ns).UpdateStatus(ctx, pdb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.c.Cordon(ctx)
	t0 := time.Now()
	err = e.c.Drain(ctx, DrainOptions{Timeout: 8 * time.Second})
	took := time.Since(t0)
	if !errors.Is(err, ErrDrainBlocked) || !strings.Contains(err.Error(), e.ns+"/db-pdb") {
		t.Fatalf("err = %v, want ErrDrainBlocked naming %s/db-pdb", err, e.ns)
	}
	if took > 30*time.Second {
		t.Errorf("drain gave up after %s with an 8 s timeout", took)
	}
	if got := strings.Join(e.names(t), ","); got != "db-0" {
		t.Errorf("pods = %s", got)
	}
	if err := e.c.Uncordon(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestUnreachableAPIServer(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	c, err := New(&rest.Config{Host: "https://" + addr, Timeout: 2 * time.Second, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}, "n", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Cordon(context.Background())
	if err == nil || !IsUnreachable(err) {
		t.Fatalf("cordon against a closed port: %v (unreachable %v)", err, IsUnreachable(err))
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error does not say why: %v", err)
	}
}

func TestRESTConfigFromKubeconfig(t *testing.T) {
	e := setup(t, "kubeconfig")
	cfg, err := RESTConfig(api.Kubeconfig("127.0.0.1"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg, e.node, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cordon(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := RESTConfig([]byte("not: [a kubeconfig"), time.Second); err == nil {
		t.Error("garbage kubeconfig accepted")
	}
}
