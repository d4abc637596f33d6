package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"keel/boot"
	"keel/config"
	"keel/disk"
	"keel/initramfs/release"
	"keel/installer"
	"keel/internal/testenv/vmtest"
	"keel/netapi"
	"keel/upgrade"
)

// TestUpgradeWipe: preserve=false re-creates EPHEMERAL: a new filesystem, none of the old
// files, cleanly mounted.
func TestUpgradeWipe(t *testing.T) {
	t.Parallel()
	reg := vmtest.NewRegistry(t)
	v2 := reg.PushInstaller(t, "keel:v2.0.0-e2e", vmtest.InstallerOptions{Version: "v2.0.0-e2e"})
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e"}))
	before := bootTwice(t, vm)
	st := vm.WaitUpgrade(vm.Upgrade(v2, false), upgradeTimeout)
	mustState(t, st, upgrade.Done, "v2.0.0-e2e", boot.SlotB)
	e := partition(st, disk.PartEphemeral)
	if st.BootCount != 0 || e.FSUUID == "" || e.FSUUID == partition(before, disk.PartEphemeral).FSUUID || e.CleanAtMount == nil || !*e.CleanAtMount {
		t.Errorf("after preserve=false: boot count %d (want 0), uuid %s (was %s), clean %v", st.BootCount, e.FSUUID, partition(before, disk.PartEphemeral).FSUUID, e.CleanAtMount)
	}
}

// TestBrokenNewSlot: a new slot that cannot come up healthy sends the node back to the old
// one by itself, and the record says why. The three failures are baked into test images
// (keel/internal/fault): a real kernel will not panic, hang or fail a gate on demand.
func TestBrokenNewSlot(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		fault, reason string
		console       []string
		boots         int // of the new slot: a panic or a hang spends every try, a failed gate disarms
		// prevLog is in GET /v1/logs/init?boot=-1 after the fallback: the last kept boot's
		// log (a boot that died before mounting EPHEMERAL keeps none: then it is the boot
		// that asked for the upgrade, which kept its log until the upgrade stopped it).
		prevLog []string
	}{
		{"exit-at-start", "the new slot never reported healthy (GRUB spent its 2 boot tries and none reached the init", []string{`fault injected: exiting at start`, `Kernel panic`}, boot.TrialTries,
			[]string{`version=v1.0.0-e2e`, `msg="upgrade: state"`, `state=stopping`}},
		{"hang-in-trial", "the new slot never reported healthy (GRUB spent its 2 boot tries; 2 reached the init, none finished", []string{`watchdog armed`, `fault injected: hanging`}, boot.TrialTries,
			[]string{`version=v2.0.1-broken`, `fault injected: hanging in the trial boot`}},
		{"health-fail", "health gate failed: fault-injected", nil, 1,
			[]string{`version=v2.0.1-broken`, `upgrade: health gate failed`, `this test image always fails its health gate`}},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			t.Parallel()
			reg := vmtest.NewRegistry(t)
			bad := reg.PushInstaller(t, "keel:broken", vmtest.InstallerOptions{Version: "v2.0.1-broken", Fault: tc.fault})
			vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e", Config: config.Config{Upgrade: config.Upgrade{WatchdogS: 10}}}))
			vm.Start()
			vm.WaitReady(bootTimeout)
			id := vm.Upgrade(bad, true)
			vm.Expect(`keel: booting slot B`, upgradeTimeout)
			t0 := time.Now()
			// Every boot GRUB makes until it goes back to slot A, counted: a third try, or a
			// failed gate that did not disarm, is a boot too many.
			boots := 1
			for {
				for _, c := range tc.console {
					vm.Expect(c, bootTimeout)
				}
				if m := vm.Expect(`keel: booting slot ([AB])`, 2*bootTimeout); m[1] == "A" {
					break
				}
				boots++
			}
			t.Logf("%s: first boot of the new slot → GRUB boots the old one: %.1f s (%d boot(s) of the new slot)", tc.fault, time.Since(t0).Seconds(), boots)
			if boots != tc.boots {
				t.Errorf("%d boots of the new slot, want %d", boots, tc.boots)
			}
			st := vm.WaitUpgrade(id, upgradeTimeout)
			mustState(t, st, upgrade.RolledBack, "v1.0.0-e2e", boot.SlotA)
			if !strings.HasPrefix(st.Upgrade.Reason, tc.reason) {
				t.Errorf("reason = %q, want %q", st.Upgrade.Reason, tc.reason)
			}
			if st.NextSlot != "" {
				t.Errorf("next slot %q left armed", st.NextSlot)
			}
			// Why the trial failed, read on the node after the fallback.
			code, b, err := vm.Call("reader", "GET", "/v1/logs/init?boot=-1&tail=100000", nil)
			if err != nil || code != 200 {
				t.Fatalf("the boot before's init log: %d %v %s", code, err, b)
			}
			var prev strings.Builder
			for _, raw := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				var l netapi.LogLine
				if json.Unmarshal([]byte(raw), &l) == nil {
					prev.WriteString(l.Line + "\n")
				}
			}
			for _, want := range tc.prevLog {
				if !strings.Contains(prev.String(), want) {
					t.Errorf("the boot before's init log lacks %q:\n%s", want, prev.String())
				}
			}
			if code, b, err := vm.Call("reader", "GET", "/v1/boots", nil); err != nil || code != 200 {
				t.Errorf("boots: %d %v %s", code, err, b)
			} else {
				t.Logf("%s: GET /v1/boots: %s", tc.fault, b)
			}
		})
	}
}

