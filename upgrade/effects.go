package upgrade

import (
	"context"
	"errors"

	"keel/boot"
)

// The effects the executor performs, each behind a small interface: the node implements them
// over its disk, bootloader, cluster clients, services and power; tests implement them over a
// model of the world (sim_test.go). An effect reports only through its return value and the
// callbacks it is handed, which post events to the executor's queue: it never reads or
// changes the record.

// Effects groups the interfaces. Kube and Cluster may be nil: no Kubernetes configuration
// (cordon and drain are skipped), no etcd member (a worker).
type Effects struct {
	Slots   Slots
	Boot    Bootloader
	Host    Host
	Kube    Kube
	Cluster Cluster
	Power   Power
}

// PullResult is what a pull verified.
type PullResult struct {
	Digest     string // of the installer image's manifest
	Version    string
	SlotSHA256 string
	SlotSize   int64
	SignedBy   string // the trusted key whose signature was accepted ("" for unsigned)
	SignerKey  string // its installer.KeyID ("" for unsigned)
}

// Slots reads and writes the boot slots.
type Slots interface {
	// Pull fetches image and verifies it end to end (architecture, signature, slot size
	// against slot's partition, every byte of the slot against its SHA-256), writing nothing.
	Pull(ctx context.Context, a ActPull) (PullResult, error)
	// Write streams the slot of a.Image onto a.Slot's partition, syncs, re-reads it and checks
	// its size and SHA-256. progress reports bytes written.
	Write(ctx context.Context, a ActWriteSlot, progress func(written, total int64)) error
	// Verify checks every file of slot against the slot's own manifest; it returns the version.
	Verify(ctx context.Context, slot boot.Slot) (string, error)
	// WipeEphemeral re-creates EPHEMERAL (unmounted by then, or at boot before it is mounted).
	WipeEphemeral(ctx context.Context) error
}

// Bootloader edits grubenv.
type Bootloader interface {
	// Committed is the slot grubenv commits (saved_entry, A when unset) as last read or written.
	Committed() boot.Slot
	Arm(slot boot.Slot) error    // next_entry = slot
	Disarm() error               // next_entry cleared
	Commit(slot boot.Slot) error // saved_entry = slot, next_entry cleared
}

// TrialNotes are how the trial's gates write into the record while they run (each posts an
// event; the executor steps it before the trial's outcome).
type TrialNotes struct {
	Rejoined  func(note string) // the etcd member is a voter again
	KubeReady func(note string) // this boot's kubelet reported the node Ready
}

// Host is the running node: its services and mounts, and the trial's health gates.
type Host interface {
	// Stop stops the services and whatever else holds STATE and EPHEMERAL, and unmounts them.
	Stop(ctx context.Context) error
	// Trial arms the watchdog and runs the health gates. With rejoin, the etcd gate promotes
	// this member first and reports it through notes.Rejoined; the Kubernetes gate reports the
	// node Ready through notes.KubeReady.
	Trial(ctx context.Context, rejoin bool, notes TrialNotes) error
	// Finish disarms the trial's watchdog: the upgrade is done.
	Finish()
}

// Kube is the Kubernetes side: cordon, drain, uncordon.
type Kube interface {
	// Cordon marks the node unschedulable: ours is false when it was cordoned by someone
	// else already; skipped when the node has no Kubernetes configuration.
	Cordon(ctx context.Context) (ours, skipped bool, err error)
	Drain(ctx context.Context, a ActDrain) error
	Uncordon(ctx context.Context) error
}

// Cluster is the etcd side of a control-plane node.
type Cluster interface {
	// Grant creates the lease the upgrade lock will be held with.
	Grant(ctx context.Context) (int64, error)
	// Lock waits for the upgrade lock under lease, reporting each holder it waits behind, and
	// keeps the lease alive from then on; lost is called if it can no longer be kept alive.
	Lock(ctx context.Context, lease int64, id string, waiting func(holder string), lost func(reason string)) error
	// KeepLease keeps a lease granted before a reboot alive again (the lock key bound to it is
	// still first in line). ErrLeaseExpired when it is gone.
	KeepLease(ctx context.Context, lease int64, id string, lost func(reason string)) error
	// Check runs the quorum check until it passes (or its wait runs out); it returns the
	// verdict with its numbers.
	Check(ctx context.Context, preserve bool) (string, error)
	// Prepare readies this member to stop or leave: a snapshot saved where the upgrade keeps it
	// (preserve says whether EPHEMERAL survives), then leadership handed over if it leads; each
	// step told through note. An error (no snapshot) ends the upgrade before anything stops,
	// unless force: then it is a note and the upgrade goes on.
	Prepare(ctx context.Context, id string, preserve, force bool, note func(string)) error
	// Leave removes this member from the cluster.
	Leave(ctx context.Context) error
	// Rejoin makes this member a voter again (promotes it once caught up); it returns a note.
	Rejoin(ctx context.Context) (string, error)
	// Release revokes the lease, once this node's member answers a quorum read (bounded).
	Release(ctx context.Context, lease int64) error
}

// ErrLeaseExpired is what Cluster.KeepLease returns for a lease that no longer exists.
var ErrLeaseExpired = errors.New("upgrade: lease expired")

// Power reboots the node through its ordered shutdown.
type Power interface {
	Reboot(reason string) error
	// Down reports whether the node is shutting down (nothing new may start).
	Down() bool
}
