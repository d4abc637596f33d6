package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"keel/netapi"
	"keel/supervisor"
	"keel/upgrade"
)

func TestStatusMetrics(t *testing.T) {
	st := netapi.Status{Version: "v2.0.0", BootedSlot: "B", CommittedSlot: "B", Role: "worker", UptimeS: 42, BootCount: 3, InitRSSBytes: 20 << 20,
		Boot:     netapi.BootTiming{KernelAtInitS: 3.5, KernelAtReadyS: 5, InitToReadyS: 1.5, Phases: []netapi.Phase{{Name: "network", DurationS: 0.25}}},
		Slots:    []netapi.SlotInfo{{Slot: "A", Version: "v1.0.0"}, {Slot: "B", Version: "v2.0.0"}},
		Services: []supervisor.Status{{Name: "kubelet", State: supervisor.Healthy, Restarts: 2}},
		Upgrade:  &upgrade.Upgrade{ID: "u2", State: upgrade.Done, FromVersion: "v1.0.0", ToVersion: "v2.0.0"},
		History:  []upgrade.Upgrade{{ID: "u1", State: upgrade.RolledBack}},
	}
	m := New(func() netapi.Status { return st })
	want := `
# HELP keel_info The running init: version, booted and committed slot, role.
# TYPE keel_info gauge
keel_info{booted_slot="B",committed_slot="B",role="worker",version="v2.0.0"} 1
# HELP keel_service_restarts_total Each service's restarts in this boot.
# TYPE keel_service_restarts_total counter
keel_service_restarts_total{service="kubelet"} 2
# HELP keel_service_state Each service's state (1 for the one it is in).
# TYPE keel_service_state gauge
keel_service_state{service="kubelet",state="failing"} 0
keel_service_state{service="kubelet",state="healthy"} 1
keel_service_state{service="kubelet",state="running"} 0
keel_service_state{service="kubelet",state="starting"} 0
keel_service_state{service="kubelet",state="stopped"} 0
keel_service_state{service="kubelet",state="waiting"} 0
# HELP keel_slot_info What each slot's manifest says it holds.
# TYPE keel_slot_info gauge
keel_slot_info{slot="A",version="v1.0.0"} 1
keel_slot_info{slot="B",version="v2.0.0"} 1
# HELP keel_upgrade_state The upgrade in the record (in flight or the last): 1 for its state.
# TYPE keel_upgrade_state gauge
keel_upgrade_state{from_version="v1.0.0",id="u2",state="done",to_version="v2.0.0"} 1
# HELP keel_upgrades_recorded The upgrades the record on META holds (the last 9), by outcome.
# TYPE keel_upgrades_recorded gauge
keel_upgrades_recorded{outcome="aborted"} 0
keel_upgrades_recorded{outcome="done"} 1
keel_upgrades_recorded{outcome="rolled-back"} 1
# HELP keel_boot_phase_seconds Each boot phase's duration.
# TYPE keel_boot_phase_seconds gauge
keel_boot_phase_seconds{phase="network"} 0.25
# HELP keel_init_resident_memory_bytes PID 1's resident memory (VmRSS).
# TYPE keel_init_resident_memory_bytes gauge
keel_init_resident_memory_bytes 2.097152e+07
`
	names := []string{"keel_info", "keel_service_restarts_total", "keel_service_state", "keel_slot_info", "keel_upgrade_state", "keel_upgrades_recorded", "keel_boot_phase_seconds", "keel_init_resident_memory_bytes"}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndLint(m.Registry()); err != nil || len(n) > 0 {
		t.Errorf("lint: %v %v", n, err)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	for _, w := range []string{"go_goroutines", "process_resident_memory_bytes", "keel_uptime_seconds 42"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("exposition lacks %q", w)
		}
	}
}

// TestUpgradeObserved: a state is timed only when this init saw it entered; an upgrade is
// counted once, by the change that ends it (not when a later boot reads the ended record).
func TestUpgradeObserved(t *testing.T) {
	m := New(func() netapi.Status { return netapi.Status{} })
	t0 := time.Unix(1000, 0)
	u := func(id string, s upgrade.State) *upgrade.Upgrade {
		return &upgrade.Upgrade{ID: id, State: s, RequestedAt: t0}
	}
	// This boot sees u1 in "rebooting" (entered by the boot before), then its trial and the end.
	m.Upgrade(u("u1", upgrade.Rebooting), u("u1", upgrade.Rebooting), t0.Add(100*time.Second))
	m.Upgrade(u("u1", upgrade.Rebooting), u("u1", upgrade.Trial), t0.Add(101*time.Second))
	m.Upgrade(u("u1", upgrade.Trial), u("u1", upgrade.Committing), t0.Add(131*time.Second))
	m.Upgrade(u("u1", upgrade.Committing), u("u1", upgrade.Done), t0.Add(132*time.Second))
	m.Upgrade(u("u1", upgrade.Done), u("u1", upgrade.Done), t0.Add(133*time.Second)) // a later report
	// A new upgrade refused at once.
	m.Upgrade(u("u1", upgrade.Done), u("u2", upgrade.Aborted), t0.Add(140*time.Second))
	if c := testutil.CollectAndCount(m.stateSec); c != 2 {
		t.Errorf("%d states timed, want 2 (trial, committing; not rebooting, entered before this init)", c)
	}
	if n := testutil.ToFloat64(m.finished.WithLabelValues("done")); n != 1 {
		t.Errorf("done counted %v times, want 1", n)
	}
	if n := testutil.ToFloat64(m.finished.WithLabelValues("aborted")); n != 1 {
		t.Errorf("aborted counted %v times, want 1", n)
	}
	// The next boot reads the ended record: nothing counted.
	m2 := New(func() netapi.Status { return netapi.Status{} })
	m2.Upgrade(u("u1", upgrade.Done), u("u1", upgrade.Done), t0.Add(500*time.Second))
	if c := testutil.CollectAndCount(m2.finished); c != 0 {
		t.Errorf("a record read at boot counted %d times", c)
	}
}
