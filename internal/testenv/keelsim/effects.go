package keelsim

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"time"

	"keel/boot"
	"keel/events"
	"keel/netapi"
	"keel/upgrade"
)

// effects are the simulated machine under the real executor: Slots, Bootloader, Host and
// Power (Kube is the real cluster/kube).
type effects struct{ n *Node }

func (f effects) wait(ctx context.Context) error {
	t := f.n.o.Step
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(t):
		return nil
	}
}

func sum(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }

// Pull: the version is the tag's, the node's version policy applies before "the slot".
func (f effects) Pull(ctx context.Context, a upgrade.ActPull) (upgrade.PullResult, error) {
	v := upgrade.ImageTag(a.Image) // the real node reads the signed manifest; the simulated registry has none
	if v == "" {
		return upgrade.PullResult{}, fmt.Errorf("%s: simulated registry: no version tag", a.Image)
	}
	if err := a.Versions.Check(a.Image, v); err != nil {
		return upgrade.PullResult{}, err
	}
	if err := f.wait(ctx); err != nil {
		return upgrade.PullResult{}, err
	}
	if f.n.o.Faults[v] == FailPull {
		return upgrade.PullResult{}, errors.New("simulated: MANIFEST_UNKNOWN: the registry has no such image")
	}
	f.n.mu.Lock()
	f.n.known[sum(v)] = v
	f.n.mu.Unlock()
	return upgrade.PullResult{Digest: "sha256:" + sum(a.Image), Version: v, SlotSHA256: sum(v), SlotSize: 1 << 20, SignedBy: "keelsim"}, nil
}

// Write puts the version whose slot digest was pulled onto the slot.
func (f effects) Write(ctx context.Context, a upgrade.ActWriteSlot, progress func(int64, int64)) error {
	if err := f.wait(ctx); err != nil {
		return err
	}
	n := f.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if a.Slot == n.booted || a.Slot == n.committed {
		return fmt.Errorf("refusing to write slot %s: it is the booted or committed slot", a.Slot)
	}
	v, ok := n.known[a.SHA256]
	if !ok {
		return fmt.Errorf("slot %s: sha256 %s is no image pulled", a.Slot, a.SHA256)
	}
	n.slots[a.Slot] = v
	progress(a.Size, a.Size)
	return nil
}

func (f effects) Verify(ctx context.Context, slot boot.Slot) (string, error) {
	if err := f.wait(ctx); err != nil {
		return "", err
	}
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	if v := f.n.slots[slot]; v != "" {
		return v, nil
	}
	return "", fmt.Errorf("slot %s holds no image", slot)
}

func (f effects) WipeEphemeral(ctx context.Context) error { return f.wait(ctx) }

// Bootloader: grubenv's entries.
func (f effects) Committed() boot.Slot {
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	return f.n.committed
}

func (f effects) Arm(slot boot.Slot) error {
	f.n.mu.Lock()
	f.n.next, f.n.tries = slot, boot.TrialTries
	f.n.mu.Unlock()
	return nil
}

func (f effects) Disarm() error {
	f.n.mu.Lock()
	f.n.next, f.n.tries = "", 0
	f.n.mu.Unlock()
	return nil
}

func (f effects) Commit(slot boot.Slot) error {
	f.n.mu.Lock()
	f.n.committed, f.n.next, f.n.tries = slot, "", 0
	f.n.mu.Unlock()
	return nil
}

// Host: the stop and the trial's gates.
func (f effects) Stop(ctx context.Context) error { return f.wait(ctx) }

func (f effects) Trial(ctx context.Context, rejoin bool, notes upgrade.TrialNotes) error {
	if err := f.wait(ctx); err != nil {
		return err
	}
	f.n.mu.Lock()
	v := f.n.slots[f.n.booted]
	f.n.mu.Unlock()
	if f.n.o.Faults[v] == FailGate {
		return fmt.Errorf("kubernetes-ready: node %s not Ready: simulated: %s's kubelet never registers", f.n.o.Name, v)
	}
	if notes.KubeReady != nil {
		notes.KubeReady("Ready as reported by this boot's kubelet (simulated)")
	}
	return nil
}

