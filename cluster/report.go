// Package cluster holds what the node's cluster sides share. Its subpackages are those sides:
// etcd (a control-plane node's member, the upgrade lease and lock, with its pure quorum core)
// and kube (cordon, drain, uncordon); each has a Node that is the upgrade's effects.
package cluster

import (
	"fmt"
	"log/slog"
)

// Report is how a cluster side tells the node what it does: the init's log, the node's event
// stream, and warnings for its status. The zero value discards everything.
type Report struct {
	Log   *slog.Logger
	Event func(kind, source, msg string, data map[string]any)
	Warn  func(format string, args ...any)
}

// Filled returns r with every nil field set to a default: discard, or (Warn) the log.
func (r Report) Filled() Report {
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	if r.Event == nil {
		r.Event = func(string, string, string, map[string]any) {}
	}
	if r.Warn == nil {
		log := r.Log
		r.Warn = func(format string, args ...any) { log.Warn(fmt.Sprintf(format, args...)) }
	}
	return r
}
