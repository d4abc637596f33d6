package sequence

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"keel/boot"
	"keel/cluster/etcd"
	"keel/cluster/kube"
	"keel/config"
	"keel/disk"
	"keel/disk/meta"
	"keel/events"
	"keel/host"
	"keel/internal/fault"
	"keel/journal"
	"keel/machine"
	"keel/metrics"
	"keel/netapi"
	"keel/supervisor"
	"keel/upgrade"
)

// Where the node mounts things.
const (
	MountESP       = "/boot"
	MountState     = config.StateRoot
	MountEphemeral = "/var"
	slotMountDir   = "/run/keel/slot"
	bootedSlotDir  = "/run/keel/booted"
	// BootLog is appended to on every boot (boot id, slot, version): it makes a lost /var or
	// a torn unmount visible from outside.
	BootLog = MountEphemeral + "/log/keel/boots.log"
	// PKIDir holds the endpoint's CA, certificate and key on STATE.
	PKIDir = MountState + "/pki"
	// JournalDir keeps each boot's logs (the init's, every service's) while EPHEMERAL is
	// mounted: one directory a boot (package journal).
	JournalDir = MountEphemeral + "/log/keel/boots"
)

// Options configure a Node.
type Options struct {
	Version string
	Log     *slog.Logger
	Console io.Writer // where the ready line goes (the init's stdout is the console)
	Modules []string  // kernel modules to load at boot whatever the hardware; drivers come by modalias
	// PartitionWait bounds the wait for the disk's partitions to appear.
	PartitionWait time.Duration
	// Fault is a test image's injected failure (empty in production).
	Fault fault.Fault
	// InitLog is the init's own log ring (served as the "init" log); Events the event bus.
	InitLog *events.Ring
	Events  *events.Bus
}

// Node is the running machine: what its boot phases found, and the rooms they set up (the
// bootloader, the upgrade executor, services, the cluster sides). It holds no upgrade state:
// the executor owns the record, and the node reads copies of it.
type Node struct {
	opts   Options
	log    *slog.Logger
	Reaper *machine.Reaper
	power  power
	mounts mountTable

	mu        sync.Mutex // guards the boot facts below: written by the phases, read by status
	initAt    time.Duration
	readyAt   time.Duration
	phases    []netapi.Phase
	drivers   *machine.Drivers // the machine's drivers by modalias (nil before the modules phase)
	bootID    string
	cmdline   boot.Cmdline
	booted    boot.Slot
	parts     map[string]disk.Device
	cfg       config.Config
	addrs     []netip.Prefix
	dns       host.Resolver // what DHCP gave
	host      hostFacts
	slots     []netapi.SlotInfo
	warnings  []string
	bootCount int
	srv       *http.Server

	// Set up by the boot phases, then fixed.
	esp   *boot.ESP
	store *meta.Store
	exec  *upgrade.Executor
	sup   *supervisor.Supervisor
	etcd  *etcd.Node // nil on a worker
	// downloads are the files the endpoint is sending (closed when the services stop).
	downloads openFiles
	kube      *kube.Node
	trial     trialWatchdog
	metrics   *metrics.Metrics
	// journal keeps this boot's logs on EPHEMERAL (nil while it is not mounted, or once the
	// logs were closed before its unmount).
	journal *journal.Journal
}

// New returns a Node; initAt is the kernel uptime at which the init started.
func New(o Options, initAt time.Duration) *Node {
	if o.PartitionWait == 0 {
		o.PartitionWait = 10 * time.Second
	}
	n := &Node{
		opts:   o,
		log:    o.Log,
		Reaper: machine.NewReaper(o.Log),
		initAt: initAt,
		power:  newPower(),
	}
	n.metrics = metrics.New(n.status)
	return n
}

// ErrFatal marks a boot failure the init cannot serve through: the caller exits, the kernel
// panics, and panic=N reboots (into the committed slot once a trial has no tries left).
var ErrFatal = errors.New("fatal boot failure")

func (n *Node) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	n.log.Warn(msg)
	n.mu.Lock()
	n.warnings = append(n.warnings, msg)
	n.mu.Unlock()
}

func (n *Node) publish(kind, source, msg string, data map[string]any) {
	if n.opts.Events != nil {
		n.opts.Events.Publish(kind, source, msg, data)
	}
}

func (n *Node) config() config.Config {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cfg
}

func (n *Node) bootedSlot() boot.Slot {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.booted
}

func (n *Node) partition(name string) disk.Device {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.parts[name]
}

func now() time.Time { return time.Now().UTC() }
