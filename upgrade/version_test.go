package upgrade

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"keel/boot"
)

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
		ok   bool
	}{
		{"v1.2.3", "v1.2.3", 0, true},
		{"1.2.3", "v1.2.3", 0, true},
		{"v2", "v2.0.0", 0, true},
		{"v1.10.0", "v1.9.0", 1, true},
		{"v1.0.0-rc.1", "v1.0.0", -1, true},
		{"v1.0.0-dev.9.gabc", "v1.0.0-dev.10.gabc", -1, true},
		{"v1.0.0+build1", "v1.0.0+build2", 0, true},
		{"e2e-v1", "v1.0.0", 0, false},
		{"latest", "latest", 0, false},
	} {
		got, ok := CompareVersions(tc.a, tc.b)
		if got != tc.want || ok != tc.ok {
			t.Errorf("CompareVersions(%q, %q) = %d, %v; want %d, %v", tc.a, tc.b, got, ok, tc.want, tc.ok)
		}
	}
}

func TestImageTag(t *testing.T) {
	for ref, want := range map[string]string{
		"10.0.2.2:5000/keel:v2.0.0":                "v2.0.0",
		"10.0.2.2:5000/keel":                       "",
		"10.0.2.2:5000/keel@sha256:abc":            "",
		"10.0.2.2:5000/keel:v9@sha256:abc":         "v9",
		"registry.example.com/org/keel:1.2.3-rc.1": "1.2.3-rc.1",
		"keel:latest":                              "latest",
	} {
		if got := ImageTag(ref); got != want {
			t.Errorf("ImageTag(%q) = %q, want %q", ref, got, want)
		}
	}
}

