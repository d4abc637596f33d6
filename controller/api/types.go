// Package api is the cluster controller's resource: UpgradePlan (keel.dev/v1alpha1), a
// cluster-scoped object that says which nodes run which keel version and how to get them
// there. Pure: the types, their validation (what the CRD's OpenAPI schema cannot say), and
// the plan rules they turn into (controller/plan).
package api

import (
	_ "embed"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"keel/controller/plan"
)

// Group and version of the resource.
const (
	Group   = "keel.dev"
	Version = "v1alpha1"
	Kind    = "UpgradePlan"
)

// UpgradePlanSpec is what the operator asks for.
type UpgradePlanSpec struct {
	// Image is the installer image to install (its version is the target), or Channel a
	// repository whose newest signed version becomes the target ("keep my nodes updated").
	// Exactly one is set.
	Image   string `json:"image,omitempty"`
	Channel string `json:"channel,omitempty"`
	// NodeSelector picks the plan's nodes by label (empty: every keel node).
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// Concurrency is how many workers may be out of service at once (default 1). Control-plane
	// nodes always go first, one at a time.
	Concurrency int `json:"concurrency,omitempty"`
	// Windows are when upgrades may start (none: any time).
	Windows []Window `json:"windows,omitempty"`
	// Preserve keeps EPHEMERAL (default true); DrainTimeoutSeconds bounds each drain.
	Preserve            *bool `json:"preserve,omitempty"`
	DrainTimeoutSeconds int   `json:"drainTimeoutSeconds,omitempty"`
	// HealthCheck is an optional HTTP(S) URL that must answer 2xx before the next node starts
	// (besides the node Ready and its pods Ready again).
	HealthCheck string `json:"healthCheck,omitempty"`
	// Paused stops starting nodes; a halted plan resumes when its spec changes.
	Paused bool `json:"paused,omitempty"`
	// Stage has nodes download and write their next slot ahead of their turn while they
	// serve (at any time: windows bound the activations), StageConcurrency at once (0: as
	// many as Concurrency); a node's turn then only drains, stops and reboots it.
	Stage            bool `json:"stage,omitempty"`
	StageConcurrency int  `json:"stageConcurrency,omitempty"`
}

// Window is a maintenance window (see plan.Window): days by English name.
type Window struct {
	Days     []string `json:"days,omitempty"` // Monday … Sunday; empty: every day
	Start    string   `json:"start"`          // HH:MM
	End      string   `json:"end"`            // HH:MM; before Start: past midnight
	TimeZone string   `json:"timeZone,omitempty"`
}

// ErrInvalid wraps every spec problem.
var ErrInvalid = errors.New("UpgradePlan")

// weekdays are spelled as the CRD's enum spells them.
var weekdays = map[string]time.Weekday{
	"Sunday": time.Sunday, "Monday": time.Monday, "Tuesday": time.Tuesday, "Wednesday": time.Wednesday,
	"Thursday": time.Thursday, "Friday": time.Friday, "Saturday": time.Saturday,
}

