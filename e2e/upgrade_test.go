package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"keel/boot"
	"keel/config"
	"keel/disk"
	"keel/events"
	"keel/internal/testenv/vmtest"
	"keel/netapi"
	"keel/upgrade"
)

// upgradeTimeout covers pull, write, reboot, trial and commit under TCG.
const upgradeTimeout = 4 * time.Minute

func mustState(t *testing.T, st netapi.Status, want upgrade.State, version string, slot boot.Slot) {
	t.Helper()
	u := st.Upgrade
	if u == nil || u.State != want {
		t.Fatalf("upgrade = %+v, want %s", u, want)
	}
	if st.Version != version || st.BootedSlot != string(slot) || st.CommittedSlot != string(slot) {
		t.Fatalf("running %s on %s (committed %s), want %s on %s", st.Version, st.BootedSlot, st.CommittedSlot, version, slot)
	}
	if want != upgrade.Done && u.Reason == "" {
		t.Fatalf("%s without a reason", want)
	}
}

// TestUpgradeAndRollback: v1 on A → v2 on B (preserve), → v3 on A, then POST /v1/rollback
// returns to v2 on B. /var is kept throughout: its boot log keeps growing. The images come
// from Debian's docker-registry over TLS, its CA given in upgrade.registry_ca, signed by cosign;
// the node lists no insecure registry.
func TestUpgradeAndRollback(t *testing.T) {
	t.Parallel()
	reg := vmtest.NewTLSRegistry(t)
	v2 := reg.PushInstaller(t, "keel:v2.0.0-e2e", vmtest.InstallerOptions{Version: "v2.0.0-e2e"})
	v3 := reg.PushInstaller(t, "keel:v3.0.0-e2e", vmtest.InstallerOptions{Version: "v3.0.0-e2e"})
	cfg := config.Config{Upgrade: config.Upgrade{RegistryCA: []string{string(reg.CAPEM)}}}
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e", HTTPSOnly: true, Config: cfg}))
	vm.Start()
	vm.WaitReady(bootTimeout)
	before := vm.Status()

	// Rollback with nothing in slot B is refused and changes nothing.
	if code, b, err := vm.Call("admin", "POST", "/v1/rollback", nil); err != nil || code != http.StatusPreconditionFailed {
		t.Fatalf("rollback to an empty slot: %d %v %s, want 412", code, err, b)
	}

	// Follow the events through the upgrade: progress, then the shutdown, and the stream ends
	// cleanly at the reboot. The upgrade itself is asked by keelctl, which follows it across
	// the reboot to its end.
	sc, closeEv := stream(t, vm, "reader", "/v1/events?follow=1&tail=0")
	defer closeEv()
	kc := vm.Keelctl()
	ctx := context.Background()
	t0 := time.Now()
	up := kc.Command(ctx, "upgrade", "--wait", "--timeout", upgradeTimeout.String(), v2)
	var upOut, upErr bytes.Buffer
	up.Stdout, up.Stderr = &upOut, &upErr
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	var id string
	for deadline := time.Now().Add(time.Minute); id == "" && time.Now().Before(deadline); {
		if st, ok := vm.TryStatus(); ok && st.Upgrade != nil {
			id = st.Upgrade.ID
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if id == "" {
		t.Fatalf("keelctl upgrade: no upgrade on the node after a minute:\n%s\n%s", upOut.String(), upErr.String())
	}
	if code, b, _ := vm.Call("admin", "POST", "/v1/upgrade", netapi.UpgradeRequest{Image: v3, Preserve: true}); code != http.StatusConflict {
		t.Errorf("second upgrade while one runs: %d %s, want 409", code, b)
	}
	var seen []string
	for sc.Scan() {
		var e events.Event
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			seen = append(seen, e.Kind+" "+e.Source+" "+e.Message)
		}
	}
	want := []string{"upgrade " + id + " pulling", "upgrade " + id + " writing", "upgrade " + id + " progress", "upgrade " + id + " rebooting", "shutdown done reboot"}
	at := 0
	for _, s := range seen {
		if at < len(want) && strings.HasPrefix(s, want[at]) {
			at++
		}
	}
	if at != len(want) || sc.Err() != nil {
		t.Errorf("events during the upgrade lack %q (stream err %v):\n%s", want[min(at, len(want)-1)], sc.Err(), strings.Join(seen, "\n"))
	}
	vm.Expect(`keel-upgrade id=`+id+` state=rebooting`, upgradeTimeout)
	vm.Expect(`keel: booting slot B`, bootTimeout)
	st := vm.WaitUpgrade(id, upgradeTimeout)
	t.Logf("upgrade A→B: request → done in %.1fs", time.Since(t0).Seconds())
	mustState(t, st, upgrade.Done, "v2.0.0-e2e", boot.SlotB)
	if err := up.Wait(); err != nil {
		t.Errorf("keelctl upgrade --wait: %v\n%s\n%s", err, upOut.String(), upErr.String())
	}
	for _, want := range []string{"upgrade " + id + " to " + v2, "pulling " + v2, "writing", "MiB)", "rebooting into slot B", "node does not answer (rebooting?)",
		"node answers again (boot of slot B)", "trial: v2.0.0-e2e booted on slot B", "committing", "upgrade " + id + " done: v2.0.0-e2e on slot B"} {
		if !strings.Contains(upOut.String(), want) {
			t.Errorf("keelctl upgrade --wait said no %q:\n%s", want, upOut.String())
		}
	}
	t.Logf("keelctl upgrade --wait:\n%s", upOut.String())
	if u := st.Upgrade; u.FromVersion != "v1.0.0-e2e" || u.ToVersion != "v2.0.0-e2e" || u.Digest == "" || u.SignedBy != "harness" || u.Progress.Written != u.SlotSize || u.SlotSize == 0 ||
		!strings.HasPrefix(u.Kubernetes, "skipped") || u.Uncordon || !strings.HasPrefix(st.Kubernetes, "not configured") {
		t.Errorf("record = %+v", u)
	}
	if st.BootCount <= before.BootCount || partition(st, disk.PartEphemeral).FSUUID != partition(before, disk.PartEphemeral).FSUUID {
		t.Errorf("preserve=true: boot count %d → %d, EPHEMERAL uuid %s → %s", before.BootCount, st.BootCount,
			partition(before, disk.PartEphemeral).FSUUID, partition(st, disk.PartEphemeral).FSUUID)
	}
	if !st.SlotsMeta[boot.SlotB].Verified || st.SlotsMeta[boot.SlotB].Version != "v2.0.0-e2e" {
		t.Errorf("slots_meta = %+v", st.SlotsMeta)
	}

	// B → A, staged: the slot is written while the node serves (no reboot), the upgrade
	// waits across a reboot, and the activation only stops and reboots.
	before = st
	id2 := vm.UpgradeWith(netapi.UpgradeRequest{Image: v3, Preserve: true, Stage: true})
	staged := vm.WaitState(id2, upgrade.Staged, upgradeTimeout)
	if staged.BootID != before.BootID || !staged.SlotsMeta[boot.SlotA].Verified || staged.SlotsMeta[boot.SlotA].Version != "v3.0.0-e2e" || staged.Version != "v2.0.0-e2e" {
		t.Fatalf("staged: boot %s (was %s), slots %+v, running %s", staged.BootID, before.BootID, staged.SlotsMeta, staged.Version)
	}
	if code, b, _ := vm.Call("admin", "POST", "/v1/upgrade", netapi.UpgradeRequest{Image: v3, Preserve: true}); code != http.StatusConflict || !strings.Contains(string(b), "is staged: activate it") {
		t.Errorf("a request while staged: %d %s, want 409 naming the staged upgrade", code, b)
	}
	if code, b, err := vm.Call("operator", "POST", "/v1/reboot", nil); err != nil || code != http.StatusAccepted {
		t.Fatalf("reboot while staged: %d %v %s", code, err, b)
	}
	vm.Expect(`keel: booting slot B`, bootTimeout)
	vm.WaitReady(bootTimeout)
	st = vm.WaitState(id2, upgrade.Staged, time.Minute)
	if st.BootID == staged.BootID || st.BootedSlot != "B" || st.Upgrade.Boots != 0 {
		t.Fatalf("after a reboot: boot %s, slot %s, boots %d: still staged, not counted", st.BootID, st.BootedSlot, st.Upgrade.Boots)
	}
	t1 := time.Now()
	if code, out, errOut := kc.Run(ctx, "activate", "--wait", "--timeout", upgradeTimeout.String()); code != 0 || !strings.Contains(out, "staged upgrade "+id2+" activated") || !strings.Contains(out, "upgrade "+id2+" done: v3.0.0-e2e on slot A") {
		t.Fatalf("keelctl activate --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	st = vm.WaitUpgrade(id2, upgradeTimeout)
	mustState(t, st, upgrade.Done, "v3.0.0-e2e", boot.SlotA)
	if u := st.Upgrade; !u.Stage || u.ActivatedAt.IsZero() {
		t.Errorf("staged record: %+v", u)
	}
	t.Logf("staged B→A: activate → done in %.1fs (the slot written before, in service)", time.Since(t1).Seconds())
	if len(st.History) != 1 || st.History[0].ID != id || st.History[0].State != upgrade.Done {
		t.Errorf("history = %+v", st.History)
	}

	// Rollback: back to v2 on B (a reader may not; keelctl says which role it takes).
	if code, _, errOut := kc.Run(ctx, "--context", "reader", "rollback"); code != 1 || !strings.Contains(errOut, "needs role admin; the certificate grants reader") || !strings.Contains(errOut, "fix:") {
		t.Errorf("keelctl rollback as a reader: exit %d: %s", code, errOut)
	}
	if code, out, errOut := kc.Run(ctx, "rollback", "--wait", "--timeout", bootTimeout.String()); code != 0 || !strings.Contains(out, "v2.0.0-e2e on slot B") {
		t.Fatalf("keelctl rollback --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	vm.Expect(`keel: booting slot B`, bootTimeout)
	r := vm.WaitReady(bootTimeout)
	st = vm.Status()
	if r.Version != "v2.0.0-e2e" || st.BootedSlot != "B" || st.CommittedSlot != "B" || len(st.Rollbacks) != 1 {
		t.Fatalf("after rollback: version %s booted %s committed %s rollbacks %+v", r.Version, st.BootedSlot, st.CommittedSlot, st.Rollbacks)
	}
	// The boot before (v3 on A, which the rollback ended) kept its log.
	if code, out, errOut := kc.Run(ctx, "logs", "init", "--boot", "-1", "--tail", "100000"); code != 0 || !strings.Contains(out, "version=v3.0.0-e2e") || !strings.Contains(out, "rollback: committed the other slot; rebooting") {
		t.Errorf("keelctl logs init --boot -1: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, errOut := kc.Run(ctx, "status"); code != 0 || !strings.Contains(out, "v2.0.0-e2e (slot B booted, B committed)") {
		t.Errorf("keelctl status: exit %d\n%s\n%s", code, out, errOut)
	}
}
