package sequence

import (
	"errors"
	"testing"

	"keel/machine"
)

// TestRefusedResetArmsNoWipe (defect 3): a reset asked for while a reboot is already under way
// is refused and leaves nothing armed: the wipe belongs to the accepted power request only.
func TestRefusedResetArmsNoWipe(t *testing.T) {
	p := newPower()
	if p.down() || p.wipe() != nil {
		t.Fatal("a new node is going down")
	}
	var told []string
	if err := p.request(PowerRequest{Action: machine.ActionReboot, Reason: "api"}, func() {
		if len(p.ch) != 0 {
			t.Error("the shutdown could begin before the request was reported")
		}
		told = append(told, "api")
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.request(PowerRequest{Action: machine.ActionReboot, Reason: "reset", Wipe: []string{"STATE"}}, func() { told = append(told, "reset") }); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("second request: %v", err)
	}
	if len(told) != 1 || told[0] != "api" {
		t.Errorf("reported %v, want the accepted request only", told)
	}
	if w := p.wipe(); w != nil {
		t.Fatalf("the refused reset armed a wipe of %v", w)
	}
	if a := <-p.ch; a != machine.ActionReboot || !p.down() {
		t.Fatalf("accepted %v, down %v", a, p.down())
	}
	q := newPower()
	wipe := []string{"EPHEMERAL"}
	if err := q.request(PowerRequest{Action: machine.ActionReboot, Wipe: wipe}, nil); err != nil {
		t.Fatal(err)
	}
	wipe[0] = "STATE" // the caller's slice is not kept
	if w := q.wipe(); len(w) != 1 || w[0] != "EPHEMERAL" {
		t.Fatalf("wipe = %v", w)
	}
}