// TestVersionPolicy: every refusal of the version policy ends the upgrade in pulling (aborted,
// nothing changed) with a reason naming the check; what passes goes on.
func TestVersionPolicy(t *testing.T) {
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		name            string
		from, image, to string
		downgrade       bool
		floor           string // the config's, at the request
		says            string // "" passes
	}{
		{"upgrade", "v1.0.0", "r/keel:v2.0.0", "v2.0.0", false, "", ""},
		{"same version again", "v2.0.0", "r/keel:v2.0.0", "v2.0.0", false, "", ""},
		{"by digest", "v1.0.0", "r/keel@sha256:00", "v2.0.0", false, "", ""},
		{"non-version tag", "v1.0.0", "r/keel:stable", "v2.0.0", false, "", ""},
		{"downgrade refused", "v2.0.0", "r/keel:v1.0.0", "v1.0.0", false, "", "older than the running v2.0.0"},
		{"downgrade asked for", "v2.0.0", "r/keel:v1.0.0", "v1.0.0", true, "", ""},
		{"signed v1 under the tag v9", "v1.0.0", "r/keel:v9", "v1.0.0", false, "", "the tag says v9 but the image's signed manifest says v1.0.0"},
		{"signed v1 under the tag v9, downgrade", "v2.0.0", "r/keel:v9", "v1.0.0", true, "", "the tag says v9"},
		{"non-semver from", "dev", "r/keel:latest", "v2.0.0", false, "", "not both semantic versions"},
		{"non-semver to", "v1.0.0", "r/keel:latest", "nightly", false, "", "not both semantic versions"},
		{"non-semver, downgrade", "v1.0.0", "r/keel:latest", "nightly", true, "", ""},
		{"below the floor", "v1.0.0", "r/keel:v1.5.0", "v1.5.0", false, "v2.0.0", "below the rollback floor v2.0.0"},
		{"below the floor, downgrade", "v3.0.0", "r/keel:v1.5.0", "v1.5.0", true, "v2.0.0", "below the rollback floor"},
		{"non-semver with a floor", "v3.0.0", "r/keel:x", "nightly", true, "v2.0.0", "below the rollback floor"},
		{"at the floor", "v1.0.0", "r/keel:v2.0.0", "v2.0.0", false, "v2.0.0", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _, err := Step(Record{}, Request{ID: "u", Image: tc.image, FromVersion: tc.from, Downgrade: tc.downgrade, MinVersion: tc.floor, Booted: boot.SlotA, Committed: boot.SlotA, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			r, _, err = Step(r, Pulled{ToVersion: tc.to, Digest: "sha256:d", SlotSHA256: "s", SlotSize: 1, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			u := r.Current
			if tc.says == "" {
				if u.State != Cordoning {
					t.Fatalf("state %s (%s), want cordoning", u.State, u.Reason)
				}
				return
			}
			if u.State != Aborted || !strings.HasPrefix(u.Reason, "refused: version check: ") || !strings.Contains(u.Reason, tc.says) {
				t.Fatalf("state %s, reason %q; want aborted saying %q", u.State, u.Reason, tc.says)
			}
		})
	}
}

// TestFloor: the floor only rises (boot, request, rollback), and a rollback below it is refused.
func TestFloor(t *testing.T) {
	now := time.Unix(1000, 0)
	r, _, _ := Step(Record{}, Booted{Slot: boot.SlotA, Committed: boot.SlotA, MinVersion: "v2.0.0", Now: now})
	if r.Floor != "v2.0.0" {
		t.Fatalf("floor %q after a boot with min_version v2.0.0", r.Floor)
	}
	for _, lower := range []string{"v1.0.0", "", "garbage"} {
		// A reboot: the record comes back from META's bytes, the config says less or nothing.
		b, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if r, err = Decode(b); err != nil {
			t.Fatal(err)
		}
		r, _, _ = Step(r, Booted{Slot: boot.SlotA, Committed: boot.SlotA, MinVersion: lower, Now: now})
		if r.Floor != "v2.0.0" {
			t.Fatalf("floor %q after a boot with min_version %q: it must never fall", r.Floor, lower)
		}
	}
	// The pull is told the floor with the running version and the request's downgrade, so
	// it refuses before the slot is read.
	_, acts, err := Step(r, Request{ID: "u", Image: "r/i:v1.5.0", FromVersion: "v2.0.0", Downgrade: true, Booted: boot.SlotA, Now: now})
	want := ActPull{Image: "r/i:v1.5.0", Slot: boot.SlotB, Versions: VersionPolicy{From: "v2.0.0", Floor: "v2.0.0", Downgrade: true}}
	if err != nil || len(acts) != 1 || acts[0] != want {
		t.Fatalf("request under the floor: %v %#v, want %#v", err, acts, want)
	}
	if err := want.Versions.Check(want.Image, "v1.5.0"); !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "below the rollback floor v2.0.0") {
		t.Fatalf("the pull's check: %v", err)
	}
	r, _, _ = Step(r, RollbackRequest{Booted: boot.SlotA, MinVersion: "v2.1.0", Now: now})
	if r.Floor != "v2.1.0" || r.RollingBack == nil {
		t.Fatalf("floor %q, rolling back %v", r.Floor, r.RollingBack)
	}
	below, acts, err := Step(r, RollbackVerified{Version: "v2.0.0", Now: now})
	if err != nil || below.RollingBack != nil || len(acts) != 0 {
		t.Fatalf("rollback to v2.0.0 under floor v2.1.0: %v, %v, rolling back %v", err, acts, below.RollingBack)
	}
	above, acts, err := Step(r, RollbackVerified{Version: "v2.1.0", Now: now})
	if err != nil || above.RollingBack == nil || len(acts) != 1 {
		t.Fatalf("rollback to v2.1.0 at floor v2.1.0: %v, %v", err, acts)
	}
}

// TestActivateBelowFloor: a staged upgrade whose version a floor raised since (a boot with a
// new min_version) puts below it is not activated: refused, still staged, to be discarded.
func TestActivateBelowFloor(t *testing.T) {
	now := time.Unix(1000, 0)
	step := func(r Record, ev Event) Record { t.Helper(); return mustStep(t, r, ev) }
	r := step(Record{}, Booted{Slot: boot.SlotA, Committed: boot.SlotA, Now: now})
	r = step(r, Request{ID: "s", Image: "r/i:v1.5.0", FromVersion: "v1.0.0", Stage: true, Booted: boot.SlotA, Committed: boot.SlotA, Now: now})
	r = step(r, Pulled{Digest: "sha256:d", ToVersion: "v1.5.0", SlotSHA256: "s", SlotSize: 10, Now: now})
	r = step(r, Completed{Now: now})
	r = step(r, Booted{Slot: boot.SlotA, Committed: boot.SlotA, MinVersion: "v2.0.0", Now: now})
	if r.Current.State != Staged || r.Floor != "v2.0.0" {
		t.Fatalf("after the boot: %s, floor %q", r.Current.State, r.Floor)
	}
	n, acts, err := Step(r, Activate{ID: "s", Now: now})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "below the rollback floor v2.0.0") || len(acts) != 0 || n.Current.State != Staged {
		t.Fatalf("activate under the floor: %v, %v, %s", err, acts, n.Current.State)
	}
	if _, _, err := Step(r, Activate{ID: "other", Now: now}); !errors.Is(err, ErrBusy) {
		t.Fatalf("activate of another id: %v", err)
	}
}