// Rules checks the spec and returns the plan rules it means. Every problem is named with its
// field, as a validating webhook or the plan's status would report it.
func (s UpgradePlanSpec) Rules() (plan.Spec, error) {
	var r plan.Spec
	switch {
	case s.Image == "" && s.Channel == "":
		return r, fmt.Errorf("%w: spec.image or spec.channel is required", ErrInvalid)
	case s.Image != "" && s.Channel != "":
		return r, fmt.Errorf("%w: spec.image and spec.channel are exclusive", ErrInvalid)
	case strings.Contains(s.Channel, ":") && strings.LastIndex(s.Channel, ":") > strings.LastIndex(s.Channel, "/"):
		return r, fmt.Errorf("%w: spec.channel %q: a repository, without a tag (its newest signed version is the target)", ErrInvalid, s.Channel)
	}
	if s.Concurrency < 0 || s.Concurrency > 1000 {
		return r, fmt.Errorf("%w: spec.concurrency %d: want 1-1000 (0: 1)", ErrInvalid, s.Concurrency)
	}
	if s.StageConcurrency < 0 || s.StageConcurrency > 1000 {
		return r, fmt.Errorf("%w: spec.stageConcurrency %d: want 0-1000 (0: as concurrency)", ErrInvalid, s.StageConcurrency)
	}
	if s.DrainTimeoutSeconds < 0 || s.DrainTimeoutSeconds > 86400 {
		return r, fmt.Errorf("%w: spec.drainTimeoutSeconds %d: want 0-86400", ErrInvalid, s.DrainTimeoutSeconds)
	}
	if s.HealthCheck != "" {
		u, err := url.Parse(s.HealthCheck)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return r, fmt.Errorf("%w: spec.healthCheck %q: want an http(s) URL", ErrInvalid, s.HealthCheck)
		}
	}
	r.Concurrency, r.Paused, r.Stage, r.StageConcurrency = max(s.Concurrency, 1), s.Paused, s.Stage, s.StageConcurrency
	for i, w := range s.Windows {
		pw := plan.Window{Start: w.Start, End: w.End, Zone: w.TimeZone}
		for _, d := range w.Days {
			wd, ok := weekdays[d]
			if !ok {
				return r, fmt.Errorf("%w: spec.windows[%d].days: %q is not a day of the week", ErrInvalid, i, d)
			}
			pw.Days = append(pw.Days, wd)
		}
		if _, _, err := plan.InWindow([]plan.Window{pw}, time.Unix(0, 0)); err != nil {
			return r, fmt.Errorf("%w: spec.windows[%d]: %w", ErrInvalid, i, err)
		}
		r.Windows = append(r.Windows, pw)
	}
	return r, nil
}

// PreserveOrDefault is spec.preserve, true unless set false.
func (s UpgradePlanSpec) PreserveOrDefault() bool { return s.Preserve == nil || *s.Preserve }

// UpgradePlanStatus is what the controller reports: the printer columns show Target,
// Done/Total and Phase.
type UpgradePlanStatus struct {
	Target string `json:"target,omitempty"` // the version being installed
	// Image is the image being installed: spec.image, or the channel's newest signed
	// release, pinned by digest (repo:version@sha256:…).
	Image string `json:"image,omitempty"`
	Phase string `json:"phase,omitempty"` // Rolling, Waiting, Halted, Done, Invalid
	// Message says why the plan waits, what halted it (the node and its record's reason), or
	// what is wrong with the spec.
	Message string       `json:"message,omitempty"`
	Done    int          `json:"done"` // nodes that run the target and passed its gates
	Total   int          `json:"total"`
	Nodes   []NodeStatus `json:"nodes,omitempty"`
	// StartedAt is when the rollout to Target started its first node; FinishedAt when every
	// node ran it and passed its gates (the plan's phase became Done).
	StartedAt  *metav1.Time `json:"startedAt,omitempty"`
	FinishedAt *metav1.Time `json:"finishedAt,omitempty"`
	// ObservedGeneration is the spec generation this status is about: a halted plan resumes
	// when the spec changes (a new generation).
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// NodeStatus is one node's progress in the plan.
type NodeStatus struct {
	Name  string `json:"name"`
	Phase string `json:"phase"` // plan.Phase
	// ControlPlane: the node runs an etcd member (its Node's label or its own status says
	// so); remembered here so a control-plane node that is rebooting still counts as one.
	ControlPlane bool   `json:"controlPlane,omitempty"`
	Version      string `json:"version"` // running now
	UpgradeID    string `json:"upgradeID,omitempty"`
	// PassedGates: the node passed the health gates after this upgrade (sticky for the
	// upgrade: a node that turns unhealthy later is not done meanwhile, but it did pass).
	PassedGates bool   `json:"passedGates,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// CRD is the UpgradePlan CustomResourceDefinition (YAML), installed by the controller.
//
//go:embed crd.yaml
var CRD []byte