// TestBadImages: every class of bad reference or image is refused before anything changes:
// the node keeps running, slot B keeps its old bytes, and META records each abort.
func TestBadImages(t *testing.T) {
	t.Parallel()
	reg := vmtest.NewRegistry(t)
	// Untrusted: a key of nobody the node knows. Old: listed in the config as revoked.
	c, err := vmtest.Cosign()
	if err != nil {
		t.Fatal(err)
	}
	untrusted, old, expired := cosignKey(t, c), cosignKey(t, c), cosignKey(t, c)
	refs := map[string]string{
		"unsigned":  reg.PushInstaller(t, "keel:unsigned", vmtest.InstallerOptions{Version: "v2.0.0-e2e", Unsigned: true}),
		"wrong key": reg.PushInstaller(t, "keel:wrongkey", vmtest.InstallerOptions{Version: "v2.0.0-e2e", Key: untrusted.key}),
		"revoked":   reg.PushInstaller(t, "keel:revoked", vmtest.InstallerOptions{Version: "v2.0.0-e2e", Key: old.key}),
		"expired":   reg.PushInstaller(t, "keel:expired", vmtest.InstallerOptions{Version: "v2.0.0-e2e", Key: expired.key}),
		"arm64":     reg.PushInstaller(t, "keel:arm", vmtest.InstallerOptions{Version: "v2.0.0-e2e", Arch: "arm64"}),
		"too large": reg.PushInstaller(t, "keel:huge", vmtest.InstallerOptions{Version: "v2.0.0-e2e",
			Manifest: func(m *installer.Manifest) { m.SlotSize = 300 << 20 }}),
		"digest": reg.PushInstaller(t, "keel:lying", vmtest.InstallerOptions{Version: "v2.0.0-e2e",
			Manifest: func(m *installer.Manifest) { m.SlotSHA256 = strings.Repeat("0", 64) }}),
		"file name": reg.PushInstaller(t, "keel:escape", vmtest.InstallerOptions{Version: "v2.0.0-e2e",
			Manifest: func(m *installer.Manifest) {
				m.Slot.Files = append([]disk.File(nil), m.Slot.Files...) // shared with the other images
				m.Slot.Files[0].Name = "../" + m.Slot.Files[0].Name
			}}),
		"truncated": reg.PushInstaller(t, "keel:truncated", vmtest.InstallerOptions{Version: "v2.0.0-e2e"}),
		// A signed v2 under the tag of a version it is not: a substitution.
		"tag": reg.PushInstaller(t, "keel:v9.0.0", vmtest.InstallerOptions{Version: "v2.0.0-e2e"}),
		// Older than the running v1.0.0-e2e; the floor is v0.9.5-e2e.
		"older":       reg.PushInstaller(t, "keel:v0.9.7-e2e", vmtest.InstallerOptions{Version: "v0.9.7-e2e"}),
		"below floor": reg.PushInstaller(t, "keel:v0.9.1-e2e", vmtest.InstallerOptions{Version: "v0.9.1-e2e"}),
	}
	// Another image's signature stored as this one's (the registry's, or an attacker's, doing).
	refs["substituted"] = reg.PushInstaller(t, "keel:v3.0.0-e2e", vmtest.InstallerOptions{Version: "v3.0.0-e2e", SignatureOf: "keel:truncated"})
	// A registry the node does not list as insecure: plain HTTP to it is refused.
	unlisted := vmtest.NewRegistry(t)
	refs["plain http"] = unlisted.PushInstaller(t, "keel:v2.0.0-e2e", vmtest.InstallerOptions{Version: "v2.0.0-e2e"})
	// A TLS registry whose CA the node was not given (not in Debian's bundle either).
	refs["unknown CA"] = vmtest.NewTLSRegistry(t).PushInstaller(t, "keel:v2.0.0-e2e", vmtest.InstallerOptions{Version: "v2.0.0-e2e"})
	cfg := config.Config{Upgrade: config.Upgrade{
		TrustedKeys: []config.TrustedKey{{Name: "old", PublicKey: old.pub, Revoked: true},
			{Name: "expired", PublicKey: expired.pub, Expires: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)}},
		InsecureRegistries: []string{fmt.Sprintf("10.0.2.2:%d", reg.Port)},
		MinVersion:         "v0.9.5-e2e",
	}}
	img := image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e", VersionB: "v0.9.0-e2e", Config: cfg})
	vm := vmtest.New(t, img)
	slotB := vm.ReadPartition(disk.PartBootB, img.SlotB.Manifest.Files[0].Size)
	vm.Start()
	vm.WaitReady(bootTimeout)

	// Malformed requests: 400, nothing recorded.
	for _, body := range []string{`{`, `{"image": ""}`, `{"image": "x", "bogus": 1}`, `{"image": "10.0.2.2:1/Bad Ref:x"}`} {
		code, b, err := vm.CallRaw("admin", "POST", "/v1/upgrade", []byte(body))
		if err != nil || code != http.StatusBadRequest {
			t.Errorf("POST /v1/upgrade %s: %d %v %s, want 400", body, code, err, b)
		}
	}
	if st := vm.Status(); st.Upgrade != nil {
		t.Fatalf("a malformed request left a record: %+v", st.Upgrade)
	}
	// Reader and operator may not upgrade.
	for _, role := range []string{"reader", "operator"} {
		if code, _, _ := vm.Call(role, "POST", "/v1/upgrade", netapi.UpgradeRequest{Image: refs["unsigned"]}); code != http.StatusForbidden {
			t.Errorf("%s upgrade: %d, want 403", role, code)
		}
	}

	cases := []struct{ name, ref, reason string }{
		{"not found", reg.GuestRef("keel:nope"), "image not found"},
		{"refused", "10.0.2.2:1/keel:x", "registry unreachable"},
		{"plain http", refs["plain http"], "registry refused: plain HTTP"},
		{"unsigned", refs["unsigned"], "image is not signed"},
		{"wrong key", refs["wrong key"], "bad signature: 1 signature(s), none counts: a signature by a key this node does not trust"},
		{"revoked", refs["revoked"], "key old is revoked"},
		{"expired", refs["expired"], "key expired expired at 2020-01-01T00:00:00Z"},
		{"unknown CA", refs["unknown CA"], "registry certificate not trusted"},
		{"substituted", refs["substituted"], "signed another image"},
		{"arm64", refs["arm64"], "another architecture"},
		{"too large", refs["too large"], "slot image too large"},
		{"digest", refs["digest"], "digest mismatch"},
		{"file name", refs["file name"], "not an installer image: slot manifest"},
		{"tag", refs["tag"], "refused: version check: the tag says v9.0.0 but the image's signed manifest says v2.0.0-e2e"},
		{"older", refs["older"], "refused: version check: v0.9.7-e2e is older than the running v1.0.0-e2e"},
		{"below floor, downgrade", refs["below floor"], "refused: version check: v0.9.1-e2e is below the rollback floor v0.9.5-e2e"},
		{"truncated", refs["truncated"], "download truncated"},
	}
	var ids []string
	for _, tc := range cases {
		if tc.name == "truncated" {
			// The registry's answer is cut in half: a real registry does not do that on demand.
			reg.Wrap(truncateBlobs)
		}
		id := vm.UpgradeWith(netapi.UpgradeRequest{Image: tc.ref, Preserve: true, Downgrade: strings.Contains(tc.name, "downgrade")})
		st := vm.WaitUpgrade(id, upgradeTimeout)
		reg.Wrap(nil)
		mustState(t, st, upgrade.Aborted, "v1.0.0-e2e", boot.SlotA)
		if !strings.Contains(st.Upgrade.Reason, tc.reason) {
			t.Errorf("%s: reason %q, want %q", tc.name, st.Upgrade.Reason, tc.reason)
		}
		ids = append(ids, id)
	}
	st := vm.Status()
	if len(st.History) != min(len(cases)-1, upgrade.HistoryLen) || st.BootCount != 0 {
		t.Errorf("history has %d entries, boot count %d (a reboot happened?)", len(st.History), st.BootCount)
	}
	// Slot B holds v0.9.0-e2e, below the floor: no rollback to it.
	if code, b, err := vm.Call("admin", "POST", "/v1/rollback", nil); err != nil || code != http.StatusPreconditionFailed ||
		!strings.Contains(string(b), "holds v0.9.0-e2e, below the rollback floor v0.9.5-e2e") {
		t.Errorf("rollback below the floor: %d %v %s, want 412 naming the floor", code, err, b)
	}
	if st := vm.Status(); st.BootedSlot != "A" || st.CommittedSlot != "A" || st.NextSlot != "" || st.RollbackFloor != "v0.9.5-e2e" {
		t.Errorf("after the refused rollback: booted %s, committed %s, next %q, floor %q", st.BootedSlot, st.CommittedSlot, st.NextSlot, st.RollbackFloor)
	}
	if code, b, err := vm.Call("admin", "POST", "/v1/shutdown", nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("shutdown: %d %v %s", code, err, b)
	}
	vm.WaitExit(downTimeout)
	if got := vm.ReadPartition(disk.PartBootB, int64(len(slotB))); !bytes.Equal(got, slotB) {
		t.Errorf("slot B changed: sha256 %x, was %x", sha256.Sum256(got), sha256.Sum256(slotB))
	}
}

