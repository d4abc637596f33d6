package netapi

import (
	"keel/boot"
	"keel/machine"
	"keel/supervisor"
	"keel/upgrade"
	"time"
)

// The endpoint's JSON bodies. Field names are the API: renaming one breaks every curl script.

// Version is GET /v1/version.
type Version struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	Kernel    string `json:"kernel"`
}

// Status is GET /v1/status.
type Status struct {
	Version       string `json:"version"`
	BootedSlot    string `json:"booted_slot"`
	CommittedSlot string `json:"committed_slot"`
	NextSlot      string `json:"next_slot,omitempty"`
	// TrialTries is how many more boots of NextSlot GRUB will make (the slot under trial).
	TrialTries int     `json:"trial_tries,omitempty"`
	UptimeS    float64 `json:"uptime_s"`
	// InitRSSBytes is PID 1's resident memory (VmRSS).
	InitRSSBytes int64 `json:"init_rss_bytes"`
	// MemTotalBytes and MemAvailableBytes are the machine's (/proc/meminfo).
	MemTotalBytes     int64  `json:"mem_total_bytes"`
	MemAvailableBytes int64  `json:"mem_available_bytes"`
	BootID            string `json:"boot_id"`
	// BootCount is how many earlier boots /var/log/keel/boots.log records: it survives a
	// clean shutdown and is lost with EPHEMERAL.
	BootCount  int         `json:"boot_count"`
	Boot       BootTiming  `json:"boot"`
	Partitions []Partition `json:"partitions"`
	Addresses  []string    `json:"addresses"`
	Slots      []SlotInfo  `json:"slots,omitempty"`
	// Drivers are the modules the boot loaded for the machine's devices (by modalias), each
	// with the device that asked for it.
	Drivers  []machine.Driver `json:"drivers,omitempty"`
	Warnings []string         `json:"warnings,omitempty"`
	Role     string           `json:"role,omitempty"`
	// ControlPlane: the node runs an etcd member (its config's etcd section); a cluster
	// controller upgrades such nodes first and one at a time.
	ControlPlane bool `json:"control_plane,omitempty"`
	// Kubernetes says whether the upgrade's cordon and drain steps run on this node.
	Kubernetes string `json:"kubernetes"`
	// Drain is the last drain's progress (pods left, the pod that went last).
	Drain *DrainProgress `json:"drain,omitempty"`
	// Host is how the node prepared its system for containers.
	Host *HostStatus `json:"host,omitempty"`
	// EtcdSnapshots are the etcd snapshots a control-plane node saved before its upgrades,
	// newest first (GET /v1/etcd/snapshots/NAME sends one).
	EtcdSnapshots []EtcdSnapshot `json:"etcd_snapshots,omitempty"`
	// Services is GET /v1/services in short.
	Services []supervisor.Status `json:"services,omitempty"`
	// Upgrade is the upgrade in flight, or the last one; History the ones before it,
	// newest first. Both are read from META, so they survive reboots.
	Upgrade   *upgrade.Upgrade                 `json:"upgrade,omitempty"`
	History   []upgrade.Upgrade                `json:"history,omitempty"`
	SlotsMeta map[boot.Slot]upgrade.SlotRecord `json:"slots_meta,omitempty"`
	Rollbacks []upgrade.Rollback               `json:"rollbacks,omitempty"`
	// RollbackFloor: no version below it is installed or rolled back to (upgrade.min_version,
	// the highest seen, kept on META).
	RollbackFloor string `json:"rollback_floor,omitempty"`
}

// UpgradeRequest is the body of POST /v1/upgrade.
type UpgradeRequest struct {
	Image    string `json:"image"`
	Preserve bool   `json:"preserve"`
	Force    bool   `json:"force"`
	// Downgrade allows an image older than the running version (or one whose version cannot
	// be ordered); never one below the rollback floor.
	Downgrade bool `json:"downgrade,omitempty"`
	// DrainTimeoutS overrides the node's drain timeout for this upgrade (0: the config's).
	DrainTimeoutS int `json:"drain_timeout_s,omitempty"`
	// Stage pulls, verifies and writes the inactive slot while the node stays in service,
	// ending in "staged" (kept across reboots); POST /v1/upgrade/activate goes on with it.
	Stage bool `json:"stage,omitempty"`
}

