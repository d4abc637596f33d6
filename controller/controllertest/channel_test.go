package controllertest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"keel/controller/api"
	"keel/controller/channel"
	"keel/disk"
	"keel/initramfs/release"
	"keel/installer"
	"keel/internal/testenv/registrytest"
)

// TestChannel: a plan that names a channel — a real registry (Debian's docker-registry over
// TLS) holding installer images signed by the real cosign — installs the newest release a
// trusted key signed, pinned by digest. Newer tags that are unsigned, signed by another key,
// a pre-release, or signed but saying another version in their manifest are passed over. A
// newer signed release pushed later becomes the target without a spec edit, and every node
// moves on to it. A channel with no signed release waits and starts nothing.
func TestChannel(t *testing.T) {
	ctx := context.Background()
	d := registrytest.StartDistribution(t)
	c := registrytest.Cosign(t)
	trusted, other := registrytest.NewKey(t, c), registrytest.NewKey(t, c)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, d.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	slot := filepath.Join(t.TempDir(), "slot.img")
	os.WriteFile(slot, bytes.Repeat([]byte("slot"), 1<<14), 0o644)
	push := func(repoTag, version string) name.Digest {
		t.Helper()
		img, err := release.Build(release.BuildOptions{SlotPath: slot, Slot: disk.Manifest{Version: version, Arch: "amd64",
			KernelRelease: repoTag, Files: []disk.File{disk.NewFile("vmlinuz", []byte("k"))}}})
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.NewTag(d.Addr + "/" + repoTag)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, remote.WithTransport(d.Client.Transport)); err != nil {
			t.Fatal(err)
		}
		h, _ := img.Digest()
		return ref.Context().Digest(h.String())
	}
	sign := func(dg name.Digest, k registrytest.Key) {
		t.Helper()
		if err := c.Sign(ctx, dg.String(), release.SignOptions{Key: k.Private, CAFile: caFile}); err != nil {
			t.Fatal(err)
		}
	}
	v110 := push("keel:v1.1.0", "v1.1.0")
	sign(v110, trusted)
	sign(push("keel:v1.2.0-rc.1", "v1.2.0-rc.1"), trusted)
	sign(push("keel:v1.3.0", "v1.3.0"), other)
	push("keel:v1.4.0", "v1.4.0")
	sign(push("keel:v1.5.0", "v1.1.0"), trusted) // signed, but the manifest is v1.1.0's
	sign(push("keel:latest", "v1.1.0"), trusted)
	push("lonely:v2.0.0", "v2.0.0")

	// The resolver alone: what it passes over and why.
	pub, err := installer.ParsePublicKey([]byte(trusted.PublicPEM))
	if err != nil {
		t.Fatal(err)
	}
	r := channel.Resolver{TrustedKeys: []installer.TrustedKey{{Name: "release", Key: pub}}, RootCAs: d.Pool}
	rel, err := r.Latest(ctx, d.Addr+"/keel", []string{"amd64"})
	if err != nil {
		t.Fatal(err)
	}
	want := d.Addr + "/keel:v1.1.0@" + v110.DigestStr()
	if rel.Version != "v1.1.0" || rel.Image != want || rel.Key != "release" {
		t.Errorf("resolved %+v, want v1.1.0 as %s signed by release", rel, want)
	}
	skipped := strings.Join(rel.Skipped, "\n")
	for _, why := range []string{"v1.5.0: the tag says v1.5.0 but the image's signed manifest says v1.1.0", "v1.4.0: image is not signed", "v1.3.0: bad signature"} {
		if !strings.Contains(skipped, why) {
			t.Errorf("passed over:\n%s\nwant a line %q", skipped, why)
		}
	}
	if len(rel.Skipped) != 3 {
		t.Errorf("passed over %d tags, want 3 (the pre-release and latest are not candidates):\n%s", len(rel.Skipped), skipped)
	}

	e := newEnv(t, fleet{cps: 1, workers: 5, step: 20 * time.Millisecond, reboot: 100 * time.Millisecond})
	e.startController("a", "-trusted-key", trusted.Public, "-registry-ca", caFile, "-channel-refresh", "1s")
	w := e.watch(2)
	e.plan("lonely", api.UpgradePlanSpec{Channel: d.Addr + "/lonely", NodeSelector: map[string]string{"pool": "none"}})
	e.plan("keep", api.UpgradePlanSpec{Channel: d.Addr + "/keel", Concurrency: 2})
	st := e.waitPlan("keep", 2*time.Minute, "Done on v1.1.0", func(s api.UpgradePlanStatus) bool { return s.Phase == "Done" && s.Target == "v1.1.0" })
	if st.Image != want {
		t.Errorf("status image %s, want %s", st.Image, want)
	}
	for _, n := range e.names {
		if f := e.nodes[n].Facts(); f.Version != "v1.1.0" || f.Record.Current == nil || f.Record.Current.Image != want || f.Upgrades != 1 {
			t.Errorf("%s: %s after %d upgrades, record %+v", n, f.Version, f.Upgrades, f.Record.Current)
		}
	}
	// A newer signed release: the target without an edit.
	v120 := push("keel:v1.2.0", "v1.2.0")
	sign(v120, trusted)
	tPush := time.Now()
	st = e.waitPlan("keep", 2*time.Minute, "Done on v1.2.0", func(s api.UpgradePlanStatus) bool { return s.Phase == "Done" && s.Target == "v1.2.0" })
	t.Logf("v1.2.0 pushed and signed → every node on it and healthy: %.1f s (channel refresh 1 s)", time.Since(tPush).Seconds())
	w.end()
	want = d.Addr + "/keel:v1.2.0@" + v120.DigestStr()
	for _, n := range e.names {
		if f := e.nodes[n].Facts(); f.Version != "v1.2.0" || f.Record.Current.Image != want || f.Upgrades != 2 {
			t.Errorf("%s: %s after %d upgrades, record %+v", n, f.Version, f.Upgrades, f.Record.Current)
		}
	}
	ev := e.eventsUntil("keep", map[string]int{"NewTarget": 2, "PlanDone": 2, "NodeUpgraded": 2 * len(e.names)})
	if ev["NewTarget"] != 2 || ev["PlanDone"] != 2 || ev["NodeUpgraded"] != 2*len(e.names) {
		t.Errorf("events %v", ev)
	}
	lonely := e.get("lonely").Status
	if lonely.Phase != "Waiting" || !strings.Contains(lonely.Message, "no signed release") || !strings.Contains(lonely.Message, "v2.0.0: image is not signed") {
		t.Errorf("a channel without a signed release: %s %q", lonely.Phase, lonely.Message)
	}
}
