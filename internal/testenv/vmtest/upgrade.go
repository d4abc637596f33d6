package vmtest

import (
	"encoding/json"
	"net/http"
	"time"

	"keel/netapi"
	"keel/upgrade"
)

// Upgrade requests an upgrade as admin and returns its id.
func (vm *VM) Upgrade(image string, preserve bool) string {
	vm.t.Helper()
	return vm.UpgradeWith(netapi.UpgradeRequest{Image: image, Preserve: preserve})
}

// UpgradeWith is Upgrade with the whole request.
func (vm *VM) UpgradeWith(req netapi.UpgradeRequest) string {
	vm.t.Helper()
	code, b, err := vm.Call("admin", "POST", "/v1/upgrade", req)
	if err != nil || code != http.StatusAccepted {
		vm.t.Fatalf("vmtest: upgrade %s: %d %v: %s", req.Image, code, err, b)
	}
	var a netapi.UpgradeAccepted
	if err := json.Unmarshal(b, &a); err != nil || a.ID == "" {
		vm.t.Fatalf("vmtest: upgrade answer %s: %v", b, err)
	}
	return a.ID
}

// TryStatus reads status, returning false while the endpoint is down (a reboot).
func (vm *VM) TryStatus() (netapi.Status, bool) {
	code, b, err := vm.Call("admin", "GET", "/v1/status", nil)
	if err != nil || code != http.StatusOK {
		return netapi.Status{}, false
	}
	var st netapi.Status
	if json.Unmarshal(b, &st) != nil {
		return netapi.Status{}, false
	}
	return st, true
}

// WaitState polls status (riding out reboots) until upgrade id is in state s, and returns the
// status that says so; a terminal state other than s fails the test.
func (vm *VM) WaitState(id string, s upgrade.State, timeout time.Duration) netapi.Status {
	vm.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if st, ok := vm.TryStatus(); ok && st.Upgrade != nil && st.Upgrade.ID == id {
			if st.Upgrade.State == s {
				return st
			}
			if st.Upgrade.State.Terminal() {
				vm.t.Fatalf("vmtest: upgrade %s ended %s (%s) before reaching %s", id, st.Upgrade.State, st.Upgrade.Reason, s)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	vm.t.Fatalf("vmtest: upgrade %s not %s within %s", id, s, timeout)
	return netapi.Status{}
}

// WaitUpgrade polls status (riding out reboots) until upgrade id is terminal, and returns
// the status that says so.
func (vm *VM) WaitUpgrade(id string, timeout time.Duration) netapi.Status {
	vm.t.Helper()
	deadline := time.Now().Add(timeout)
	var last upgrade.State
	for time.Now().Before(deadline) {
		if st, ok := vm.TryStatus(); ok && st.Upgrade != nil && st.Upgrade.ID == id {
			if st.Upgrade.State != last {
				vm.t.Logf("upgrade %s: %s %s", id, st.Upgrade.State, st.Upgrade.Reason)
				last = st.Upgrade.State
			}
			// Terminal, and settled on the committed slot: a trial that failed its gate is
			// recorded rolled-back on the new slot a moment before the node disarms and
			// reboots into the old one.
			if st.Upgrade.State.Terminal() && st.BootedSlot == st.CommittedSlot {
				return st
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	vm.t.Fatalf("vmtest: upgrade %s not finished within %s (last state %q)", id, timeout, last)
	return netapi.Status{}
}
