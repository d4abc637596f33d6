package sequence

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"keel/boot"
	"keel/cluster"
	"keel/cluster/etcd"
	"keel/cluster/kube"
	"keel/config"
	"keel/disk"
	"keel/disk/meta"
	"keel/upgrade"
)

// bootMeta reads the upgrade record from META, sets up the upgrade executor around the node's
// effects, and steps this boot through it. What must precede the mounts of EPHEMERAL (re-making
// it, ending a stale trial) is done before this returns; the rest (a trial, a commit, an
// obligation) once the node is ready.
func (n *Node) bootMeta(ctx context.Context) error {
	cfg := n.config()
	report := cluster.Report{Log: n.log, Event: n.publish, Warn: n.warn}
	n.kube = kube.NewNode(kube.NodeOptions{Config: cfg.Kubernetes, Kubeconfig: kubeconfig(cfg.Kubernetes), Report: report})
	if cfg.Etcd != nil {
		n.etcd = etcd.NewNode(etcd.NodeOptions{Config: *cfg.Etcd, Name: cfg.MemberName(), Files: etcd.NodeFiles(PKIDir),
			SnapshotDirs: []string{MountState + "/etcd-snapshots", MountEphemeral + "/lib/keel/etcd-snapshots"}, Report: report})
	}
	rec, metaErr := n.openMeta()
	eff := upgrade.Effects{Slots: slotIO{n}, Host: upgradeHost{n}, Kube: n.kube, Power: powerFx{n}}
	if n.esp != nil {
		eff.Boot = n.esp
	} else {
		eff.Boot = noBootloader{}
	}
	if n.etcd != nil {
		eff.Cluster = n.etcd
	}
	var store upgrade.Store = brokenStore{metaErr}
	if n.store != nil {
		store = n.store
	}
	n.exec = upgrade.NewExecutor(rec, upgrade.Options{Store: store, Effects: eff, Log: n.log, OnChange: n.upgradeChanged})
	go n.exec.Run(context.Background())
	committed := boot.SlotA
	if n.esp != nil {
		committed = n.esp.Committed()
	}
	// A staged upgrade is held to this boot's signature policy (the config may have rotated
	// its key out since the staging).
	policy, _ := cfg.Upgrade.PullPolicy(runtime.GOARCH, 0, func(err error) { n.log.Warn("upgrade: policy", "err", err) })
	booted := upgrade.Booted{Slot: n.bootedSlot(), Committed: committed, MinVersion: cfg.Upgrade.MinVersion, Trust: config.StagedTrust(policy)}
	if err := n.exec.Boot(ctx, booted); err != nil {
		return errors.Join(metaErr, err)
	}
	return metaErr
}

func kubeconfig(k *config.Kubernetes) string {
	if k == nil {
		return ""
	}
	return filepath.Join(MountState, k.KubeconfigPath())
}

// openMeta reads the record; a META that holds no valid copy is reset (with a warning) rather
// than trusted: no state can be inferred from it.
func (n *Node) openMeta() (upgrade.Record, error) {
	f, err := os.OpenFile(n.partition(disk.PartMeta).Dev, os.O_RDWR, 0)
	if err != nil {
		return upgrade.Record{}, err
	}
	st, payload, err := meta.Open(f)
	if errors.Is(err, meta.ErrNoValidCopy) {
		n.warn("META: %v; starting a new record", err)
		if err := st.Reset(); err != nil {
			return upgrade.Record{}, err
		}
		payload = nil
	} else if err != nil {
		return upgrade.Record{}, err
	}
	n.store = st
	rec, err := upgrade.Decode(payload)
	if err != nil {
		n.warn("META: %v; starting a new record", err)
		rec = upgrade.Record{}
	}
	return rec, nil
}

// upgradeChanged is the executor's report of each change: events for followers, a log line,
// and one console line per state (people, and tests that cut the power at a given state).
func (n *Node) upgradeChanged(prev, cur upgrade.Record, ev upgrade.Event) {
	n.metrics.Upgrade(prev.Current, cur.Current, time.Now())
	if p, ok := ev.(upgrade.Progressed); ok && cur.Current != nil {
		n.publish("upgrade", cur.Current.ID, "progress", map[string]any{"written": p.Written, "total": p.Total})
	}
	if u := cur.Current; u != nil && (prev.Current == nil || prev.Current.State != u.State || prev.Current.ID != u.ID) {
		n.publish("upgrade", u.ID, string(u.State), map[string]any{"reason": u.Reason, "image": u.Image, "to_version": u.ToVersion})
		n.log.Info("upgrade: state", "id", u.ID, "state", string(u.State), "reason", u.Reason)
		fmt.Fprintf(n.opts.Console, "keel-upgrade id=%s state=%s\n", u.ID, u.State)
	}
	if _, ok := ev.(upgrade.Uncordoned); ok && cur.Current != nil {
		// The upgrade's last duty toward Kubernetes: a cluster controller's health gate
		// waits for it.
		n.publish("upgrade", cur.Current.ID, "uncordoned", nil)
	}
	if _, ok := ev.(upgrade.Released); ok && cur.Current != nil {
		fmt.Fprintf(n.opts.Console, "keel-lease released id=%s\n", cur.Current.ID)
	}
	if pf, ok := ev.(upgrade.PersistFailed); ok {
		n.warn("upgrade: cannot persist the upgrade record: %s", pf.Reason)
	}
	if rb := cur.RollingBack; rb != nil && (prev.RollingBack == nil || prev.RollingBack.Phase != rb.Phase) {
		n.publish("rollback", string(rb.To), rb.Phase, map[string]any{"from": rb.From, "version": rb.Version})
	}
}

// brokenStore stands for a META that could not be opened: every write fails, so the executor
// refuses upgrades (nothing it did could be recorded) while the node serves.
type brokenStore struct{ err error }

func (b brokenStore) Write([]byte) error {
	return fmt.Errorf("META is not available: %v", b.err)
}

// noBootloader stands for an ESP that could not be read.
type noBootloader struct{}

var errNoESP = errors.New("the ESP (grubenv) is not available")

func (noBootloader) Committed() boot.Slot   { return "" } // unknown: no upgrade is taken
func (noBootloader) Arm(boot.Slot) error    { return errNoESP }
func (noBootloader) Disarm() error          { return errNoESP }
func (noBootloader) Commit(boot.Slot) error { return errNoESP }
