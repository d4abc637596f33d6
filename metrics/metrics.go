// Package metrics is the node's GET /metrics (Prometheus text format, client_golang): what
// GET /v1/status says, read at each scrape (version and slots, boot timing, services, the
// upgrade record, PID 1's memory), and what only the running init sees: each upgrade state's
// duration and each upgrade's outcome, counted by the boot in which it ended.
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"keel/netapi"
	"keel/supervisor"
	"keel/upgrade"
)

// Metrics are the node's.
type Metrics struct {
	reg      *prometheus.Registry
	status   func() netapi.Status
	stateSec *prometheus.HistogramVec
	finished *prometheus.CounterVec
	duration *prometheus.HistogramVec

	mu      sync.Mutex
	id      string
	state   upgrade.State
	entered time.Time
}

// New returns the node's metrics; status is read at every scrape.
func New(status func() netapi.Status) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), status: status,
		stateSec: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keel_upgrade_state_duration_seconds",
			Help:    "Time an upgrade spent in each state, as the init that saw it enter and leave it measured (a state a reboot ends is not observed).",
			Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}}, []string{"state"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keel_upgrades_finished_total",
			Help: "Upgrades that ended in this boot, by outcome (done, aborted, rolled-back)."}, []string{"outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keel_upgrade_duration_seconds",
			Help:    "Request to end of the upgrades that ended in this boot (across their reboot), by outcome.",
			Buckets: []float64{10, 30, 60, 120, 180, 300, 600, 900, 1800, 3600}}, []string{"outcome"}),
	}
	m.reg.MustRegister(m.stateSec, m.finished, m.duration, (*statusCollector)(m),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the exposition.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Registry is for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Upgrade observes the executor's change of the upgrade in the record from prev to cur (at
// now): the time spent in a state this init saw it enter, and an upgrade that ends with this
// change (counted once: by the boot in which it ended).
func (m *Metrics) Upgrade(prev, cur *upgrade.Upgrade, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur == nil {
		return
	}
	switch {
	case prev != nil && prev.ID == cur.ID && prev.State != cur.State:
		// A transition, now: the state left was timed if this init saw it entered.
		if m.id == cur.ID && m.state == prev.State && !m.entered.IsZero() {
			m.stateSec.WithLabelValues(string(prev.State)).Observe(now.Sub(m.entered).Seconds())
		}
		m.id, m.state, m.entered = cur.ID, cur.State, now
	case prev == nil || prev.ID != cur.ID:
		m.id, m.state, m.entered = cur.ID, cur.State, now // a new upgrade
	case m.id != cur.ID || m.state != cur.State:
		m.id, m.state, m.entered = cur.ID, cur.State, time.Time{} // entered before this init
	}
	if cur.State.Terminal() && (prev == nil || prev.ID != cur.ID || !prev.State.Terminal()) {
		m.finished.WithLabelValues(string(cur.State)).Inc()
		if !cur.RequestedAt.IsZero() {
			m.duration.WithLabelValues(string(cur.State)).Observe(now.Sub(cur.RequestedAt).Seconds())
		}
	}
}

// statusCollector turns the node's status into metrics at each scrape.
type statusCollector Metrics

var (
	descInfo     = prometheus.NewDesc("keel_info", "The running init: version, booted and committed slot, role.", []string{"version", "booted_slot", "committed_slot", "role"}, nil)
	descSlot     = prometheus.NewDesc("keel_slot_info", "What each slot's manifest says it holds.", []string{"slot", "version"}, nil)
	descUptime   = prometheus.NewDesc("keel_uptime_seconds", "Kernel uptime.", nil, nil)
	descBoots    = prometheus.NewDesc("keel_boots_recorded", "Boots recorded on EPHEMERAL before this one.", nil, nil)
	descKernel   = prometheus.NewDesc("keel_boot_kernel_seconds", "Kernel uptime when the init started.", nil, nil)
	descReady    = prometheus.NewDesc("keel_boot_init_to_ready_seconds", "Init start to ready (endpoint up, services started).", nil, nil)
	descPhase    = prometheus.NewDesc("keel_boot_phase_seconds", "Each boot phase's duration.", []string{"phase"}, nil)
	descRSS      = prometheus.NewDesc("keel_init_resident_memory_bytes", "PID 1's resident memory (VmRSS).", nil, nil)
	descMemAvail = prometheus.NewDesc("keel_memory_available_bytes", "The machine's MemAvailable.", nil, nil)
	descSvc      = prometheus.NewDesc("keel_service_state", "Each service's state (1 for the one it is in).", []string{"service", "state"}, nil)
	descRestarts = prometheus.NewDesc("keel_service_restarts_total", "Each service's restarts in this boot.", []string{"service"}, nil)
	descUpgrade  = prometheus.NewDesc("keel_upgrade_state", "The upgrade in the record (in flight or the last): 1 for its state.", []string{"id", "state", "from_version", "to_version"}, nil)
	descRecorded = prometheus.NewDesc("keel_upgrades_recorded", "The upgrades the record on META holds (the last 9), by outcome.", []string{"outcome"}, nil)
	descWarn     = prometheus.NewDesc("keel_warnings", "Warnings of this boot (GET /v1/status lists them).", nil, nil)
	descFloor    = prometheus.NewDesc("keel_rollback_floor_info", "The rollback floor: nothing below it installs.", []string{"version"}, nil)
)

var serviceStates = []supervisor.State{supervisor.Waiting, supervisor.Starting, supervisor.Running, supervisor.Healthy, supervisor.Failing, supervisor.Stopped}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descSlot, descUptime, descBoots, descKernel, descReady, descPhase, descRSS, descMemAvail, descSvc, descRestarts, descUpgrade, descRecorded, descWarn, descFloor} {
		ch <- d
	}
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descInfo, 1, st.Version, st.BootedSlot, st.CommittedSlot, st.Role)
	for _, s := range st.Slots {
		if s.Error == "" {
			gauge(descSlot, 1, s.Slot, s.Version)
		}
	}
	gauge(descUptime, st.UptimeS)
	gauge(descBoots, float64(st.BootCount))
	gauge(descKernel, st.Boot.KernelAtInitS)
	if st.Boot.KernelAtReadyS > 0 {
		gauge(descReady, st.Boot.InitToReadyS)
	}
	for _, p := range st.Boot.Phases {
		gauge(descPhase, p.DurationS, p.Name)
	}
	gauge(descRSS, float64(st.InitRSSBytes))
	gauge(descMemAvail, float64(st.MemAvailableBytes))
	for _, s := range st.Services {
		for _, state := range serviceStates {
			v := 0.0
			if s.State == state {
				v = 1
			}
			gauge(descSvc, v, s.Name, string(state))
		}
		ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(s.Restarts), s.Name)
	}
	if u := st.Upgrade; u != nil {
		gauge(descUpgrade, 1, u.ID, string(u.State), u.FromVersion, u.ToVersion)
	}
	counts := map[upgrade.State]int{upgrade.Done: 0, upgrade.Aborted: 0, upgrade.RolledBack: 0}
	for _, u := range append(st.History, derefTerminal(st.Upgrade)...) {
		counts[u.State]++
	}
	for s, n := range counts {
		gauge(descRecorded, float64(n), string(s))
	}
	gauge(descWarn, float64(len(st.Warnings)))
	if st.RollbackFloor != "" {
		gauge(descFloor, 1, st.RollbackFloor)
	}
}

func derefTerminal(u *upgrade.Upgrade) []upgrade.Upgrade {
	if u == nil || !u.State.Terminal() {
		return nil
	}
	return []upgrade.Upgrade{*u}
}
