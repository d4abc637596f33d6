package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"keel/config"
	"keel/events"
	"keel/internal/testenv/apitest"
	"keel/internal/testenv/promtest"
	"keel/internal/testenv/vmtest"
	"keel/netapi"
	"keel/supervisor"
)

// twoServices: db serves /healthz; app waits for db (After) and is checked over TCP.
func twoServices() config.Config {
	ms := func(d time.Duration) supervisor.Duration { return supervisor.Duration(d) }
	return config.Config{Role: "worker", Services: []supervisor.Spec{
		{Name: "app", After: []string{"db"}, Command: []string{"/bin/testsvc", "-name", "app", "-listen", "127.0.0.1:7002", "-depends", "127.0.0.1:7001", "-tick", "1s"},
			Health: &supervisor.Check{TCP: "127.0.0.1:7002", Interval: ms(300 * time.Millisecond)}, Grace: ms(3 * time.Second)},
		{Name: "db", Command: []string{"/bin/testsvc", "-name", "db", "-listen", "127.0.0.1:7001", "-tick", "300ms"},
			Health: &supervisor.Check{HTTP: "http://127.0.0.1:7001/healthz", Interval: ms(300 * time.Millisecond)}, Grace: ms(3 * time.Second)},
		{Name: "cp-only", Command: []string{"/bin/testsvc"}, Roles: []string{"control-plane"}},
	}}
}

func services(t *testing.T, vm *vmtest.VM) map[string]supervisor.Status {
	t.Helper()
	code, b, err := vm.Call("reader", "GET", "/v1/services", nil)
	if err != nil || code != 200 {
		t.Fatalf("services: %d %v %s", code, err, b)
	}
	var r struct{ Services []supervisor.Status }
	json.Unmarshal(b, &r)
	m := map[string]supervisor.Status{}
	for _, s := range r.Services {
		m[s.Name] = s
	}
	return m
}