// TestInService: a staged upgrade serves while it pulls, stages and waits; any other upgrade
// in flight has the node out of service.
func TestInService(t *testing.T) {
	for _, c := range []struct {
		u            *Upgrade
		staging, out bool
	}{
		{nil, false, false},
		{&Upgrade{State: Pulling}, false, true},
		{&Upgrade{State: Pulling, Stage: true}, true, false},
		{&Upgrade{State: Staging, Stage: true}, true, false},
		{&Upgrade{State: Staged, Stage: true}, true, false},
		{&Upgrade{State: Cordoning, Stage: true}, false, true},
		{&Upgrade{State: Done, Stage: true}, false, false},
		{&Upgrade{State: RolledBack}, false, false},
	} {
		if c.u.Staging() != c.staging || c.u.OutOfService() != c.out {
			t.Errorf("%+v: staging %v, out %v", c.u, c.u.Staging(), c.u.OutOfService())
		}
	}
}

// TestStagedTrust: a staged image is held to each boot's signature policy and to the
// activation's clock. A boot whose config revoked or dropped its key, or no longer allows an
// unsigned image, discards it (the slot never armed); a key that expired after the boot
// refuses the activation and keeps it staged; a key still trusted lets it go on.
func TestStagedTrust(t *testing.T) {
	now := time.Unix(1000, 0)
	step := func(r Record, ev Event) Record { t.Helper(); return mustStep(t, r, ev) }
	staged := func(signer string) Record {
		r := step(Record{}, Booted{Slot: boot.SlotA, Committed: boot.SlotA, Now: now})
		r = step(r, Request{ID: "s", Image: "r/i:v1.5.0", FromVersion: "v1.0.0", Stage: true, Booted: boot.SlotA, Committed: boot.SlotA, Now: now})
		signedBy := ""
		if signer != "" {
			signedBy = "release-2026"
		}
		if signer == "-" { // a signature the record names no key of
			signer = ""
		}
		r = step(r, Pulled{Digest: "sha256:d", ToVersion: "v1.5.0", SignedBy: signedBy, SignerKey: signer, SlotSHA256: "s", SlotSize: 10, Now: now})
		r = step(r, Completed{Now: now})
		if r.Current.State != Staged || r.Current.SignerKey != signer {
			t.Fatalf("staged: %s, signer %q", r.Current.State, r.Current.SignerKey)
		}
		return r
	}
	later := now.Add(time.Hour)
	for _, c := range []struct {
		name, signer string
		trust        *Trust
		discarded    string // at the boot; "" stays staged
	}{
		{"signed, key not recorded", "-", &Trust{AllowUnsigned: true}, "signing key (release-2026) is not recorded"},
		{"key still trusted", "k1", &Trust{Keys: map[string]time.Time{"k1": {}}}, ""},
		{"key expires later", "k1", &Trust{Keys: map[string]time.Time{"k1": later.Add(time.Hour)}}, ""},
		{"no policy given", "k1", nil, ""},
		{"key revoked or removed", "k1", &Trust{Keys: map[string]time.Time{"k2": {}}}, "no longer trusts (revoked or removed)"},
		{"key expired before the boot", "k1", &Trust{Keys: map[string]time.Time{"k1": now.Add(-time.Second)}}, "which expired at"},
		{"unsigned, still allowed", "", &Trust{AllowUnsigned: true}, ""},
		{"unsigned, no longer allowed", "", &Trust{Keys: map[string]time.Time{"k1": {}}}, "unsigned and this boot's config does not allow"},
	} {
		r, acts, err := Step(staged(c.signer), Booted{Slot: boot.SlotA, Committed: boot.SlotA, Trust: c.trust, Now: now})
		if err != nil {
			t.Fatalf("%s: boot: %v", c.name, err)
		}
		if c.discarded != "" {
			if u := r.Current; u.State != Aborted || !strings.HasPrefix(u.Reason, "discarded: signature check: ") || !strings.Contains(u.Reason, c.discarded) || r.Slots[boot.SlotB].Verified || slices.ContainsFunc(acts, isArm) {
				t.Errorf("%s: %s %q, slot B %+v, actions %v", c.name, u.State, u.Reason, r.Slots[boot.SlotB], acts)
			}
			continue
		}
		if r.Current.State != Staged {
			t.Errorf("%s: %s %q after the boot, want staged", c.name, r.Current.State, r.Current.Reason)
			continue
		}
		n, acts, err := Step(r, Activate{ID: "s", Trust: c.trust, Now: later})
		if err != nil || n.Current.State == Staged || len(acts) == 0 {
			t.Errorf("%s: activation: %v, %s, %v", c.name, err, n.Current.State, acts)
		}
	}
	// A staging cut short by a reboot is written again only if this boot still trusts it.
	r := step(Record{}, Booted{Slot: boot.SlotA, Committed: boot.SlotA, Now: now})
	r = step(r, Request{ID: "s", Image: "r/i:v1.5.0", FromVersion: "v1.0.0", Stage: true, Booted: boot.SlotA, Committed: boot.SlotA, Now: now})
	r = step(r, Pulled{Digest: "sha256:d", ToVersion: "v1.5.0", SignedBy: "release-2026", SignerKey: "k1", SlotSHA256: "s", SlotSize: 10, Now: now})
	if r.Current.State != Staging {
		t.Fatalf("staging: %s", r.Current.State)
	}
	if n, _, err := Step(r, Booted{Slot: boot.SlotA, Committed: boot.SlotA, Trust: &Trust{Keys: map[string]time.Time{"k2": {}}}, Now: now}); err != nil || n.Current.State != Aborted || !strings.Contains(n.Current.Reason, "discarded: signature check:") {
		t.Fatalf("staging, key revoked by the boot: %v %s %q", err, n.Current.State, n.Current.Reason)
	}
	if n, _, err := Step(r, Booted{Slot: boot.SlotA, Committed: boot.SlotA, Trust: &Trust{Keys: map[string]time.Time{"k1": {}}}, Now: now}); err != nil || n.Current.State != Staging {
		t.Fatalf("staging, key still trusted: %v %s %q", err, n.Current.State, n.Current.Reason)
	}

	// A key that expires between the boot and the activation: refused, still staged.
	tr := &Trust{Keys: map[string]time.Time{"k1": now.Add(time.Minute)}}
	r = step(staged("k1"), Booted{Slot: boot.SlotA, Committed: boot.SlotA, Trust: tr, Now: now})
	n, acts, err := Step(r, Activate{ID: "s", Trust: tr, Now: later})
	if !errors.Is(err, ErrRefused) || !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), "signature check:") || !strings.Contains(err.Error(), "expired at") || len(acts) != 0 || n.Current.State != Staged {
		t.Fatalf("activation after the key expired: %v, %v, %s", err, acts, n.Current.State)
	}
}

func isArm(a Action) bool { _, ok := a.(ActArm); return ok }

// mustStep steps ev, failing the test on an error.
func mustStep(t *testing.T, r Record, ev Event) Record {
	t.Helper()
	n, _, err := Step(r, ev)
	if err != nil {
		t.Fatalf("%T: %v", ev, err)
	}
	return n
}
