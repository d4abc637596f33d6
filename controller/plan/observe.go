package plan

import (
	"fmt"

	"keel/netapi"
	"keel/upgrade"
)

// Observe is a node's phase in a plan that aims at version target, from what its endpoint
// reports (GET /v1/status): the node's META record is the truth, so a controller that
// restarts mid-rollout reads the same phases again, and never upgrades a node twice.
// requested is the id of the upgrade the plan started on this node ("" for none): only that
// upgrade's failure fails the node (an older failure, toward another plan, does not halt this
// one). Healthy is left false: the caller runs the gates.
func Observe(name string, controlPlane bool, st netapi.Status, target, requested string) Node {
	n := Node{Name: name, ControlPlane: controlPlane, Phase: Pending}
	u := st.Upgrade
	switch {
	case u != nil && (u.State == upgrade.Staging || u.State == upgrade.Staged || u.Stage && u.State == upgrade.Pulling):
		// In service: pulling or writing its next slot, or waiting with it written.
		c, ok := upgrade.CompareVersions(u.ToVersion, target)
		ours := u.ToVersion == target || ok && c == 0 || requested != "" && u.ID == requested
		switch {
		case !ours:
			n.Reason = fmt.Sprintf("upgrade %s to %s is %s (not this plan's: discard it to go on)", u.ID, u.ToVersion, u.State)
		case u.State != upgrade.Staged:
			n.Phase = Staging
		default:
			n.Phase = Staged
		}
	case u != nil && !u.State.Terminal():
		n.Phase = Upgrading // whoever asked: the node is out of service
	case st.Version == target || atOrAhead(st.Version, target):
		n.Phase = Upgraded // a node already past the target is not taken back
	case u != nil && requested != "" && u.ID == requested && (u.State == upgrade.Aborted || u.State == upgrade.RolledBack):
		n.Phase, n.Reason = Failed, string(u.State)+": "+u.Reason
	}
	return n
}

// atOrAhead reports whether version v orders with or after target (semantic versions only:
// the tag v1.2.0 names the version 1.2.0).
func atOrAhead(v, target string) bool {
	c, ok := upgrade.CompareVersions(v, target)
	return ok && c >= 0
}
