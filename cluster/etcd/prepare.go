package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Prepare is what a control-plane node does right before its member stops for an upgrade, or
// leaves the cluster: it saves a snapshot of its member's database (where it survives the
// upgrade: see NodeOptions.SnapshotDirs), then, if the member leads, hands leadership to the
// most caught-up healthy voter. Each step is told through note, for the record. A snapshot
// that cannot be saved is an error (nothing is stopped yet: the upgrade ends there); a
// hand-over that fails is a note and a warning (the cluster elects a leader by itself, after
// an election timeout without one). With force, a snapshot that fails is a note and a warning
// too: a node whose own member is broken can still be upgraded.
func (n *Node) Prepare(ctx context.Context, id string, preserve, force bool, note func(string)) error {
	s, err := n.snapshot(ctx, id, preserve)
	if err != nil {
		if !force {
			return err
		}
		msg := "no snapshot (force): " + short(err.Error())
		n.o.Warn("etcd: %s", msg)
		note(msg)
		note(n.HandOver(ctx))
		return nil
	}
	msg := fmt.Sprintf("snapshot %s (revision %d, %d KiB, sha256 %.12s)", s.File, s.Revision, s.Size>>10, s.SHA256)
	n.o.Log.Info("etcd: "+msg, "upgrade", id)
	n.o.Event("etcd", n.o.Name, msg, map[string]any{"file": s.File, "revision": s.Revision, "size": s.Size, "sha256": s.SHA256})
	note(msg)
	note(n.HandOver(ctx))
	return nil
}

// HandOver hands leadership over if this node's member leads (bounded at 30 s) and returns
// what happened; a failure is reported as a warning and returned as a note.
func (n *Node) HandOver(ctx context.Context) string {
	cli, err := n.client()
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var note string
		if note, err = HandOver(ctx, cli, n.o.Name, LocalEndpoint(n.o.Config)); err == nil {
			n.o.Log.Info("etcd: " + note)
			n.o.Event("etcd", n.o.Name, note, nil)
			return note
		}
	}
	n.o.Warn("etcd: leadership hand-over failed: %v; going on (the cluster elects a new leader after an election timeout)", err)
	return "leadership hand-over failed: " + short(err.Error())
}

// short keeps a note for the record short, so that the notes after it still fit.
func short(s string) string {
	if len(s) > 160 {
		return s[:157] + "..."
	}
	return s
}

func (n *Node) snapshot(ctx context.Context, id string, preserve bool) (Snapshot, error) {
	dirs := n.o.SnapshotDirs
	if len(dirs) == 0 {
		return Snapshot{}, errors.New("etcd: snapshot: no directory configured")
	}
	if !preserve {
		dirs = dirs[:1] // the others are wiped with EPHEMERAL
	}
	t, err := n.tls()
	if err != nil {
		return Snapshot{}, err
	}
	local := LocalEndpoint(n.o.Config)
	cli, err := Connect([]string{local}, t)
	if err != nil {
		return Snapshot{}, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var errs []error
	for _, d := range dirs {
		s, err := Save(ctx, cli, local, d, Snapshot{Member: n.o.Name, UpgradeID: id}, time.Now())
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
		if !errors.Is(err, ErrNoRoom) {
			break
		}
	}
	return Snapshot{}, errors.Join(errs...)
}

// Snapshots lists the snapshots this node keeps, newest first.
func (n *Node) Snapshots() []Snapshot { return Snapshots(n.o.SnapshotDirs...) }
