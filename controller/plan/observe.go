package plan

import (
	"fmt"
	"strings"

	"keel/netapi"
	"keel/upgrade"
)

// Observe is a node's phase in a plan that installs image, whose version is target, from what
// its endpoint reports (GET /v1/status): the node's META record is the truth, so a controller
// that restarts mid-rollout reads the same phases again, and never upgrades a node twice.
// requested is the id of the upgrade the plan started on this node ("" for none): only that
// upgrade's failure fails the node (an older failure, toward another plan, does not halt this
// one; nor does a staged upgrade's discard). Healthy is left false: the caller runs the gates.
func Observe(name string, controlPlane bool, st netapi.Status, image, target, requested string) Node {
	n := Node{Name: name, ControlPlane: controlPlane, Phase: Pending}
	u := st.Upgrade
	onTarget := st.Version == target || atOrAhead(st.Version, target)
	switch {
	case !onTarget && u.Staging():
		// In service: pulling or writing its next slot, or waiting with it written. Ours:
		// staged from this plan's image (a version alone could name another build). Any other
		// (someone else's, or this plan's for an earlier target) keeps the node busy
		// (Blocked), in service.
		switch {
		case u.Image != image:
			n.Blocked = true
			n.Reason = fmt.Sprintf("upgrade %s of %s is %s (not this plan's: discard it to go on)", u.ID, u.Image, u.State)
		case u.State != upgrade.Staged:
			n.Phase = Staging
		default:
			n.Phase = Staged
		}
	case u.OutOfService():
		n.Phase = Upgrading // whoever asked: the node is out of service
	case onTarget:
		n.Phase = Upgraded // a node already past the target is not taken back
	case u != nil && u.State == upgrade.Aborted && u.Stage && strings.HasPrefix(u.Reason, "discarded:"):
		// A staged upgrade discarded (by this plan for an earlier target, by an operator, by
		// a boot of another slot): not a failure; the node is staged again.
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
