package kube

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestReadyFor(t *testing.T) {
	node := func(boot string, ready corev1.ConditionStatus) *corev1.Node {
		n := &corev1.Node{}
		n.Status.NodeInfo.BootID = boot
		if ready != "" {
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse},
				{Type: corev1.NodeReady, Status: ready, Reason: "KubeletNotReady", Message: "CNI not ready"}}
		}
		return n
	}
	for _, tc := range []struct {
		n    *corev1.Node
		ok   bool
		want string
	}{
		{node("b2", corev1.ConditionTrue), true, ""},
		{node("b1", corev1.ConditionTrue), false, `from boot "b1"`}, // the last boot's Ready
		{node("", corev1.ConditionTrue), false, `from boot ""`},
		{node("b2", corev1.ConditionFalse), false, "Ready=False: KubeletNotReady CNI not ready"},
		{node("b2", corev1.ConditionUnknown), false, "Ready=Unknown"},
		{node("b2", ""), false, "no Ready condition"},
	} {
		ok, why := ReadyFor(tc.n, "b2")
		if ok != tc.ok || !strings.Contains(why, tc.want) {
			t.Errorf("ReadyFor(%+v) = %v %q, want %v %q", tc.n.Status, ok, why, tc.ok, tc.want)
		}
	}
}