func waitHealthy(t *testing.T, vm *vmtest.VM, names ...string) map[string]supervisor.Status {
	t.Helper()
	deadline := time.Now().Add(bootTimeout)
	for {
		m := services(t, vm)
		ok := true
		for _, n := range names {
			ok = ok && m[n].State == supervisor.Healthy
		}
		if ok {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("services not healthy: %+v", m)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// stream opens a follow stream as role and returns a line scanner over it.
func stream(t *testing.T, vm *vmtest.VM, role, path string) (*bufio.Scanner, func()) {
	t.Helper()
	c := vm.StreamClient(role)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", vm.URL(path), nil)
	resp, err := c.Do(req)
	if err != nil || resp.StatusCode != 200 {
		cancel()
		t.Fatalf("GET %s: %v %v", path, err, resp)
	}
	return bufio.NewScanner(resp.Body), func() { cancel(); resp.Body.Close() }
}

// TestServices boots a node with two services, one depending on the other: both come up
// healthy in order; a follow stream of a service's log delivers lines as they are written;
// a follow stream of events shows the whole ordered shutdown of POST /v1/reboot and ends
// cleanly; the node comes back with both services healthy again.
func TestServices(t *testing.T) {
	t.Parallel()
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e", TestSvc: true, Config: twoServices()}))
	vm.Start()
	vm.WaitReady(bootTimeout)
	m := waitHealthy(t, vm, "db", "app")
	if _, ok := m["cp-only"]; ok {
		t.Error("a control-plane-only service runs on a worker")
	}

	// The log follow stream delivers new lines as they are written.
	sc, closeLog := stream(t, vm, "reader", "/v1/logs/db?follow=1&tail=0")
	tick := regexp.MustCompile(`^db: tick (\d+)$`)
	var seen []string
	for len(seen) < 3 && sc.Scan() {
		var l netapi.LogLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && tick.MatchString(l.Line) {
			seen = append(seen, l.Line)
		}
	}
	closeLog()
	if len(seen) < 3 || seen[0] == seen[1] {
		t.Fatalf("followed db log: %q", seen)
	}
	// The app saw its dependency before serving.
	code, b, _ := vm.Call("reader", "GET", "/v1/logs/app?tail=100", nil)
	if code != 200 || !strings.Contains(string(b), "app: dependency 127.0.0.1:7001 up") {
		t.Errorf("app log: %d %s", code, b)
	}
	if code, b, _ := vm.Call("reader", "GET", "/v1/logs/init?tail=3", nil); code != 200 || strings.Count(string(b), "\n") != 3 {
		t.Errorf("init log: %d %q", code, b)
	}
	if code, b, _ := vm.Call("reader", "GET", "/v1/dmesg", nil); code != 200 || !strings.Contains(string(b), "Linux version") {
		t.Errorf("dmesg: %d %.200s", code, b)
	}

	// Restart by API: operator yes, reader no.
	if code, _, _ := vm.Call("reader", "POST", "/v1/services/db/restart", nil); code != http.StatusForbidden {
		t.Errorf("reader restart: %d, want 403", code)
	}
	if code, b, _ := vm.Call("operator", "POST", "/v1/services/db/restart", nil); code != http.StatusAccepted {
		t.Fatalf("operator restart: %d %s", code, b)
	}
	deadline := time.Now().Add(bootTimeout)
	for services(t, vm)["db"].Restarts < 1 || services(t, vm)["db"].State != supervisor.Healthy {
		if time.Now().After(deadline) {
			t.Fatalf("db not restarted: %+v", services(t, vm)["db"])
		}
		time.Sleep(300 * time.Millisecond)
	}

	// A real Prometheus scrapes the node's /metrics over mTLS (a reader certificate) and
	// reads them back through its query API: the restart, the states, the running version.
	prom := promtest.Start(t, promtest.Target{Job: "keel", Addr: strings.TrimPrefix(vm.URL(""), "https://"), Path: "/metrics",
		CA: filepath.Join(vm.PKIDir(), "ca.crt"), Cert: filepath.Join(vm.PKIDir(), "reader.crt"), Key: filepath.Join(vm.PKIDir(), "reader.key")})
	one := func(s []promtest.Sample) bool { return len(s) == 1 && s[0].Value >= 1 }
	prom.WaitFor(`up{job="keel"}`, time.Minute, one)
	prom.WaitFor(`keel_service_restarts_total{service="db"}`, time.Minute, one)
	prom.WaitFor(`keel_service_state{service="app",state="healthy"}`, time.Minute, one)
	prom.WaitFor(`keel_info{version="v1.0.0-e2e",booted_slot="A"}`, time.Minute, one)
	rss := prom.WaitFor(`keel_init_resident_memory_bytes`, time.Minute, one)
	phases := prom.WaitFor(`count(keel_boot_phase_seconds)`, time.Minute, func(s []promtest.Sample) bool { return len(s) == 1 && s[0].Value > 10 })
	t.Logf("prometheus reads the node: db restarted, app healthy, PID 1 RSS %.1f MiB, %v boot phases timed", rss[0].Value/(1<<20), phases[0].Value)

	// The node's real answers match its OpenAPI document (kin-openapi validates both).
	code, doc, err := vm.Call("reader", "GET", "/v1/openapi.json", nil)
	if err != nil || code != 200 {
		t.Fatalf("openapi.json: %d %v", code, err)
	}
	v, err := apitest.New(doc, vm.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/status", "/v1/version", "/v1/services", "/v1/logs/db?tail=5", "/v1/logs/init?tail=50", "/v1/events?tail=100",
		"/v1/dmesg", "/v1/boots", "/metrics", "/v1/logs/nope", "/v1/logs/init?boot=-1"} {
		req, _ := http.NewRequest("GET", vm.URL(path), nil)
		resp, err := vm.StreamClient("reader").Do(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := v.Check(req, nil, resp.StatusCode, resp.Header, b); err != nil {
			t.Errorf("the node's answer does not match its OpenAPI document: %v", err)
		}
	}

	// Reboot while following events: reader may not, operator may.
	if code, _, _ := vm.Call("reader", "POST", "/v1/reboot", nil); code != http.StatusForbidden {
		t.Errorf("reader reboot: %d, want 403", code)
	}
	sc, closeEv := stream(t, vm, "reader", "/v1/events?follow=1&tail=0")
	defer closeEv()
	if code, b, _ := vm.Call("operator", "POST", "/v1/reboot", nil); code != http.StatusAccepted {
		t.Fatalf("reboot: %d %s", code, b)
	}
	var got []string
	for sc.Scan() {
		var e events.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("event line %q: %v", sc.Text(), err)
		}
		got = append(got, e.Kind+" "+e.Source+" "+e.Message)
	}
	if err := sc.Err(); err != nil {
		t.Errorf("event stream ended with %v, want a clean end", err)
	}
	order := []string{"power reboot", "shutdown begin reboot", "service app stopped", "service db stopped", "shutdown services done",
		"shutdown unmount /var done", "shutdown unmount /state done", "shutdown done reboot"}
	at := 0
	for _, g := range got {
		if at < len(order) && strings.HasPrefix(g, order[at]) {
			at++
		}
	}
	if at != len(order) {
		t.Errorf("events lack %q in order; got:\n%s", order[at], strings.Join(got, "\n"))
	}
	vm.WaitReady(bootTimeout)
	waitHealthy(t, vm, "db", "app")
}

// TestReset wipes EPHEMERAL only: the node comes back with a new, empty /var, and STATE (its
// keys and config) untouched, so the endpoint still answers with the same certificates.
func TestReset(t *testing.T) {
	t.Parallel()
	vm := vmtest.New(t, image(t, vmtest.ImageOptions{VersionA: "v1.0.0-e2e"}))
	before := bootTwice(t, vm)
	for body, want := range map[string]int{`{"wipe":["META"]}`: 400, `{"wipe":[]}`: 400} {
		if code, _, _ := vm.CallRaw("admin", "POST", "/v1/reset", []byte(body)); code != want {
			t.Errorf("reset %s: %d, want %d", body, code, want)
		}
	}
	if code, _, _ := vm.CallRaw("operator", "POST", "/v1/reset", []byte(`{"wipe":["EPHEMERAL"]}`)); code != http.StatusForbidden {
		t.Errorf("operator reset: %d, want 403", code)
	}
	if code, b, err := vm.CallRaw("admin", "POST", "/v1/reset", []byte(`{"wipe":["EPHEMERAL"]}`)); err != nil || code != http.StatusAccepted {
		t.Fatalf("reset: %d %v %s", code, err, b)
	}
	vm.Expect(`reset: partition wiped.*partition=EPHEMERAL`, downTimeout)
	vm.WaitReady(bootTimeout)
	st := vm.Status()
	e, e0 := partition(st, "EPHEMERAL"), partition(before, "EPHEMERAL")
	s, s0 := partition(st, "STATE"), partition(before, "STATE")
	if st.BootCount != 0 || e.FSUUID == e0.FSUUID || s.FSUUID != s0.FSUUID {
		t.Errorf("after reset: boot count %d, EPHEMERAL %s→%s, STATE %s→%s", st.BootCount, e0.FSUUID, e.FSUUID, s0.FSUUID, s.FSUUID)
	}
}