// truncateBlobs serves large blobs with their full Content-Length but half their bytes.
func truncateBlobs(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		if len(body) > 64<<10 {
			body = body[:len(body)/2]
		}
		w.Write(body)
	})
}

// slowBlobs holds large blob downloads for a while: a window to cut the power in.
func slowBlobs(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Body.Len() > 64<<10 {
				select {
				case <-time.After(30 * time.Second):
				case <-r.Context().Done():
					return
				}
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return
		}
		h.ServeHTTP(w, r)
	})
}

// TestPowerCuts cuts the power (QMP system_reset) during the pull, during the slot write,
// after arming and during the trial boot: the node always boots, and the record always ends
// terminal with a reason; a half-written slot is never armed.
func TestPowerCuts(t *testing.T) {
	t.Parallel()
	reg := vmtest.NewRegistry(t)
	v2 := reg.PushInstaller(t, "keel:v2.0.0-e2e", vmtest.InstallerOptions{Version: "v2.0.0-e2e"})
	slow := reg.PushInstaller(t, "keel:slow-trial", vmtest.InstallerOptions{Version: "v3.0.0-e2e", Fault: "slow-trial"})
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e"}))
	vm.Start()
	vm.WaitReady(bootTimeout)

	t.Log("cut during the pull")
	reg.Wrap(slowBlobs)
	id := vm.Upgrade(v2, true)
	vm.Expect(`keel-upgrade id=`+id+` state=pulling`, bootTimeout)
	time.Sleep(2 * time.Second)
	vm.Reset()
	reg.Wrap(nil)
	vm.WaitReady(bootTimeout)
	st := vm.WaitUpgrade(id, upgradeTimeout)
	mustState(t, st, upgrade.Aborted, "v1.0.0-e2e", boot.SlotA)
	if !strings.Contains(st.Upgrade.Reason, "while pulling") {
		t.Errorf("reason = %q", st.Upgrade.Reason)
	}

	t.Log("cut during the slot write")
	id = vm.Upgrade(v2, true)
	vm.Expect(`keel-upgrade id=`+id+` state=writing`, upgradeTimeout)
	vm.Reset()
	vm.Expect(`keel: booting slot A`, bootTimeout)
	vm.WaitReady(bootTimeout)
	st = vm.WaitUpgrade(id, upgradeTimeout)
	mustState(t, st, upgrade.Aborted, "v1.0.0-e2e", boot.SlotA)
	if !strings.Contains(st.Upgrade.Reason, "while writing") || st.SlotsMeta[boot.SlotB].Verified || st.NextSlot != "" {
		t.Errorf("after a cut mid-write: reason %q, slot B %+v, next %q", st.Upgrade.Reason, st.SlotsMeta[boot.SlotB], st.NextSlot)
	}

	t.Log("cut after arming")
	id = vm.Upgrade(v2, true)
	vm.Expect(`keel-upgrade id=`+id+` state=rebooting`, upgradeTimeout)
	vm.Reset()
	vm.Expect(`keel: booting slot B`, bootTimeout)
	st = vm.WaitUpgrade(id, upgradeTimeout)
	mustState(t, st, upgrade.Done, "v2.0.0-e2e", boot.SlotB)

	// The trial of a healthy slot cut short costs one of GRUB's tries: the trial resumes on
	// the new slot and ends done. (Before boot tries, this ended rolled back: GRUB had spent
	// its one shot, and the whole upgrade had to be asked for again.)
	t.Log("cut during the trial boot")
	id = vm.Upgrade(slow, true)
	vm.Expect(`keel: booting slot A`, upgradeTimeout)
	vm.Expect(`keel-upgrade id=`+id+` state=trial`, bootTimeout)
	vm.Reset()
	vm.Expect(`keel: booting slot A`, bootTimeout)
	st = vm.WaitUpgrade(id, upgradeTimeout)
	mustState(t, st, upgrade.Done, "v3.0.0-e2e", boot.SlotA)
	if st.Upgrade.TrialBoots != 2 || st.NextSlot != "" || st.TrialTries != 0 {
		t.Errorf("resumed trial: %d trial boots (want 2), next %q with %d tries", st.Upgrade.TrialBoots, st.NextSlot, st.TrialTries)
	}
}

