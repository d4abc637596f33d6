// Package reconciler runs the cluster controller against the API server: it watches
// UpgradePlans and Nodes (controller-runtime), runs controller.Pass for a plan, writes the
// plan's status, records its changes as Events and keeps the metrics. Leader election, the
// caches and the metrics endpoint are the manager's (cmd/keel-controller wires them).
package reconciler

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"keel/controller"
	"keel/controller/api"
	"keel/controller/channel"
)

// Reconciler reconciles UpgradePlans.
type Reconciler struct {
	// Client reads from the manager's caches and writes plans' status.
	Client client.Client
	// Plans reads a plan as the API server has it (the manager's API reader), not from the
	// cache: the pass builds on the status it wrote last (the upgrade ids it started), and a
	// cache a write behind would start a node twice or report a change twice. nil: Client.
	Plans client.Reader
	// Nodes reaches the nodes' keel endpoints (controller.Client in production).
	Nodes controller.Nodes
	// Streams follows the event streams of the nodes in flight (nil: polling only).
	Streams Streams
	// HTTP runs plans' health checks.
	HTTP *http.Client
	// Events records the plans' changes (nil: none).
	Events events.EventRecorder
	// Metrics is kept up to date (nil: none).
	Metrics *Metrics
	Log     *slog.Logger
	// Poll is how often a plan that is rolling is passed again (a node's progress is read
	// from its endpoint, which sends no watch events): default 5 s.
	Poll time.Duration
	// Now is the clock (windows, times in the status): default time.Now.
	Now func() time.Time
	// Channels resolves channel plans (nil: they are invalid).
	Channels *channel.Resolver

	follow *followers
	notes  sync.Map // plan name → the last channel note logged
}

// noteOnce logs a plan's channel note when it changes (a pass runs every few seconds).
func (r *Reconciler) noteOnce(plan, note string) {
	if old, _ := r.notes.Load(plan); old == note || old == nil && note == "" {
		return
	}
	r.notes.Store(plan, note)
	if note != "" {
		r.Log.Warn("channel", "plan", plan, "note", note)
	}
}

// podNodeField indexes pods by node for the health gate.
const podNodeField = "spec.nodeName"

// SetupWithManager registers the reconciler: plans by spec change (a status write of our
// own is not a reason to pass again), nodes by arrival, departure and label change (a node
// joining a plan's selection).
func (r *Reconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &corev1.Pod{}, podNodeField, func(o client.Object) []string {
		if p := o.(*corev1.Pod); p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("index pods by node: %w", err)
	}
	allPlans := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []ctrl.Request {
		var pl api.UpgradePlanList
		if err := r.Client.List(ctx, &pl); err != nil {
			r.Log.Error("list upgrade plans", "err", err)
			return nil
		}
		reqs := make([]ctrl.Request, 0, len(pl.Items))
		for _, p := range pl.Items {
			reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&p)})
		}
		return reqs
	})
	b := ctrl.NewControllerManagedBy(mgr).
		Named("upgradeplan").
		For(&api.UpgradePlan{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Node{}, allPlans, builder.WithPredicates(predicate.LabelChangedPredicate{}))
	if r.Streams != nil {
		r.follow = newFollowers(ctx, r.Streams, time.Second)
		b = b.WatchesRawSource(source.Channel(r.follow.wake, &handler.EnqueueRequestForObject{}))
	}
	return b.Complete(r)
}

