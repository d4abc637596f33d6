package reconciler

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"keel/controller"
	"keel/controller/api"
	"keel/controller/channel"
	"keel/upgrade"
)

// channelTarget is a channel plan's target: the channel's newest release signed by a trusted
// key, for every architecture among the plan's nodes (decide says what a plan that already
// has a target does with it). With no target yet and none resolved, the plan waits (wait
// says why). err is a problem of the plan or of the controller's configuration: the plan is
// invalid until it is fixed.
func (r *Reconciler) channelTarget(ctx context.Context, p *api.UpgradePlan, archs []string) (t controller.Target, note string, wait, err error) {
	repo := p.Spec.Channel
	if r.Channels == nil {
		return t, "", nil, fmt.Errorf("%w: spec.channel: this controller resolves no channels", api.ErrInvalid)
	}
	if _, err := name.NewRepository(repo, name.StrictValidation); err != nil {
		return t, "", nil, fmt.Errorf("%w: spec.channel %q: %w", api.ErrInvalid, repo, err)
	}
	rel, err := r.Channels.Latest(ctx, repo, archs)
	if errors.Is(err, channel.ErrNoKeys) {
		return t, "", nil, fmt.Errorf("%w: spec.channel: %w", api.ErrInvalid, err)
	}
	t, note, wait = decide(hadTarget(p), rel, err)
	return t, note, wait, nil
}

// hadTarget is the target the plan's status holds from its channel under this very spec (a
// target of an earlier spec, or of spec.image, is not the channel's to keep).
func hadTarget(p *api.UpgradePlan) *controller.Target {
	st := p.Status
	if st.ObservedGeneration != p.Generation || st.Target == "" || !strings.HasPrefix(st.Image, p.Spec.Channel+":") || !strings.Contains(st.Image, "@sha256:") {
		return nil
	}
	return &controller.Target{Image: st.Image, Version: st.Target}
}

// decide is what a channel plan installs: the channel's newest release, unless the plan has a
// target from it already (had) and the channel's answer would move it back or change its
// bytes. A rollout never goes backwards on its own: a failure of the moment, a tag deleted or
// moved keep the target (note says why); an edit of the plan starts afresh. Without a target
// and without an answer, the plan waits.
func decide(had *controller.Target, rel channel.Release, err error) (t controller.Target, note string, wait error) {
	switch {
	case err != nil && had == nil:
		return t, "", err
	case err != nil:
		return *had, fmt.Sprintf("channel not resolved, target %s kept: %v", had.Version, err), nil
	case had == nil:
		return controller.Target{Image: rel.Image, Version: rel.Version}, "", nil
	}
	c, ok := upgrade.CompareVersions(rel.Version, had.Version)
	switch {
	case !ok || c < 0:
		return *had, fmt.Sprintf("the channel's newest signed release is now %s, older than the target %s: target kept (edit the plan to go back)", rel.Version, had.Version), nil
	case c == 0 && rel.Image != had.Image:
		return *had, fmt.Sprintf("tag %s now names %s: the rollout keeps the bytes it started with, %s", rel.Version, rel.Image, had.Image), nil
	}
	return controller.Target{Image: rel.Image, Version: rel.Version}, "", nil
}
