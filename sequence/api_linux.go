package sequence

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"keel/cluster/etcd"
	"keel/events"
	"keel/installer"
	"keel/journal"
	"keel/machine"
	"keel/netapi"
	"keel/supervisor"
	"keel/upgrade"
)

// api is the endpoint's view of the node (netapi.Node): each call is handed to the room that
// owns it (the upgrade executor, the supervisor, power), and its errors are mapped onto the
// endpoint's (409, 412, 400).
type api struct{ n *Node }

// Status implements netapi.Node.
func (a *api) Status() netapi.Status { return a.n.status() }

// Version implements netapi.Node.
func (a *api) Version() netapi.Version { return a.n.version() }

// Reboot implements netapi.Node.
func (a *api) Reboot(reason string) error { return a.n.Reboot(reason) }

// Shutdown implements netapi.Node.
func (a *api) Shutdown(reason string) error {
	return a.n.requestPower(machine.ActionPowerOff, reason, nil)
}

// StartUpgrade implements netapi.Node.
func (a *api) StartUpgrade(r netapi.UpgradeRequest) (netapi.UpgradeAccepted, error) {
	var no netapi.UpgradeAccepted
	n := a.n
	if len(r.Image) > upgrade.MaxImageRef {
		return no, fmt.Errorf("%w: image reference longer than %d bytes", netapi.ErrBadRequest, upgrade.MaxImageRef)
	}
	if _, err := installer.ParseReference(r.Image, nil); err != nil {
		return no, fmt.Errorf("%w: %v", netapi.ErrBadRequest, err)
	}
	if r.DrainTimeoutS < 0 || r.DrainTimeoutS > 3600 {
		return no, fmt.Errorf("%w: drain_timeout_s must be 0-3600", netapi.ErrBadRequest)
	}
	if n.power.down() {
		return no, fmt.Errorf("%w: the node is shutting down", netapi.ErrConflict)
	}
	// A request that will be refused anyway is refused before the cluster is asked.
	if busy := n.exec.Record().Busy(); busy != "" {
		return no, fmt.Errorf("%w: %s", netapi.ErrConflict, busy)
	}
	// Control-plane nodes: refuse an upgrade that would cost the etcd cluster its quorum (a
	// staged one is checked when it is activated: staging stops nothing).
	note, outage := "", false
	if n.etcd != nil && !r.Stage {
		var err error
		if note, outage, err = n.etcd.Precheck(context.Background(), r.Preserve, r.Force); err != nil {
			if errors.Is(err, etcd.ErrRefused) {
				return no, fmt.Errorf("%w: %v", netapi.ErrPrecondition, err)
			}
			return no, err
		}
	}
	b := make([]byte, 6)
	rand.Read(b)
	id := hex.EncodeToString(b)
	cfg := n.config()
	err := n.exec.Request(context.Background(), upgrade.Request{ID: id, Image: r.Image, Preserve: r.Preserve, Force: r.Force,
		Downgrade: r.Downgrade, Stage: r.Stage, MinVersion: cfg.Upgrade.MinVersion, DrainTimeoutS: r.DrainTimeoutS, FromVersion: n.opts.Version, Booted: n.bootedSlot(),
		ControlPlane: n.etcd != nil, Member: memberName(n, cfg.MemberName())})
	if err != nil {
		return no, netapi.UpgradeError(err)
	}
	return netapi.UpgradeAccepted{ID: id, Status: "accepted", Etcd: note, Outage: outage}, nil
}

func memberName(n *Node, name string) string {
	if n.etcd == nil {
		return ""
	}
	return name
}

// ActivateUpgrade implements netapi.Node: the staged upgrade goes on (a control-plane node
// checks the cluster can spare its member first, as a request does).
func (a *api) ActivateUpgrade(id string) (netapi.UpgradeAccepted, error) {
	var no netapi.UpgradeAccepted
	n := a.n
	if n.power.down() {
		return no, fmt.Errorf("%w: the node is shutting down", netapi.ErrConflict)
	}
	u := n.exec.Record().Current
	if u == nil || u.State != upgrade.Staged {
		return no, fmt.Errorf("%w: no staged upgrade to activate", netapi.ErrConflict)
	}
	if id != "" && id != u.ID {
		return no, fmt.Errorf("%w: upgrade %s is staged, not %s", netapi.ErrConflict, u.ID, id)
	}
	note, outage := "", false
	if n.etcd != nil {
		var err error
		if note, outage, err = n.etcd.Precheck(context.Background(), u.Preserve, u.Force); err != nil {
			if errors.Is(err, etcd.ErrRefused) {
				return no, fmt.Errorf("%w: %v", netapi.ErrPrecondition, err)
			}
			return no, err
		}
	}
	if err := n.exec.Activate(context.Background(), u.ID); err != nil {
		return no, netapi.UpgradeError(err)
	}
	return netapi.UpgradeAccepted{ID: u.ID, Status: "activated", Etcd: note, Outage: outage}, nil
}

// CancelUpgrade implements netapi.Node: an upgrade still pulling, waiting for the lease or
// checking is ended, its running step cancelled and its lease released; a later one cannot be.
func (a *api) CancelUpgrade() error {
	return netapi.UpgradeError(a.n.exec.Cancel(context.Background(), "by operator"))
}

