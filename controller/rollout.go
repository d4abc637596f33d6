// Package controller is the cluster upgrade controller's logic: one reconcile pass of an
// UpgradePlan over the nodes it selects (Pass). It reads each node's own record through the
// node's endpoint, decides with controller/plan, starts the upgrades decided and reports the
// plan's status. The Kubernetes side (watching plans and nodes, leader election, the status
// write) and the HTTP client of the nodes' endpoints are adapters around it.
package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"keel/controller/api"
	"keel/controller/plan"
	"keel/netapi"
	"keel/netapi/client"
)

// Nodes reaches the nodes' keel endpoints.
type Nodes interface {
	Status(ctx context.Context, node string) (netapi.Status, error)
	Upgrade(ctx context.Context, node string, req netapi.UpgradeRequest) (id string, err error)
	// Activate goes on with a node's staged upgrade; Cancel discards it.
	Activate(ctx context.Context, node, id string) (string, error)
	Cancel(ctx context.Context, node string) error
}

// Health runs the gates between nodes: the Kubernetes node Ready, its pods Ready again, the
// plan's HTTP check.
type Health interface {
	// Healthy is given the node's own status (its boot id tells this boot's kubelet from
	// the last one's).
	Healthy(ctx context.Context, node string, st netapi.Status) (bool, string)
}

// Node is a node the plan selects (from its Kubernetes Node object).
type Node struct {
	Name         string
	ControlPlane bool
}

// Target is what the plan installs: the image and the version it carries.
type Target struct {
	Image   string
	Version string
}

// Plan is an UpgradePlan as a pass reads it.
type Plan struct {
	Spec       api.UpgradePlanSpec
	Generation int64 // metadata.generation: a spec edit makes a new one
	Target     Target
}

// statusParallel bounds the status reads in flight: a node that is rebooting costs a
// connection timeout, and a thousand of them in a row would stall a pass for minutes.
const statusParallel = 64

type nodeStatus struct {
	st  netapi.Status
	err error
}

// statusOf reads every node's status, statusParallel at a time, in nodes' order.
func statusOf(ctx context.Context, fleet Nodes, nodes []Node) []nodeStatus {
	out := make([]nodeStatus, len(nodes))
	sem := make(chan struct{}, statusParallel)
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			out[i].st, out[i].err = fleet.Status(ctx, n.Name)
		}()
	}
	wg.Wait()
	return out
}

