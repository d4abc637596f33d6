package controller

import (
	"reflect"
	"testing"

	"keel/controller/api"
)

func passedGates(n api.NodeStatus) api.NodeStatus { n.PassedGates = true; return n }

func TestChanges(t *testing.T) {
	st := func(phase, msg string, nodes ...api.NodeStatus) api.UpgradePlanStatus {
		return api.UpgradePlanStatus{Target: "v2", Phase: phase, Message: msg, Nodes: nodes, Total: 3}
	}
	n := func(name, phase, id, reason string) api.NodeStatus {
		return api.NodeStatus{Name: name, Phase: phase, Version: "v1", UpgradeID: id, Reason: reason}
	}
	retarget := func(s api.UpgradePlanStatus, v string) api.UpgradePlanStatus { s.Target = v; return s }
	reasons := func(cs []Change) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Node+":"+c.Reason)
		}
		return out
	}
	for _, c := range []struct {
		name       string
		prev, next api.UpgradePlanStatus
		want       []string
	}{
		{"started", st("Rolling", "", n("a", "pending", "", "")), st("Rolling", "", n("a", "upgrading", "u1", "")), []string{"a:UpgradeStarted"}},
		{"staging", st("Rolling", "", n("a", "pending", "", "")), st("Rolling", "", n("a", "staging", "u1", "")), []string{"a:StagingStarted"}},
		{"staged", st("Rolling", "", n("a", "staging", "u1", "")), st("Rolling", "", n("a", "staged", "u1", "")), []string{"a:NodeStaged"}},
		{"activated", st("Rolling", "", n("a", "staged", "u1", "")), st("Rolling", "", n("a", "upgrading", "u1", "")), []string{"a:UpgradeStarted"}},
		{"still running", st("Rolling", "", n("a", "upgrading", "u1", "")), st("Rolling", "", n("a", "upgrading", "u1", "")), nil},
		{"waiting for health is not done", st("Rolling", "", n("a", "upgrading", "u1", "")), st("Rolling", "", n("a", "upgraded", "u1", "waiting for health: pods")), nil},
		{"upgraded", st("Rolling", "", n("a", "upgraded", "u1", "waiting for health: pods")), st("Rolling", "", passedGates(n("a", "upgraded", "u1", ""))), []string{"a:NodeUpgraded"}},
		{"unhealthy again, then healthy: reported once", st("Rolling", "", passedGates(n("a", "upgraded", "u1", "waiting for health: pods"))), st("Rolling", "", passedGates(n("a", "upgraded", "u1", ""))), nil},
		{"staged and activated in one pass", st("Rolling", "", n("a", "staging", "u1", "")), st("Rolling", "", n("a", "upgrading", "u1", "")), []string{"a:UpgradeStarted"}},
		{"already on target: not ours", st("", ""), st("Rolling", "", n("a", "upgraded", "", "")), nil},
		{"failed and halted", st("Rolling", "", n("a", "upgrading", "u1", "")), st("Halted", "node a failed", n("a", "failed", "u1", "rolled-back: gate")), []string{"a:NodeFailed", ":PlanHalted"}},
		{"halted again after restart: nothing", st("Halted", "node a failed", n("a", "failed", "u1", "x")), st("Halted", "node a failed", n("a", "failed", "u1", "x")), nil},
		{"done", st("Rolling", "", passedGates(n("a", "upgraded", "u1", ""))), st("Done", "", passedGates(n("a", "upgraded", "u1", ""))), []string{":PlanDone"}},
		{"invalid", st("Rolling", ""), st("Invalid", "spec.image"), []string{":PlanInvalid"}},
		{"waiting message changes: no event", st("Waiting", "outside"), st("Waiting", "a node is out"), nil},
		{"the first target", api.UpgradePlanStatus{}, st("Rolling", ""), []string{":NewTarget"}},
		{"a channel's newer release", st("Done", ""), retarget(st("Rolling", ""), "v3"), []string{":NewTarget"}},
		{"a channel still unresolved", api.UpgradePlanStatus{}, retarget(st("Waiting", "channel r: no signed release"), ""), nil},
	} {
		if got := reasons(Changes(c.prev, c.next)); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