// ActivateRequest is the (optional) body of POST /v1/upgrade/activate: the staged upgrade
// meant, so that a caller that read the status a while ago activates nothing else (409).
type ActivateRequest struct {
	ID string `json:"id,omitempty"`
}

// UpgradeAccepted answers POST /v1/upgrade.
type UpgradeAccepted struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	// Etcd is the control-plane quorum check's verdict with its numbers, or why it waits.
	Etcd string `json:"etcd,omitempty"`
	// Outage: the cluster is unavailable while this node reboots (a single-member cluster).
	Outage bool `json:"outage,omitempty"`
}

// BootTiming is how long this boot took, in kernel uptime seconds (CLOCK_BOOTTIME).
type BootTiming struct {
	KernelAtInitS  float64 `json:"kernel_uptime_at_init_s"`
	KernelAtReadyS float64 `json:"kernel_uptime_at_ready_s"`
	InitToReadyS   float64 `json:"init_to_ready_s"`
	Phases         []Phase `json:"phases"`
}

// Phase is one step of the boot sequence.
type Phase struct {
	Name      string  `json:"name"`
	DurationS float64 `json:"duration_s"`
	Error     string  `json:"error,omitempty"`
}

// Partition is one of the node's partitions.
type Partition struct {
	Name       string `json:"name"`
	Device     string `json:"device"`
	SizeBytes  int64  `json:"size_bytes"`
	Mountpoint string `json:"mountpoint,omitempty"`
	// CleanAtMount tells, for ext4, whether the journal needed no recovery when mounted:
	// false after a power cut, true after a clean unmount.
	CleanAtMount *bool `json:"clean_at_mount,omitempty"`
	// FSUUID is the ext4 filesystem's UUID: a new one after EPHEMERAL is wiped.
	FSUUID string `json:"fs_uuid,omitempty"`
}

// SlotInfo is what a slot's manifest says it holds.
type SlotInfo struct {
	Slot    string `json:"slot"`
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Boots is GET /v1/boots: the boots whose logs the node keeps on EPHEMERAL, this one first.
type Boots struct {
	Boots []BootLogs `json:"boots"`
}

// BootLogs is one boot's kept logs.
type BootLogs struct {
	// Boot is what GET /v1/logs/NAME?boot= takes: 0 this boot, -1 the one before, ...
	Boot    int       `json:"boot"`
	BootID  string    `json:"boot_id"`
	Version string    `json:"version"`
	Slot    string    `json:"slot"`
	Started time.Time `json:"started"`
	Logs    []string  `json:"logs"`
	Bytes   int64     `json:"bytes"`
}

// Accepted is the answer to a request that starts something asynchronous.
type Accepted struct {
	Status string `json:"status"`
}

// ErrorBody is every error answer: {"error": {"code": ..., "message": ...}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the machine-readable code and the human-readable message of an error.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// HostStatus is what the host preparation did this boot.
type HostStatus struct {
	// CgroupControllers are the cgroup v2 controllers delegated to the root's children;
	// CgroupMissing those the kubelet would use that this kernel lacks.
	CgroupControllers []string `json:"cgroup_controllers"`
	CgroupMissing     []string `json:"cgroup_missing,omitempty"`
	// Sysctls are the settings applied, as the kernel reads them back.
	Sysctls     map[string]string `json:"sysctls"`
	MachineID   string            `json:"machine_id"`
	Nameservers []string          `json:"nameservers,omitempty"`
	Search      []string          `json:"search,omitempty"`
	// CACertificates is how many certificates the system bundle holds.
	CACertificates int `json:"ca_certificates"`
}

// DrainProgress is how far a drain got.
type DrainProgress struct {
	UpgradeID   string `json:"upgrade_id"`
	PodsLeft    int    `json:"pods_left"`
	LastEvicted string `json:"last_evicted,omitempty"`
}

// EtcdSnapshot describes a saved etcd snapshot: its file on the node (on STATE, or on
// EPHEMERAL when STATE had no room and the upgrade kept EPHEMERAL), the member and the upgrade
// it was taken for, its revision, its storage version (the etcd version to restore it with),
// its size and its SHA-256.
type EtcdSnapshot struct {
	Name        string    `json:"name"`
	File        string    `json:"file"`
	Member      string    `json:"member"`
	UpgradeID   string    `json:"upgrade_id,omitempty"`
	Revision    int64     `json:"revision"`
	EtcdVersion string    `json:"etcd_version,omitempty"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	TakenAt     time.Time `json:"taken_at"`
}