// Pass is one reconcile of a plan: it returns the plan's new status. prev is the status the
// last pass wrote: its node entries carry the upgrade ids this plan started, which is how a
// restarted controller knows its own upgrades from older ones. A failed node halts the plan
// until the spec changes or a channel's newer release becomes the target: then its failed
// upgrade is forgotten (it is someone else's failure now), and the node may be tried again.
func Pass(ctx context.Context, p Plan, nodes []Node, prev api.UpgradePlanStatus, fleet Nodes, health Health, now time.Time) api.UpgradePlanStatus {
	spec, t := p.Spec, p.Target
	st := api.UpgradePlanStatus{Target: t.Version, Image: t.Image, Total: len(nodes), ObservedGeneration: p.Generation}
	if prev.Target == t.Version {
		// The same rollout (a resume after a halt is one too); a new target starts a new one.
		st.StartedAt, st.FinishedAt = prev.StartedAt, prev.FinishedAt
	}
	rules, err := spec.Rules()
	if err != nil {
		// Keep what the plan knows of its nodes (their upgrade ids): a fixed spec resumes
		// with them.
		st.Phase, st.Message, st.Nodes, st.Done = "Invalid", err.Error(), prev.Nodes, prev.Done
		return st
	}
	// A new rollout — the spec edited, or a channel's newer release — forgets the failures of
	// the last: a halted plan resumes.
	newRollout := prev.ObservedGeneration != p.Generation || prev.Target != "" && prev.Target != t.Version
	refused := map[string]string{} // refusals stick until the spec changes
	for _, n := range prev.Nodes {
		if !newRollout && n.Phase == string(plan.Failed) && n.UpgradeID == "" {
			refused[n.Name] = n.Reason
		}
	}
	requested, wasCP, passed := map[string]string{}, map[string]bool{}, map[string]string{}
	for _, n := range prev.Nodes {
		wasCP[n.Name] = n.ControlPlane
		if n.PassedGates {
			passed[n.Name] = n.UpgradeID
		}
		if n.UpgradeID != "" && !(n.Phase == string(plan.Failed) && newRollout) {
			requested[n.Name] = n.UpgradeID
		}
	}
	var seen []plan.Node
	byName := map[string]*api.NodeStatus{}
	statuses := statusOf(ctx, fleet, nodes)
	for i, n := range nodes {
		ns := api.NodeStatus{Name: n.Name, UpgradeID: requested[n.Name], ControlPlane: n.ControlPlane}
		s, err := statuses[i].st, statuses[i].err
		var pn plan.Node
		if err != nil {
			// A node that does not answer may be rebooting into its new slot: out of service,
			// and nothing more starts until it answers again. It is a control-plane node if it
			// said so when it last answered.
			ns.ControlPlane = ns.ControlPlane || wasCP[n.Name]
			pn = plan.Node{Name: n.Name, ControlPlane: ns.ControlPlane, Phase: plan.Upgrading}
			ns.Reason = "unreachable: " + err.Error()
			// It passed its gates on this upgrade before: still counted as done (a slow
			// answer is not a lost upgrade), though out of service for the decisions.
			if id, ok := passed[n.Name]; ok && id == ns.UpgradeID {
				ns.PassedGates = true
			}
		} else {
			if u := s.Upgrade; ns.UpgradeID == "" && u != nil && !u.State.Terminal() && u.Image == t.Image {
				// Our image, running, but its id never reached the status (a request that
				// timed out after the node took it, a controller that crashed before writing
				// the status): it is this plan's upgrade, and its failure halts the plan.
				ns.UpgradeID = u.ID
			}
			// The node says whether it runs an etcd member: its own word counts as much as
			// a label on its Node object.
			ns.ControlPlane = ns.ControlPlane || s.ControlPlane
			pn = plan.Observe(n.Name, ns.ControlPlane, s, t.Image, t.Version, ns.UpgradeID)
			if u := s.Upgrade; u != nil && u.Stage && u.ID == ns.UpgradeID && pn.Blocked && !spec.Paused {
				// Staged by this plan for an earlier target: discard it, so the node can be
				// staged for this one (its end is ours, not a failure).
				if err := fleet.Cancel(ctx, n.Name); err != nil {
					pn.Reason = fmt.Sprintf("discarding upgrade %s to %s (an earlier target): %v", u.ID, u.ToVersion, err)
				} else {
					pn.Reason = fmt.Sprintf("discarded upgrade %s to %s (an earlier target)", u.ID, u.ToVersion)
					ns.UpgradeID = ""
				}
			}
			if why, ok := refused[n.Name]; ok && pn.Phase == plan.Pending {
				pn.Phase, pn.Reason = plan.Failed, why
			}
			ns.Version = s.Version
			if pn.Phase == plan.Upgraded {
				var why string
				pn.Healthy, why = health.Healthy(ctx, n.Name, s)
				if !pn.Healthy {
					ns.Reason = "waiting for health: " + why
				}
			}
			if pn.Reason != "" {
				ns.Reason = pn.Reason
			}
		}
		ns.Phase = string(pn.Phase)
		if id, ok := passed[n.Name]; pn.Phase == plan.Upgraded && (pn.Healthy || ok && id == ns.UpgradeID) {
			ns.PassedGates = true
		}
		// Done counts the nodes that run the target and passed its gates once: a node whose
		// pods are briefly not Ready while another node drains, or that answers too slowly,
		// stays counted (its reason says what it waits for), so the count does not fall.
		if ns.PassedGates {
			st.Done++
		}
		seen = append(seen, pn)
		st.Nodes = append(st.Nodes, ns)
	}
	for i := range st.Nodes {
		byName[st.Nodes[i].Name] = &st.Nodes[i]
	}
	d, err := plan.Decide(rules, seen, now)
	switch {
	case err != nil:
		st.Phase, st.Message = "Invalid", err.Error()
		return st
	case d.Done:
		st.Phase = "Done"
		if st.StartedAt != nil && st.FinishedAt == nil {
			st.FinishedAt = &metav1.Time{Time: now}
		}
		return st
	case d.Halted != "":
		st.Phase, st.Message = "Halted", d.Halted
		return st
	}
	st.Phase, st.Message = "Rolling", d.Waiting
	started := 0
	req := netapi.UpgradeRequest{Image: t.Image, Preserve: spec.PreserveOrDefault(), DrainTimeoutS: spec.DrainTimeoutSeconds}
	type call struct {
		name  string
		stage bool
	}
	var calls []call
	for _, name := range d.Start {
		calls = append(calls, call{name: name})
	}
	for _, name := range d.Stage {
		calls = append(calls, call{name: name, stage: true})
	}
	for _, c := range calls {
		ns := byName[c.name]
		var id string
		var err error
		phase := plan.Upgrading
		switch {
		case c.stage:
			r := req
			r.Stage = true
			id, err = fleet.Upgrade(ctx, c.name, r)
			phase = plan.Staging
		case ns.Phase == string(plan.Staged):
			id, err = fleet.Activate(ctx, c.name, ns.UpgradeID)
		default:
			id, err = fleet.Upgrade(ctx, c.name, req)
		}
		var ne *client.NodeError
		switch {
		case errors.As(err, &ne) && ne.Code == "stale_staged":
			// Staged for this target, but the node will never activate it (a rollback
			// floor raised, its signing key expired since): discard it, so that the next
			// pass stages it again, and that pull passes or fails the node with its reason.
			if cerr := fleet.Cancel(ctx, c.name); cerr != nil {
				ns.Reason = fmt.Sprintf("activation refused (%v); discarding it: %v", err, cerr)
			} else {
				ns.Reason, ns.UpgradeID = fmt.Sprintf("discarded upgrade %s, which the node refuses to activate: %v", ns.UpgradeID, err), ""
			}
			st.Message = fmt.Sprintf("%s: %s", c.name, ns.Reason)
			continue
		case errors.As(err, &ne) && ne.Status != http.StatusConflict && ne.Status != http.StatusPreconditionFailed && ne.Status < 500:
			// Refused for good (a bad request, a forbidden certificate): the node fails
			// and the plan halts, as for a failed upgrade.
			ns.Phase, ns.Reason = string(plan.Failed), "upgrade refused: "+err.Error()
			st.Phase, st.Message = "Halted", fmt.Sprintf("node %s failed: %s", c.name, ns.Reason)
			return st
		case err != nil:
			// Busy (an upgrade of someone else's), unreachable, or a control-plane node
			// whose cluster cannot spare its member right now (412: a member is down; it
			// may come back): pending, tried again next pass.
			ns.Reason = "upgrade not started: " + err.Error()
			st.Message = fmt.Sprintf("%s: %v", c.name, err)
			continue
		}
		if id != "" {
			ns.UpgradeID = id
		}
		ns.Phase, ns.Reason = string(phase), ""
		if !c.stage {
			started++
		}
		if st.StartedAt == nil || st.FinishedAt != nil {
			// The first node of this rollout, or a node that joined after it finished.
			st.StartedAt, st.FinishedAt = &metav1.Time{Time: now}, nil
		}
	}
	if started == 0 && d.Waiting != "" {
		st.Phase = "Waiting"
	}
	return st
}