func (f effects) Finish() {}

// Power.
func (f effects) Reboot(reason string) error { f.n.reboot(); return nil }
func (f effects) Down() bool                 { return f.n.isDown() }

// apiNode is the node behind netapi's server; the routes the controller never calls are
// left to the embedded nil interface.
type apiNode struct {
	netapi.Node
	n *Node
}

func (a apiNode) Status() netapi.Status {
	n := a.n
	n.mu.Lock()
	defer n.mu.Unlock()
	st := netapi.Status{Version: n.slots[n.booted], BootedSlot: string(n.booted), CommittedSlot: string(n.committed),
		NextSlot: string(n.next), TrialTries: n.tries, BootID: n.bootID, BootCount: n.boots - 1, ControlPlane: n.o.ControlPlane,
		Kubernetes: "configured (simulated kubelet)"}
	if n.exec != nil {
		r := n.exec.Record()
		st.Upgrade, st.History, st.RollbackFloor = r.Current, r.History, r.Floor
	}
	return st
}

func (a apiNode) Version() netapi.Version {
	return netapi.Version{Version: a.Status().Version, GoVersion: runtime.Version(), Kernel: "keelsim"}
}

func (a apiNode) StartUpgrade(r netapi.UpgradeRequest) (netapi.UpgradeAccepted, error) {
	n := a.n
	n.mu.Lock()
	e, from, booted, committed := n.exec, n.slots[n.booted], n.booted, n.committed
	n.mu.Unlock()
	if e == nil {
		return netapi.UpgradeAccepted{}, fmt.Errorf("%w: the node is rebooting", netapi.ErrConflict)
	}
	b := make([]byte, 6)
	rand.Read(b)
	id := hex.EncodeToString(b)
	err := e.Request(context.Background(), upgrade.Request{ID: id, Image: r.Image, Preserve: r.Preserve, Force: r.Force,
		Downgrade: r.Downgrade, Stage: r.Stage, DrainTimeoutS: r.DrainTimeoutS, FromVersion: from, Booted: booted, Committed: committed})
	if err != nil {
		return netapi.UpgradeAccepted{}, netapi.UpgradeError(err)
	}
	n.mu.Lock()
	n.upgrades++
	n.mu.Unlock()
	return netapi.UpgradeAccepted{ID: id, Status: "accepted"}, nil
}

func (a apiNode) Events() *events.Ring {
	a.n.mu.Lock()
	defer a.n.mu.Unlock()
	return a.n.bus.Ring()
}

func (a apiNode) ActivateUpgrade(id string) (netapi.UpgradeAccepted, error) {
	a.n.mu.Lock()
	e := a.n.exec
	a.n.mu.Unlock()
	if e == nil {
		return netapi.UpgradeAccepted{}, fmt.Errorf("%w: the node is rebooting", netapi.ErrConflict)
	}
	u := e.Record().Current
	if u == nil || u.State != upgrade.Staged {
		return netapi.UpgradeAccepted{}, fmt.Errorf("%w: no staged upgrade to activate", netapi.ErrConflict)
	}
	if id != "" && id != u.ID {
		return netapi.UpgradeAccepted{}, fmt.Errorf("%w: upgrade %s is staged, not %s", netapi.ErrConflict, u.ID, id)
	}
	if err := e.Activate(context.Background(), u.ID); err != nil {
		return netapi.UpgradeAccepted{}, netapi.UpgradeError(err)
	}
	return netapi.UpgradeAccepted{ID: u.ID, Status: "activated"}, nil
}

func (a apiNode) CancelUpgrade() error {
	a.n.mu.Lock()
	e := a.n.exec
	a.n.mu.Unlock()
	if e == nil {
		return fmt.Errorf("%w: the node is rebooting", netapi.ErrConflict)
	}
	return netapi.UpgradeError(e.Cancel(context.Background(), "by operator"))
}
