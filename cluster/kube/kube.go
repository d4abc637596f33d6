// Package kube is the node's side of Kubernetes around an upgrade: cordon (remembering whether
// someone else had cordoned the node already), drain with the library kubectl uses (PDBs
// honoured, DaemonSet and mirror pods left alone, each pod's own grace period), and uncordon
// only what this init cordoned. It is never on the early-boot path: the init reaches its
// endpoint whether or not the API server does.
package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/kubectl/pkg/drain"
)

// AnnotationCordonedBy marks a node this init cordoned, so that it uncordons only its own
// cordon and never one an operator set.
const AnnotationCordonedBy = "keel.dev/cordoned-by"

// Client talks to the API server about one node.
type Client struct {
	cs   kubernetes.Interface
	node string
	log  *slog.Logger
}

// RESTConfig parses a kubeconfig. Requests time out after timeout, so a dead API server
// fails fast instead of hanging the upgrade.
func RESTConfig(kubeconfig []byte, timeout time.Duration) (*rest.Config, error) {
	c, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kube: kubeconfig: %w", err)
	}
	c.Timeout = timeout
	return c, nil
}

// New returns a client for node.
func New(c *rest.Config, node string, log *slog.Logger) (*Client, error) {
	cs, err := kubernetes.NewForConfig(c)
	if err != nil {
		return nil, fmt.Errorf("kube: client: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{cs: cs, node: node, log: log}, nil
}

// Cordon marks the node unschedulable. It reports whether this init owns the cordon: false
// when the node was already cordoned by someone else (then it is left exactly as it was).
func (c *Client) Cordon(ctx context.Context) (ours bool, err error) {
	n, err := c.cs.CoreV1().Nodes().Get(ctx, c.node, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("kube: cordon %s: %w", c.node, err)
	}
	if n.Spec.Unschedulable {
		_, ours = n.Annotations[AnnotationCordonedBy]
		return ours, nil
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"keel"}},"spec":{"unschedulable":true}}`, AnnotationCordonedBy)
	if _, err := c.cs.CoreV1().Nodes().Patch(ctx, c.node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return false, fmt.Errorf("kube: cordon %s: %w", c.node, err)
	}
	c.log.Info("kube: cordoned", "node", c.node)
	return true, nil
}

// Uncordon makes the node schedulable again if, and only if, this init cordoned it.
func (c *Client) Uncordon(ctx context.Context) error {
	n, err := c.cs.CoreV1().Nodes().Get(ctx, c.node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("kube: uncordon %s: %w", c.node, err)
	}
	if _, ours := n.Annotations[AnnotationCordonedBy]; !ours {
		return nil // not our cordon (or none): leave it
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:null}},"spec":{"unschedulable":false}}`, AnnotationCordonedBy)
	if _, err := c.cs.CoreV1().Nodes().Patch(ctx, c.node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("kube: uncordon %s: %w", c.node, err)
	}
	c.log.Info("kube: uncordoned", "node", c.node)
	return nil
}

// Cordoned reports the node's schedulability and whether the cordon is ours.
func (c *Client) Cordoned(ctx context.Context) (cordoned, ours bool, err error) {
	n, err := c.cs.CoreV1().Nodes().Get(ctx, c.node, metav1.GetOptions{})
	if err != nil {
		return false, false, err
	}
	_, ours = n.Annotations[AnnotationCordonedBy]
	return n.Spec.Unschedulable, ours && n.Spec.Unschedulable, nil
}

// Progress is reported while draining.
type Progress struct {
	Left    int    // pods still to go
	Evicted string // namespace/name of the pod that just went, if any
}

// ErrDrainBlocked is returned when a drain did not finish in time; the message names the
// PodDisruptionBudgets that blocked it, if any.
var ErrDrainBlocked = errors.New("drain blocked")

