package controller

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"keel/netapi"
	"keel/upgrade"
)

func TestGate(t *testing.T) {
	node := func(boot string, ready corev1.ConditionStatus, cordoned bool) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w1"}, Spec: corev1.NodeSpec{Unschedulable: cordoned}}
		n.Status.NodeInfo.BootID = boot
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready}}
		return n
	}
	pod := func(name string, phase corev1.PodPhase, ready bool) corev1.Pod {
		p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.PodSpec{NodeName: "w1"}}
		p.Status.Phase = phase
		st := corev1.ConditionFalse
		if ready {
			st = corev1.ConditionTrue
		}
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}
		return p
	}
	deleting := pod("old", corev1.PodRunning, false)
	now := metav1.Now()
	deleting.DeletionTimestamp = &now
	elsewhere := pod("other", corev1.PodRunning, false)
	elsewhere.Spec.NodeName = "w2"
	for _, c := range []struct {
		name string
		node *corev1.Node
		pods []corev1.Pod
		ok   bool
		why  string
	}{
		{"healthy", node("b2", corev1.ConditionTrue, false), []corev1.Pod{pod("web", corev1.PodRunning, true), pod("job", corev1.PodSucceeded, false), deleting, elsewhere}, true, ""},
		{"Ready from the last boot", node("b1", corev1.ConditionTrue, false), nil, false, "not this boot's kubelet"},
		{"not Ready", node("b2", corev1.ConditionFalse, false), nil, false, "node not Ready"},
		{"cordoned by someone else: not ours to wait for", node("b2", corev1.ConditionTrue, true), nil, true, ""},
		{"a pod not Ready", node("b2", corev1.ConditionTrue, false), []corev1.Pod{pod("web", corev1.PodRunning, true), pod("db", corev1.PodRunning, false)}, false, "pods not Ready: default/db"},
		{"a pod pending", node("b2", corev1.ConditionTrue, false), []corev1.Pod{pod("ds", corev1.PodPending, false)}, false, "default/ds"},
	} {
		ok, why := Gate(c.node, netapi.Status{BootID: "b2"}, c.pods)
		if ok != c.ok || !strings.Contains(why, c.why) {
			t.Errorf("%s: %v %q, want %v %q", c.name, ok, why, c.ok, c.why)
		}
	}
	var many []corev1.Pod
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		many = append(many, pod(n, corev1.PodRunning, false))
	}
	if _, why := Gate(node("b2", corev1.ConditionTrue, false), netapi.Status{BootID: "b2"}, many); !strings.HasSuffix(why, "default/e, and 2 more") {
		t.Errorf("many: %q", why)
	}
	owed := netapi.Status{BootID: "b2", Upgrade: &upgrade.Upgrade{State: upgrade.Done, Uncordon: true}}
	if ok, why := Gate(node("b2", corev1.ConditionTrue, true), owed, nil); ok || !strings.Contains(why, "cordon is not lifted") {
		t.Errorf("our cordon still owed: %v %q", ok, why)
	}
}

func TestHTTPCheck(t *testing.T) {
	code := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }))
	defer srv.Close()
	ctx := context.Background()
	if ok, why := HTTPCheck(ctx, srv.Client(), srv.URL); !ok {
		t.Errorf("200: %s", why)
	}
	code = http.StatusServiceUnavailable
	if ok, why := HTTPCheck(ctx, srv.Client(), srv.URL); ok || !strings.Contains(why, "503") {
		t.Errorf("503: %v %s", ok, why)
	}
	if ok, _ := HTTPCheck(ctx, srv.Client(), "http://127.0.0.1:1/"); ok {
		t.Error("nothing listening: healthy")
	}
}