// Reconcile passes one plan and writes its status. Events and metrics follow a status
// that was written: a write that loses to a spec edit is passed again, and its changes are
// reported once.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var p api.UpgradePlan
	plans := r.Plans
	if plans == nil {
		plans = r.Client
	}
	if err := plans.Get(ctx, req.NamespacedName, &p); err != nil {
		if client.IgnoreNotFound(err) == nil {
			r.Metrics.forget(req.Name)
			gone := &api.UpgradePlan{}
			gone.Name = req.Name
			r.follow.sync(gone, api.UpgradePlanStatus{})
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	now := r.now()
	st := r.pass(ctx, &p, now)
	prev := p.Status
	if !reflect.DeepEqual(prev, st) {
		p.Status = st
		if err := r.Client.Status().Update(ctx, &p); err != nil {
			return ctrl.Result{}, fmt.Errorf("write the status of plan %s: %w", p.Name, err)
		}
	}
	r.follow.sync(&p, st)
	for _, c := range controller.Changes(prev, st) {
		r.record(&p, c)
	}
	r.Metrics.observe(p.Name, prev, st, now)
	if prev.Phase != st.Phase {
		r.Log.Info("upgrade plan", "plan", p.Name, "phase", st.Phase, "done", st.Done, "total", st.Total, "message", st.Message)
	}
	switch {
	case st.Phase == "Rolling" || st.Phase == "Waiting":
		return ctrl.Result{RequeueAfter: r.poll()}, nil
	case p.Spec.Channel != "" && r.Channels != nil:
		// Done, halted or invalid (the keys may be the problem), a channel plan looks again.
		return ctrl.Result{RequeueAfter: r.Channels.Every()}, nil
	}
	// Halted and Invalid wait for a spec edit, Done for a node to join: both are watched.
	return ctrl.Result{}, nil
}

// pass is the plan's new status.
func (r *Reconciler) pass(ctx context.Context, p *api.UpgradePlan, now time.Time) api.UpgradePlanStatus {
	invalid := func(err error) api.UpgradePlanStatus {
		st := p.Status
		st.Phase, st.Message, st.ObservedGeneration = "Invalid", err.Error(), p.Generation
		return st
	}
	nodes, archs, err := r.nodes(ctx, p.Spec.NodeSelector)
	if err != nil {
		return invalid(err)
	}
	var t controller.Target
	if p.Spec.Channel != "" {
		var note string
		var wait error
		if t, note, wait, err = r.channelTarget(ctx, p, archs); err != nil {
			return invalid(err)
		}
		r.noteOnce(p.Name, note)
		if wait != nil {
			// The status stays the last spec's (its generation too): the first pass with a
			// target is a new rollout.
			st := p.Status
			st.Phase, st.Message = "Waiting", wait.Error()
			return st
		}
	} else if t, err = controller.TargetOf(p.Spec.Image); err != nil {
		return invalid(fmt.Errorf("%w: %w", api.ErrInvalid, err))
	}
	h := cachedHealth{c: r.Client, http: r.HTTP, check: p.Spec.HealthCheck}
	return controller.Pass(ctx, controller.Plan{Spec: p.Spec, Generation: p.Generation, Target: t}, nodes, p.Status, r.Nodes, h, now)
}

// nodes are the keel nodes the selector picks, and their architectures (kubernetes.io/arch;
// the controller's own for a node without the label).
func (r *Reconciler) nodes(ctx context.Context, sel map[string]string) ([]controller.Node, []string, error) {
	s, err := labels.ValidatedSelectorFromSet(sel)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: spec.nodeSelector: %w", api.ErrInvalid, err)
	}
	keel, err := labels.NewRequirement(LabelKeelNode, selection.Exists, nil)
	if err != nil {
		return nil, nil, err
	}
	var nl corev1.NodeList
	if err := r.Client.List(ctx, &nl, client.MatchingLabelsSelector{Selector: s.Add(*keel)}); err != nil {
		return nil, nil, fmt.Errorf("list nodes: %w", err)
	}
	out := make([]controller.Node, 0, len(nl.Items))
	archs := map[string]bool{}
	for _, n := range nl.Items {
		_, cp := n.Labels[LabelControlPlane]
		out = append(out, controller.Node{Name: n.Name, ControlPlane: cp})
		a := n.Labels[corev1.LabelArchStable]
		if a == "" {
			a = runtime.GOARCH
		}
		archs[a] = true
	}
	if len(archs) == 0 { // no nodes (yet): the plan still shows its target
		archs[runtime.GOARCH] = true
	}
	return out, slices.Sorted(maps.Keys(archs)), nil
}

// record makes a change an Event: a node's regards its Node (kubectl describe node shows
// it; the API server's spam filter counts per object, so a thousand nodes' events all land),
// with the plan as the related object; the plan's own regard the plan.
func (r *Reconciler) record(p *api.UpgradePlan, c controller.Change) {
	if r.Events == nil {
		return
	}
	typ := corev1.EventTypeNormal
	if c.Warning {
		typ = corev1.EventTypeWarning
	}
	if c.Node == "" {
		r.Events.Eventf(p, nil, typ, c.Reason, "Upgrade", "%s", c.Message)
		return
	}
	var n corev1.Node
	if err := r.Client.Get(context.Background(), client.ObjectKey{Name: c.Node}, &n); err != nil {
		n.Name = c.Node // gone meanwhile: the reference still names it
	}
	n.Kind, n.APIVersion = "Node", "v1"
	r.Events.Eventf(&n, p, typ, c.Reason, "Upgrade", "%s", c.Message)
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Reconciler) poll() time.Duration {
	if r.Poll > 0 {
		return r.Poll
	}
	return 5 * time.Second
}

// Addr resolves a node's endpoint from the cached Node (controller.Client.Addr).
func Addr(c client.Reader, port int) func(string) (string, error) {
	return func(name string) (string, error) {
		var n corev1.Node
		if err := c.Get(context.Background(), client.ObjectKey{Name: name}, &n); err != nil {
			return "", err
		}
		return Endpoint(&n, port)
	}
}