// DrainOptions tune a drain.
type DrainOptions struct {
	Timeout time.Duration // the whole drain; default 2 minutes
	// Force also deletes pods no controller manages (they will not come back).
	Force    bool
	Progress func(Progress)
}

// Drain evicts the node's pods, honouring PodDisruptionBudgets and each pod's grace period,
// leaving DaemonSet and mirror pods alone. It gives up after o.Timeout; the context deadline
// bounds client-go's own retries of a 429 from a blocking PDB, which otherwise outlive the
// drain's timeout.
func (c *Client) Drain(ctx context.Context, o DrainOptions) error {
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var out bytes.Buffer
	h := &drain.Helper{
		Ctx:                  ctx,
		Client:               c.cs,
		Force:                o.Force,
		GracePeriodSeconds:   -1, // each pod's own, so preStop hooks run
		IgnoreAllDaemonSets:  true,
		DeleteEmptyDirData:   true,
		Timeout:              o.Timeout,
		EvictErrorRetryDelay: 2 * time.Second, // kubectl uses 5 s; 0 is a hot loop
		Out:                  io.MultiWriter(&out, logWriter{c.log}),
		ErrOut:               io.MultiWriter(&out, logWriter{c.log}),
		OnPodDeletionOrEvictionFinished: func(pod *corev1.Pod, usingEviction bool, err error) {
			if err == nil && o.Progress != nil {
				o.Progress(Progress{Evicted: pod.Namespace + "/" + pod.Name, Left: c.podsLeft(ctx)})
			}
		},
	}
	if o.Progress != nil {
		o.Progress(Progress{Left: c.podsLeft(ctx)})
	}
	err := drain.RunNodeDrain(h, c.node)
	if err == nil {
		return nil
	}
	// Name what blocked it.
	bctx, bcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer bcancel()
	if pdbs := c.blockingPDBs(bctx); len(pdbs) > 0 {
		return fmt.Errorf("%w by PodDisruptionBudget %s: %v", ErrDrainBlocked, strings.Join(pdbs, ", "), err)
	}
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "global timeout") {
		return fmt.Errorf("%w: %v", ErrDrainBlocked, err)
	}
	return fmt.Errorf("kube: drain %s: %w", c.node, err)
}

// podsOnNode lists the pods bound to the node that a drain would evict.
func (c *Client) podsOnNode(ctx context.Context) ([]corev1.Pod, error) {
	l, err := c.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + c.node})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if isDaemonSetPod(p) || p.Annotations[corev1.MirrorPodAnnotationKey] != "" || p.DeletionTimestamp != nil {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

func (c *Client) podsLeft(ctx context.Context) int {
	p, err := c.podsOnNode(ctx)
	if err != nil {
		return -1
	}
	return len(p)
}

func isDaemonSetPod(p corev1.Pod) bool {
	for _, o := range p.OwnerReferences {
		if o.Controller != nil && *o.Controller && o.Kind == "DaemonSet" {
			return true
		}
	}
	return false
}

// blockingPDBs names the budgets (namespace/name) that select a pod still on the node and
// allow no disruption.
func (c *Client) blockingPDBs(ctx context.Context) []string {
	pods, err := c.podsOnNode(ctx)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	for _, p := range pods {
		l, err := c.cs.PolicyV1().PodDisruptionBudgets(p.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for _, b := range l.Items {
			if blocks(b, p) {
				seen[b.Namespace+"/"+b.Name] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func blocks(b policyv1.PodDisruptionBudget, p corev1.Pod) bool {
	sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(p.Labels)) {
		return false
	}
	return b.Status.DisruptionsAllowed < 1
}

// IsUnreachable reports an error that means the API server could not be reached (as opposed
// to an answer it gave).
func IsUnreachable(err error) bool {
	var se apierrors.APIStatus
	return err != nil && !errors.As(err, &se)
}

type logWriter struct{ log *slog.Logger }

func (l logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		if line != "" {
			l.log.Info("kube: drain", "msg", line)
		}
	}
	return len(p), nil
}
