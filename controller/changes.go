package controller

import (
	"fmt"

	"keel/controller/api"
	"keel/controller/plan"
)

// Change is something a pass did or saw that an operator should hear of as a Kubernetes
// Event: a node started, finished or failed; the plan halted, finished, or became invalid.
type Change struct {
	Node    string // "" for the plan itself
	Warning bool
	Reason  string // CamelCase, as Events spell it
	Message string
}

// Changes are the changes from the status prev to next (pure: the reconciler records them).
// A controller that restarts reports nothing twice: each change is a difference between the
// written status and the new one.
func Changes(prev, next api.UpgradePlanStatus) []Change {
	var out []Change
	if next.Target != prev.Target && next.Target != "" {
		// A plan's first target, a spec edit's, or a channel's newer release.
		out = append(out, Change{Reason: "NewTarget", Message: fmt.Sprintf("target %s (%s)", next.Target, next.Image)})
	}
	old := map[string]api.NodeStatus{}
	for _, n := range prev.Nodes {
		old[n.Name] = n
	}
	for _, n := range next.Nodes {
		o, seen := old[n.Name]
		switch {
		case n.UpgradeID != "" && n.UpgradeID != o.UpgradeID && n.Phase == string(plan.Upgrading):
			out = append(out, Change{Node: n.Name, Reason: "UpgradeStarted", Message: fmt.Sprintf("node %s: upgrade %s to %s started (from %s)", n.Name, n.UpgradeID, next.Target, n.Version)})
		case n.UpgradeID != "" && n.UpgradeID != o.UpgradeID && n.Phase == string(plan.Staging):
			out = append(out, Change{Node: n.Name, Reason: "StagingStarted", Message: fmt.Sprintf("node %s: upgrade %s to %s staging (in service)", n.Name, n.UpgradeID, next.Target)})
		case seen && o.Phase != n.Phase && n.Phase == string(plan.Staged):
			out = append(out, Change{Node: n.Name, Reason: "NodeStaged", Message: fmt.Sprintf("node %s: %s staged, waiting for its turn", n.Name, next.Target)})
		case seen && (o.Phase == string(plan.Staged) || o.Phase == string(plan.Staging)) && n.Phase == string(plan.Upgrading) && n.UpgradeID == o.UpgradeID:
			// Activated (staged and activated in one pass: its turn had come).
			out = append(out, Change{Node: n.Name, Reason: "UpgradeStarted", Message: fmt.Sprintf("node %s: staged upgrade %s to %s activated (from %s)", n.Name, n.UpgradeID, next.Target, n.Version)})
		case n.Phase == string(plan.Failed) && (!seen || o.Phase != n.Phase):
			out = append(out, Change{Node: n.Name, Warning: true, Reason: "NodeFailed", Message: fmt.Sprintf("node %s: %s", n.Name, n.Reason)})
		case n.PassedGates && !o.PassedGates && n.UpgradeID != "":
			out = append(out, Change{Node: n.Name, Reason: "NodeUpgraded", Message: fmt.Sprintf("node %s runs %s and passed the health gates", n.Name, n.Version)})
		}
	}
	if next.Phase != prev.Phase || next.Message != prev.Message && next.Phase != "Rolling" && next.Phase != "Waiting" {
		switch next.Phase {
		case "Halted":
			out = append(out, Change{Warning: true, Reason: "PlanHalted", Message: next.Message})
		case "Invalid":
			out = append(out, Change{Warning: true, Reason: "PlanInvalid", Message: next.Message})
		case "Done":
			out = append(out, Change{Reason: "PlanDone", Message: fmt.Sprintf("%d of %d nodes run %s", next.Done, next.Total, next.Target)})
		}
	}
	return out
}