// Rollback implements netapi.Node: the other slot is verified against its manifest, committed,
// and the node reboots into it. The answer waits for the verification (412 if the slot holds
// no whole image); one that takes longer than the endpoint may wait is accepted and goes on
// (its outcome is on /v1/events).
func (a *api) Rollback() error {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	err := a.n.exec.Rollback(ctx, a.n.bootedSlot(), a.n.config().Upgrade.MinVersion)
	if errors.Is(err, context.DeadlineExceeded) {
		a.n.log.Warn("rollback: still verifying the other slot after 25 s; it goes on", "slot", string(a.n.bootedSlot().Other()))
		return nil
	}
	if err != nil {
		return netapi.UpgradeError(err)
	}
	a.n.log.Info("rollback: committed the other slot; rebooting", "slot", string(a.n.bootedSlot().Other()))
	return nil
}

// Reset implements netapi.Node: the named partitions are re-made during the ordered shutdown
// (after services stop and filesystems unmount), then the node reboots. Wiping STATE removes
// the node's keys and config: it comes back without an endpoint, ready to be provisioned. The
// wipe belongs to the power request: one refused (the node already going down) arms nothing.
func (a *api) Reset(wipe []string) error {
	r := a.n.exec.Record()
	if r.Active() || r.RollingBack != nil {
		return fmt.Errorf("%w: %s", netapi.ErrConflict, r.Busy())
	}
	if err := a.n.requestPower(machine.ActionReboot, fmt.Sprintf("reset: wipe %v", wipe), wipe); err != nil {
		return fmt.Errorf("%w: %v", netapi.ErrConflict, err)
	}
	return nil
}

// EtcdSnapshot implements netapi.Node: only a snapshot the node lists can be opened. The file
// is registered so that stopping the services closes it: a download in flight must not keep
// STATE (or /var) from being unmounted for an upgrade or a shutdown.
func (a *api) EtcdSnapshot(name string) (netapi.File, error) {
	if a.n.etcd != nil {
		for _, s := range a.n.etcd.Snapshots() {
			if filepath.Base(s.File) == name {
				f, err := a.n.downloads.open(s.File)
				if errors.Is(err, errStopping) {
					return nil, fmt.Errorf("%w: %v", netapi.ErrConflict, err)
				}
				if err != nil {
					return nil, err
				}
				return f, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: no etcd snapshot %q (status lists them)", netapi.ErrNotFound, name)
}

// Services implements netapi.Node.
func (a *api) Services() []supervisor.Status {
	sup := a.n.supervisor()
	if sup == nil {
		return []supervisor.Status{}
	}
	return sup.Status()
}

// RestartService implements netapi.Node.
func (a *api) RestartService(name string) error {
	sup := a.n.supervisor()
	if sup == nil {
		return fmt.Errorf("%w: service %q", netapi.ErrNotFound, name)
	}
	err := sup.Restart(name)
	if errors.Is(err, supervisor.ErrUnknown) {
		return fmt.Errorf("%w: service %q", netapi.ErrNotFound, name)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", netapi.ErrConflict, err)
	}
	return nil
}

// LogRing implements netapi.Node: the init's own log is "init".
func (a *api) LogRing(name string) (*events.Ring, error) {
	if name == "init" && a.n.opts.InitLog != nil {
		return a.n.opts.InitLog, nil
	}
	if sup := a.n.supervisor(); sup != nil {
		if r, err := sup.Logs(name); err == nil {
			return r, nil
		}
	}
	return nil, fmt.Errorf("%w: no log %q (services and \"init\")", netapi.ErrNotFound, name)
}

// PastLog implements netapi.Node: an earlier boot's log, from the journal on EPHEMERAL.
func (a *api) PastLog(name string, back int) ([]string, error) {
	j := a.n.logJournal()
	if j == nil {
		return nil, fmt.Errorf("%w: this boot keeps no logs on EPHEMERAL (not mounted, or closed for a shutdown or an upgrade)", netapi.ErrNotFound)
	}
	b, err := j.Boot(back)
	if err != nil {
		return nil, journalError(err)
	}
	paths, err := journal.Paths(b.Dir, name)
	if err != nil {
		return nil, journalError(err)
	}
	return paths, nil
}

// Boots implements netapi.Node.
func (a *api) Boots() ([]journal.Boot, error) {
	j := a.n.logJournal()
	if j == nil {
		return nil, fmt.Errorf("%w: this boot keeps no logs on EPHEMERAL (not mounted, or closed for a shutdown or an upgrade)", netapi.ErrNotFound)
	}
	return j.Boots()
}

func journalError(err error) error {
	if errors.Is(err, journal.ErrNotFound) {
		return fmt.Errorf("%w: %v", netapi.ErrNotFound, err)
	}
	return err
}

// Events implements netapi.Node.
func (a *api) Events() *events.Ring {
	if a.n.opts.Events == nil {
		r := events.NewRing(1, 0)
		r.Close()
		return r
	}
	return a.n.opts.Events.Ring()
}

// Dmesg implements netapi.Node.
func (a *api) Dmesg(ctx context.Context, follow bool, emit func(any) error) error {
	return machine.ReadKmsg(ctx, follow, func(r machine.KmsgRecord) error { return emit(r) })
}
