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

	"keel/controller"
	"keel/controller/api"
	"keel/controller/channel"
	"keel/installer"
)

// TestDecide: a channel plan's target from what it had and what the channel answers.
func TestDecide(t *testing.T) {
	v12 := &controller.Target{Image: "r/keel:v1.2.0@sha256:aa", Version: "v1.2.0"}
	rel := func(v, img string) channel.Release { return channel.Release{Version: v, Image: img} }
	down := errors.New("registry unreachable")
	for _, tc := range []struct {
		name      string
		had       *controller.Target
		rel       channel.Release
		err       error
		want      string // the target's image; "" waits
		noteWants string
	}{
		{"first answer", nil, rel("v1.2.0", "r/keel:v1.2.0@sha256:aa"), nil, "r/keel:v1.2.0@sha256:aa", ""},
		{"no answer, no target: wait", nil, channel.Release{}, down, "", ""},
		{"no answer: kept", v12, channel.Release{}, down, v12.Image, "channel not resolved, target v1.2.0 kept: registry unreachable"},
		{"a newer release", v12, rel("v1.3.0", "r/keel:v1.3.0@sha256:bb"), nil, "r/keel:v1.3.0@sha256:bb", ""},
		{"the same", v12, rel("v1.2.0", "r/keel:v1.2.0@sha256:aa"), nil, v12.Image, ""},
		{"older (a tag deleted): kept", v12, rel("v1.1.0", "r/keel:v1.1.0@sha256:cc"), nil, v12.Image, "older than the target v1.2.0: target kept"},
		{"the tag moved: the bytes kept", v12, rel("v1.2.0", "r/keel:v1.2.0@sha256:dd"), nil, v12.Image, "tag v1.2.0 now names r/keel:v1.2.0@sha256:dd"},
	} {
		got, note, wait := decide(tc.had, tc.rel, tc.err)
		if tc.want == "" {
			if wait == nil || got.Image != "" {
				t.Errorf("%s: %+v, wait %v; want to wait", tc.name, got, wait)
			}
			continue
		}
		if wait != nil || got.Image != tc.want || (tc.noteWants == "") != (note == "") || !strings.Contains(note, tc.noteWants) {
			t.Errorf("%s: %+v, note %q, wait %v; want %s, note %q", tc.name, got, note, wait, tc.want, tc.noteWants)
		}
	}
}

// TestChannelTarget: the plan's side. The registry is a closed port (a failure of the moment
// a real registry cannot be made to give on demand): a plan keeps the target it had from this
// channel under this spec, one without (or with one of another spec) waits; a plan or a
// controller that cannot resolve at all is invalid.
func TestChannelTarget(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keys := []installer.TrustedKey{{Name: "release", Key: k.Public()}}
	r := &Reconciler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Channels: &channel.Resolver{TrustedKeys: keys, Insecure: []string{"127.0.0.1"}}}
	plan := func(channel string, gen int64, st api.UpgradePlanStatus) *api.UpgradePlan {
		p := &api.UpgradePlan{Spec: api.UpgradePlanSpec{Channel: channel}, Status: st}
		p.Name, p.Generation = "p", gen
		return p
	}
	ctx := context.Background()
	amd64 := []string{"amd64"}

	had := api.UpgradePlanStatus{Target: "v1.2.0", Image: "127.0.0.1:1/keel:v1.2.0@sha256:aa", ObservedGeneration: 3}
	tg, note, wait, err := r.channelTarget(ctx, plan("127.0.0.1:1/keel", 3, had), amd64)
	if err != nil || wait != nil || tg.Image != had.Image || tg.Version != "v1.2.0" || !strings.Contains(note, "list tags") {
		t.Errorf("registry down, a target from this channel: %+v, note %q, wait %v, err %v; want the old target kept", tg, note, wait, err)
	}
	for _, tc := range []struct {
		name string
		st   api.UpgradePlanStatus
		gen  int64
	}{
		{"a target of another channel", api.UpgradePlanStatus{Target: "v1.2.0", Image: "127.0.0.1:1/other:v1.2.0@sha256:aa", ObservedGeneration: 3}, 3},
		{"a target of the last spec", had, 4},
		{"spec.image's target in the same repository", api.UpgradePlanStatus{Target: "v1.5.0-rc.1", Image: "127.0.0.1:1/keel:v1.5.0-rc.1", ObservedGeneration: 3}, 3},
	} {
		if tg, _, wait, err = r.channelTarget(ctx, plan("127.0.0.1:1/keel", tc.gen, tc.st), amd64); err != nil || wait == nil || !strings.Contains(wait.Error(), "list tags") {
			t.Errorf("registry down, %s: %+v, wait %v, err %v; want to wait", tc.name, tg, wait, err)
		}
	}
	if _, _, _, err = r.channelTarget(ctx, plan("127.0.0.1:1/Keel:v1", 3, had), amd64); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("a channel with a tag: %v, want invalid", err)
	}
	r.Channels = &channel.Resolver{}
	if _, _, _, err = r.channelTarget(ctx, plan("127.0.0.1:1/keel", 3, had), amd64); !errors.Is(err, api.ErrInvalid) || !errors.Is(err, channel.ErrNoKeys) {
		t.Errorf("no trusted keys: %v, want invalid naming -trusted-key", err)
	}
	r.Channels = nil
	if _, _, _, err = r.channelTarget(ctx, plan("127.0.0.1:1/keel", 3, had), amd64); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("no resolver: %v, want invalid", err)
	}
}