// TestUnmountBusy: a loop device on a file in /var keeps it busy whatever is killed; the
// upgrade aborts and the node reboots into its current slot. The loop device is set up by
// a test fault in slot A's init (fault.BusyVar).
func TestUnmountBusy(t *testing.T) {
	t.Parallel()
	reg := vmtest.NewRegistry(t)
	v2 := reg.PushInstaller(t, "keel:v2.0.0-e2e", vmtest.InstallerOptions{Version: "v2.0.0-e2e"})
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e", FaultA: "busy-var"}))
	vm.Start()
	r := vm.WaitReady(bootTimeout)
	id := vm.Upgrade(v2, true)
	vm.Expect(`keel-upgrade id=`+id+` state=aborted`, upgradeTimeout)
	vm.Expect(`keel: booting slot A`, bootTimeout)
	r2 := vm.WaitReady(bootTimeout)
	st := vm.Status()
	mustState(t, st, upgrade.Aborted, "v1.0.0-e2e", boot.SlotA)
	if !strings.Contains(st.Upgrade.Reason, "unmount /var") || r2.BootID == r.BootID {
		t.Errorf("reason %q; rebooted: %v", st.Upgrade.Reason, r2.BootID != r.BootID)
	}
}

type testKey struct{ key, pub string }

// cosignKey makes a cosign key pair in the test's temporary directory.
func cosignKey(t *testing.T, c release.Cosign) testKey {
	t.Helper()
	dir := t.TempDir()
	pub, err := c.EnsureKey(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{key: filepath.Join(dir, release.CosignKeyFile), pub: pub}
}
