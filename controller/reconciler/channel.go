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
)

// channelTarget is a channel plan's target: the channel's newest release signed by a trusted
// key, for every architecture among the plan's nodes. A resolution that fails for a reason of
// the moment (the registry unreachable, the tags gone) keeps the target the plan already had
// from this channel; with none yet, the plan waits (wait says why). err is a problem of the
// plan or the controller's configuration (the plan is invalid until it is fixed).
func (r *Reconciler) channelTarget(ctx context.Context, p *api.UpgradePlan, archs []string) (t controller.Target, wait, err error) {
	repo := p.Spec.Channel
	if r.Channels == nil {
		return t, nil, fmt.Errorf("%w: spec.channel: this controller resolves no channels", api.ErrInvalid)
	}
	if _, err := name.NewRepository(repo, name.StrictValidation); err != nil {
		return t, nil, fmt.Errorf("%w: spec.channel %q: %w", api.ErrInvalid, repo, err)
	}
	rel, err := r.Channels.Latest(ctx, repo, archs)
	switch {
	case errors.Is(err, channel.ErrNoKeys):
		return t, nil, fmt.Errorf("%w: spec.channel: %w", api.ErrInvalid, err)
	case err == nil:
		if rel.Image != p.Status.Image {
			r.Log.Info("channel: newest signed release", "plan", p.Name, "channel", repo, "version", rel.Version, "image", rel.Image, "key", rel.Key, "passed_over", rel.Skipped)
		}
		return controller.Target{Image: rel.Image, Version: rel.Version}, nil, nil
	}
	if prev := p.Status; prev.Target != "" && strings.HasPrefix(prev.Image, repo+":") {
		r.Log.Warn("channel: keeping the last target", "plan", p.Name, "target", prev.Target, "err", err)
		return controller.Target{Image: prev.Image, Version: prev.Target}, nil, nil
	}
	return t, err, nil
}
