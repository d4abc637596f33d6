package etcd

import (
	"fmt"
	"strconv"
	"time"

	"keel/config"
	"keel/disk"
	"keel/supervisor"
)

// Where etcd lives on a node: the binary in the slot's system image, the data on EPHEMERAL
// (so preserve=false wipes it with the rest).
var Binary = disk.SystemBin("etcd")

const (
	DataDir = "/var/lib/etcd"
	// ServiceName is the supervised service's name; other services may be "after" it.
	ServiceName = "etcd"
)

// Start says how etcd starts: bootstrapping or restarting with its data ("new" with the
// configured initial cluster), or joining an existing cluster ("existing") with the member
// list the join returned.
type Start struct {
	InitialCluster string
	State          string // "new" or "existing"
}

// ServiceSpec is the supervised etcd service, with mutual TLS from files unless the config is
// insecure. Its health check is etcd's /health on the loopback-only metrics URL (plain HTTP, no
// client certificate, no data), which does a linearizable read (a real quorum read) unless asked
// for ?serializable=true.
func ServiceSpec(e config.Etcd, name string, st Start, files Files) supervisor.Spec {
	cport, pport, mport := e.ClientPortOr(), e.PeerPortOr(), e.MetricsPortOr()
	scheme := e.Scheme()
	args := []string{Binary, "--name", name, "--data-dir", DataDir,
		"--listen-client-urls", scheme + "://0.0.0.0:" + strconv.Itoa(cport), "--advertise-client-urls", e.ClientURL,
		"--listen-peer-urls", scheme + "://0.0.0.0:" + strconv.Itoa(pport), "--initial-advertise-peer-urls", e.PeerURL,
		"--listen-metrics-urls", "http://127.0.0.1:" + strconv.Itoa(mport),
		"--initial-cluster", st.InitialCluster, "--initial-cluster-state", st.State,
		"--initial-cluster-token", "keel", "--log-level", "warn",
		// Refuse a member change that would leave the cluster without quorum.
		"--strict-reconfig-check"}
	if e.TLS() {
		args = append(args, TLSArgs(files)...)
	}
	if e.HeartbeatMS > 0 {
		args = append(args, "--heartbeat-interval", strconv.Itoa(e.HeartbeatMS))
	}
	if e.ElectionMS > 0 {
		args = append(args, "--election-timeout", strconv.Itoa(e.ElectionMS))
	}
	return supervisor.Spec{
		Name:    ServiceName,
		Command: args,
		Restart: supervisor.RestartAlways,
		Health: &supervisor.Check{
			HTTP:     fmt.Sprintf("http://127.0.0.1:%d/health", mport),
			Interval: supervisor.Duration(2 * time.Second),
			Timeout:  supervisor.Duration(3 * time.Second),
			Failures: 3,
		},
		// etcd flushes and leaves the raft group cleanly on SIGTERM.
		Grace: supervisor.Duration(15 * time.Second),
	}
}

// LocalEndpoint is this member's client URL as seen from the node itself (its server
// certificate is valid for loopback too).
func LocalEndpoint(e config.Etcd) string {
	return e.Scheme() + "://127.0.0.1:" + strconv.Itoa(e.ClientPortOr())
}
