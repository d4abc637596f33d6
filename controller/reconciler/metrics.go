package reconciler

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"keel/controller/api"
	"keel/controller/plan"
)

// Metrics are the controller's Prometheus metrics (served by the manager's metrics endpoint
// beside controller-runtime's own: reconcile counts and latencies, API client requests).
type Metrics struct {
	nodes    *prometheus.GaugeVec     // plan, phase
	versions *prometheus.GaugeVec     // plan, version
	phase    *prometheus.GaugeVec     // plan, phase: 1 for the current one
	rollout  *prometheus.GaugeVec     // plan: seconds since the rollout started, or its length
	node     *prometheus.HistogramVec // plan: a node's upgrade, start → passed its gates

	mu      sync.Mutex
	started map[string]time.Time // plan/node/upgrade id → when this controller saw it start
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		nodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keel_upgradeplan_nodes",
			Help: "Nodes of an upgrade plan by phase (pending, staging, staged, upgrading, upgraded, failed)."}, []string{"plan", "phase"}),
		versions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keel_upgradeplan_node_versions",
			Help: "Nodes of an upgrade plan by the keel version they run."}, []string{"plan", "version"}),
		phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keel_upgradeplan_phase",
			Help: "1 for an upgrade plan's current phase (Rolling, Waiting, Halted, Done, Invalid)."}, []string{"plan", "phase"}),
		rollout: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keel_upgradeplan_rollout_seconds",
			Help: "How long the plan's rollout has run, or ran once Done."}, []string{"plan"}),
		node: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keel_upgradeplan_node_upgrade_seconds",
			Help:    "A node's time out of service: from its upgrade's start (or a staged one's activation) to passing the health gates, as this controller saw it.",
			Buckets: prometheus.ExponentialBuckets(15, 1.6, 12)}, []string{"plan"}),
		started: map[string]time.Time{},
	}
	reg.MustRegister(m.nodes, m.versions, m.phase, m.rollout, m.node)
	return m
}

// observe sets the plan's gauges from its new status and times the nodes that moved.
func (m *Metrics) observe(name string, prev, st api.UpgradePlanStatus, now time.Time) {
	if m == nil {
		return
	}
	m.nodes.DeletePartialMatch(prometheus.Labels{"plan": name})
	m.versions.DeletePartialMatch(prometheus.Labels{"plan": name})
	m.phase.DeletePartialMatch(prometheus.Labels{"plan": name})
	for _, p := range []plan.Phase{plan.Pending, plan.Staging, plan.Staged, plan.Upgrading, plan.Upgraded, plan.Failed} {
		m.nodes.WithLabelValues(name, string(p)).Set(0)
	}
	for _, n := range st.Nodes {
		m.nodes.WithLabelValues(name, n.Phase).Inc()
		if n.Version != "" {
			m.versions.WithLabelValues(name, n.Version).Inc()
		}
	}
	m.phase.WithLabelValues(name, st.Phase).Set(1)
	switch {
	case st.StartedAt != nil && st.FinishedAt != nil:
		m.rollout.WithLabelValues(name).Set(st.FinishedAt.Sub(st.StartedAt.Time).Seconds())
	case st.StartedAt != nil:
		m.rollout.WithLabelValues(name).Set(now.Sub(st.StartedAt.Time).Seconds())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := map[string]api.NodeStatus{}
	for _, n := range prev.Nodes {
		old[n.Name] = n
	}
	live := map[string]bool{}
	for _, n := range st.Nodes {
		if n.UpgradeID == "" {
			continue
		}
		key := name + "/" + n.Name + "/" + n.UpgradeID
		live[key] = true
		o := old[n.Name]
		// Out of service from here: a whole upgrade started, or a staged one activated.
		if (o.UpgradeID != n.UpgradeID || o.Phase == string(plan.Staged)) && n.Phase == string(plan.Upgrading) {
			m.started[key] = now
		}
		if t, ok := m.started[key]; ok && (n.PassedGates || n.Phase == string(plan.Failed)) {
			// Passed its gates (or failed): a controller that restarted in between has no
			// start for it and does not guess one.
			if n.PassedGates {
				m.node.WithLabelValues(name).Observe(now.Sub(t).Seconds())
			}
			delete(m.started, key)
		}
	}
	for key := range m.started {
		if strings.HasPrefix(key, name+"/") && !live[key] {
			delete(m.started, key) // the node left the plan, or its upgrade is not ours now
		}
	}
}

// forget drops a deleted plan's series.
func (m *Metrics) forget(name string) {
	if m == nil {
		return
	}
	for _, v := range []*prometheus.GaugeVec{m.nodes, m.versions, m.phase, m.rollout} {
		v.DeletePartialMatch(prometheus.Labels{"plan": name})
	}
	m.node.DeletePartialMatch(prometheus.Labels{"plan": name})
	m.mu.Lock()
	for k := range m.started {
		if len(k) > len(name) && k[:len(name)+1] == name+"/" {
			delete(m.started, k)
		}
	}
	m.mu.Unlock()
}
