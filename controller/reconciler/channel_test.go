package reconciler

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"keel/controller/api"
	"keel/controller/channel"
	"keel/installer"
)

// TestChannelTarget: what a plan does with each outcome of its channel's resolution. The
// registry is a closed port (a failure of the moment a real registry cannot be made to give
// on demand): a plan keeps the target it had from this channel, one without waits; a plan
// or a controller that cannot resolve at all is invalid.
func TestChannelTarget(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keys := []installer.TrustedKey{{Name: "release", Key: k.Public()}}
	r := &Reconciler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Channels: &channel.Resolver{TrustedKeys: keys, Insecure: []string{"127.0.0.1"}}}
	plan := func(channel string, st api.UpgradePlanStatus) *api.UpgradePlan {
		p := &api.UpgradePlan{Spec: api.UpgradePlanSpec{Channel: channel}, Status: st}
		p.Name = "p"
		return p
	}
	ctx := context.Background()
	amd64 := []string{"amd64"}

	had := api.UpgradePlanStatus{Target: "v1.2.0", Image: "127.0.0.1:1/keel:v1.2.0@sha256:aa"}
	tg, wait, err := r.channelTarget(ctx, plan("127.0.0.1:1/keel", had), amd64)
	if err != nil || wait != nil || tg.Image != had.Image || tg.Version != "v1.2.0" {
		t.Errorf("registry down, a target from this channel: %+v, wait %v, err %v; want the old target kept", tg, wait, err)
	}
	// A target from another channel (the spec was edited) is not kept.
	other := api.UpgradePlanStatus{Target: "v1.2.0", Image: "127.0.0.1:1/other:v1.2.0@sha256:aa"}
	if tg, wait, err = r.channelTarget(ctx, plan("127.0.0.1:1/keel", other), amd64); err != nil || wait == nil || !strings.Contains(wait.Error(), "list tags") {
		t.Errorf("registry down, no target of its own: %+v, wait %v, err %v; want to wait", tg, wait, err)
	}
	if _, _, err = r.channelTarget(ctx, plan("127.0.0.1:1/Keel:v1", had), amd64); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("a channel with a tag: %v, want invalid", err)
	}
	r.Channels = &channel.Resolver{}
	if _, _, err = r.channelTarget(ctx, plan("127.0.0.1:1/keel", had), amd64); !errors.Is(err, api.ErrInvalid) || !errors.Is(err, channel.ErrNoKeys) {
		t.Errorf("no trusted keys: %v, want invalid naming -trusted-key", err)
	}
	r.Channels = nil
	if _, _, err = r.channelTarget(ctx, plan("127.0.0.1:1/keel", had), amd64); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("no resolver: %v, want invalid", err)
	}
}
