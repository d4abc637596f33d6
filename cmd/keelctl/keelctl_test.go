package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"keel/boot"
	"keel/events"
	"keel/journal"
	"keel/netapi"
	"keel/netapi/client"
	"keel/pki"
	"keel/supervisor"
	"keel/upgrade"
)

// simNode is a node behind netapi's real server whose upgrade walks its states by a script,
// publishing the events a node publishes, and "reboots": its endpoint closes (streams end),
// stays away, and comes back on the same address with a new boot. A fake: a real node's
// upgrade is in e2e (TestUpgradeAndRollback drives keelctl against a QEMU node); this one
// reaches every outcome quickly and on demand.
type simNode struct {
	netapi.Node
	t        *testing.T
	addr     string
	tlsCfg   *tlsFiles
	fail     string // the trial's failure reason ("": the upgrade ends done)
	quick    bool   // the trial is over before a client can reconnect
	mu       sync.Mutex
	cur      *upgrade.Upgrade
	history  []upgrade.Upgrade
	bus      *events.Bus
	initLog  *events.Ring
	srv      interface{ Close() error }
	bootID   string
	journal  *journal.Journal
	requests []netapi.UpgradeRequest
	done     chan struct{} // closed when the test ends: the script stops
	walking  sync.WaitGroup
}

func (s *simNode) over() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

type tlsFiles struct{ ca, cert, key []byte }

func (s *simNode) Status() netapi.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := netapi.Status{Version: "v1.0.0", BootedSlot: "A", CommittedSlot: "A", BootID: s.bootID, History: s.history,
		Services: []supervisor.Status{{Name: "containerd", State: supervisor.Healthy}}}
	if s.cur != nil {
		u := *s.cur
		st.Upgrade = &u
	}
	return st
}
func (s *simNode) Version() netapi.Version {
	return netapi.Version{Version: "v1.0.0", GoVersion: "go1.x", Kernel: "6.1"}
}
func (s *simNode) Services() []supervisor.Status {
	return []supervisor.Status{{Name: "containerd", State: supervisor.Healthy, PID: 42, Since: time.Unix(0, 0)}}
}
func (s *simNode) Events() *events.Ring {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bus.Ring()
}
func (s *simNode) LogRing(name string) (*events.Ring, error) {
	if name != "init" {
		return nil, fmt.Errorf("%w: no log %q", netapi.ErrNotFound, name)
	}
	return s.initLog, nil
}
func (s *simNode) PastLog(name string, back int) ([]string, error) {
	b, err := s.journal.Boot(back)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", netapi.ErrNotFound, err)
	}
	return journal.Paths(b.Dir, name)
}
func (s *simNode) Boots() ([]journal.Boot, error) { return s.journal.Boots() }

func (s *simNode) StartUpgrade(r netapi.UpgradeRequest) (netapi.UpgradeAccepted, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil && !s.cur.State.Terminal() {
		return netapi.UpgradeAccepted{}, fmt.Errorf("%w: upgrade %s is in progress", netapi.ErrConflict, s.cur.ID)
	}
	s.requests = append(s.requests, r)
	s.cur = &upgrade.Upgrade{ID: "u1", Image: r.Image, State: upgrade.Pulling, FromVersion: "v1.0.0", ToVersion: "v2.0.0", FromSlot: boot.SlotA, ToSlot: boot.SlotB}
	s.walking.Add(1)
	go func() {
		defer s.walking.Done()
		s.walk()
	}()
	return netapi.UpgradeAccepted{ID: "u1", Status: "accepted"}, nil
}

func (s *simNode) set(st upgrade.State, reason string) {
	if s.over() {
		return
	}
	s.mu.Lock()
	s.cur.State, s.cur.Reason = st, reason
	id, bus := s.cur.ID, s.bus
	s.mu.Unlock()
	bus.Publish("upgrade", id, string(st), map[string]any{"reason": reason})
	time.Sleep(50 * time.Millisecond)
}

func (s *simNode) walk() {
	s.mu.Lock()
	stage := s.requests[len(s.requests)-1].Stage
	s.mu.Unlock()
	if stage {
		s.set(upgrade.Staging, "")
		s.bus.Publish("upgrade", "u1", "progress", map[string]any{"written": 60 << 20, "total": 120 << 20})
		time.Sleep(100 * time.Millisecond)
		s.set(upgrade.Staged, "")
		return
	}
	for _, st := range []upgrade.State{upgrade.Pulling, upgrade.Cordoning, upgrade.Draining, upgrade.Stopping, upgrade.Writing} {
		s.set(st, "")
	}
	for i := int64(0); i <= 10; i++ {
		s.bus.Publish("upgrade", "u1", "progress", map[string]any{"written": i * 12 << 20, "total": 120 << 20})
		time.Sleep(20 * time.Millisecond)
	}
	s.set(upgrade.Arming, "")
	s.set(upgrade.Rebooting, "")
	s.bus.Publish("shutdown", "begin", "reboot", nil)
	time.Sleep(100 * time.Millisecond)
	s.reboot(1500 * time.Millisecond)
	s.set(upgrade.Trial, "")
	if !s.quick {
		time.Sleep(2500 * time.Millisecond) // the gates take a while: keelctl is back by now
	}
	s.bus.Publish("upgrade", "kubernetes-ready", "gate passed", nil)
	if !s.quick {
		time.Sleep(300 * time.Millisecond)
	}
	if s.fail != "" {
		s.reboot(500 * time.Millisecond)
		s.set(upgrade.RolledBack, s.fail)
		return
	}
	s.set(upgrade.Committing, "")
	s.set(upgrade.Done, "")
}

// reboot closes the endpoint (its streams end) and serves again after away, with a new boot.
func (s *simNode) reboot(away time.Duration) {
	if s.over() {
		return
	}
	s.mu.Lock()
	srv, bus := s.srv, s.bus
	s.mu.Unlock()
	bus.Close()
	srv.Close()
	time.Sleep(away)
	s.mu.Lock()
	s.bus = events.New(100, nil)
	s.bootID = s.bootID + "+"
	s.mu.Unlock()
	if err := s.serve(); err != nil && !s.over() {
		s.t.Errorf("sim node: %v", err)
	}
}

// serve listens on the node's address (the same after a reboot).
func (s *simNode) serve() error {
	if s.over() {
		return nil
	}
	cfg, err := netapi.TLSConfig(s.tlsCfg.ca, s.tlsCfg.cert, s.tlsCfg.key)
	if err != nil {
		return err
	}
	var ln net.Listener
	for range 50 {
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	s.addr = ln.Addr().String()
	srv, _ := netapi.Serve(ln, netapi.New(netapi.Options{Node: s, Log: slog.New(slog.DiscardHandler)}), cfg, slog.New(slog.DiscardHandler))
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	return nil
}

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// env is a sim node and a keelctl config with a context per role, plus one whose CA is not
// the node's and one whose endpoint nobody serves.
type env struct {
	node *simNode
	cfg  string
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	now := time.Now()
	if _, err := pki.EnsureDev(filepath.Join(dir, "pki"), []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"localhost"}, now); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.EnsureDev(filepath.Join(dir, "other"), []net.IP{net.IPv4(127, 0, 0, 1)}, nil, now); err != nil {
		t.Fatal(err)
	}
	j, err := journal.Start(filepath.Join(dir, "boots"), "b1", journal.Info{Version: "v2.0.0", Slot: "B"}, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	prev := events.NewRing(10, 0)
	j.Follow(prev, "init")
	prev.Append("upgrade: health gate failed gate=kubernetes-ready")
	j.Close()
	if j, err = journal.Start(filepath.Join(dir, "boots"), "b2", journal.Info{Version: "v1.0.0", Slot: "A"}, journal.Options{}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "pki")
	n := &simNode{t: t, addr: "127.0.0.1:0", tlsCfg: &tlsFiles{read(t, p, "ca.crt"), read(t, p, "server.crt"), read(t, p, "server.key")},
		bus: events.New(100, nil), initLog: events.NewRing(100, 0), bootID: "boot1", journal: j, done: make(chan struct{})}
	n.initLog.Append("keel init starting")
	if err := n.serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(n.done) // the script stops at its next step; then the endpoint closes
		n.walking.Wait()
		n.mu.Lock()
		defer n.mu.Unlock()
		n.srv.Close()
	})
	free, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := free.Addr().String()
	free.Close()
	ctxs := map[string]client.Context{}
	for _, role := range []string{"admin", "operator", "reader"} {
		ctxs[role] = client.Context{Endpoint: n.addr, CA: "pki/ca.crt", Cert: "pki/" + role + ".crt", Key: "pki/" + role + ".key"}
	}
	ctxs["otherca"] = client.Context{Endpoint: n.addr, CA: "other/ca.crt", Cert: "pki/admin.crt", Key: "pki/admin.key"}
	ctxs["othercert"] = client.Context{Endpoint: n.addr, CA: "pki/ca.crt", Cert: "other/admin.crt", Key: "other/admin.key"}
	ctxs["dead"] = client.Context{Endpoint: deadAddr, CA: "pki/ca.crt", Cert: "pki/admin.crt", Key: "pki/admin.key"}
	cfg := filepath.Join(dir, "keelctl.json")
	if err := (client.Config{Current: "admin", Contexts: ctxs}).Save(cfg); err != nil {
		t.Fatal(err)
	}
	return &env{node: n, cfg: cfg}
}

func (e *env) run(t *testing.T, tty bool, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), append([]string{"--config", e.cfg}, args...), &out, &errOut, tty)
	return code, out.String(), errOut.String()
}

func contains(t *testing.T, what, s string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, s)
		}
	}
}

// TestUpgradeWait: `upgrade --wait` shows each state, the write's progress, the node going
// away and answering again from its next boot, the trial's gate, and exits 0 on done; on a
// terminal the bar is redrawn in place. A rolled-back trial exits 1 with the reason and where
// to read why.
func TestUpgradeWait(t *testing.T) {
	e := newEnv(t)
	code, out, errOut := e.run(t, false, "upgrade", "--wait", "--preserve=false", "reg.test/keel:v2.0.0")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	contains(t, "output", out, "upgrade u1 to reg.test/keel:v2.0.0\n", "pulling reg.test/keel:v2.0.0", "writing 50% (60.0/120.0 MiB)",
		"writing 100%", "rebooting into slot B", "node does not answer (rebooting?)", "node answers again (boot of slot B)",
		"trial: v2.0.0 booted on slot B, health gates running", "gate passed: kubernetes-ready", "committing", "upgrade u1 done: v2.0.0 on slot B")
	if r := e.node.requests[0]; r.Preserve || r.Image != "reg.test/keel:v2.0.0" {
		t.Errorf("request %+v", r)
	}
	t.Logf("keelctl upgrade --wait (not a terminal):\n%s", out)

	e2 := newEnv(t)
	e2.node.fail = "health gate failed: kubernetes-ready: the node is not Ready"
	code, out, errOut = e2.run(t, true, "upgrade", "--wait", "reg.test/keel:v2.0.0")
	if code != exitFailed {
		t.Fatalf("exit %d, want 1\n%s\n%s", code, out, errOut)
	}
	contains(t, "terminal output", out, "\r\x1b[2K", "[###############...............]  50%", "rolled-back: health gate failed")
	contains(t, "error", errOut, "upgrade u1 rolled-back: health gate failed: kubernetes-ready", "keelctl logs init --boot -1")

	// A trial over before keelctl reconnects: its states and gates are shown from the new
	// boot's history.
	e4 := newEnv(t)
	e4.node.quick = true
	code, out, errOut = e4.run(t, false, "upgrade", "--wait", "reg.test/keel:v2.0.0")
	if code != 0 {
		t.Fatalf("quick trial: exit %d\n%s\n%s", code, out, errOut)
	}
	contains(t, "quick trial", out, "node answers again (boot of slot B)\n", "trial: v2.0.0 booted on slot B", "gate passed: kubernetes-ready", "committing", "upgrade u1 done")
	if i, j := strings.Index(out, "node answers again"), strings.Index(out, "trial:"); i < 0 || j < i {
		t.Errorf("the replayed trial comes before the node answered:\n%s", out)
	}

	// Staged: --wait ends once the slot is written.
	e3 := newEnv(t)
	code, out, errOut = e3.run(t, false, "upgrade", "--stage", "--wait", "reg.test/keel:v2.0.0")
	if code != 0 {
		t.Fatalf("stage --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	contains(t, "staged output", out, "staging", "upgrade u1 staged: v2.0.0 written to slot B; keelctl activate goes on with it")
}

// TestCommands: the read commands for people and as JSON, an earlier boot's log, a busy node.
func TestCommands(t *testing.T) {
	e := newEnv(t)
	code, out, _ := e.run(t, false, "status")
	contains(t, "status", out, "version   v1.0.0 (slot A booted, A committed)", "services  containerd healthy")
	if code != 0 {
		t.Errorf("status exit %d", code)
	}
	code, out, _ = e.run(t, false, "-o", "json", "status")
	var st netapi.Status
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Version != "v1.0.0" {
		t.Errorf("status -o json: %d %v %s", code, err, out)
	}
	_, out, _ = e.run(t, false, "services")
	contains(t, "services", out, "NAME", "containerd  healthy  42")
	_, out, _ = e.run(t, false, "logs", "init", "--context", "reader")
	if out != "keel init starting\n" {
		t.Errorf("logs init: %q", out)
	}
	_, out, _ = e.run(t, false, "logs", "--boot", "-1", "init")
	if out != "upgrade: health gate failed gate=kubernetes-ready\n" {
		t.Errorf("logs --boot -1: %q", out)
	}
	_, out, _ = e.run(t, false, "boots")
	contains(t, "boots", out, "BOOT", "-1 ", "v2.0.0")
	_, out, _ = e.run(t, false, "version")
	contains(t, "version", out, "v1.0.0 (go1.x, kernel 6.1)")
	e.run(t, false, "upgrade", "reg.test/keel:v2.0.0")
	code, _, errOut := e.run(t, false, "upgrade", "reg.test/keel:v3.0.0")
	if code != exitFailed {
		t.Errorf("a second upgrade: exit %d", code)
	}
	contains(t, "busy", errOut, "409 conflict", "upgrade u1 is in progress", "keelctl status says what")
}

// TestErrorsNameTheFix: each way of not getting through says why and what to do, with its
// exit code.
func TestErrorsNameTheFix(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"--context", "reader", "reboot"}, exitFailed, []string{"403 forbidden: POST /v1/reboot needs role operator; the certificate grants reader", "fix: use a context whose certificate has that role"}},
		{[]string{"--context", "dead", "status"}, exitNoReach, []string{"connection refused", "fix: is the node up"}},
		{[]string{"--context", "otherca", "status"}, exitNoReach, []string{"not signed by the CA in", "other/ca.crt", "fix: the context's ca must be the node's CA"}},
		{[]string{"--context", "othercert", "status"}, exitNoReach, []string{"refused this client certificate", "other/admin.crt"}},
		{[]string{"--context", "nope", "status"}, exitUsage, []string{`no context "nope"`, "admin, dead, operator, otherca, othercert, reader"}},
		{[]string{"--config", "/nonexistent/keelctl.json", "status"}, exitUsage, []string{"no keelctl config at /nonexistent/keelctl.json", "make pki"}},
		{[]string{"frobnicate"}, exitUsage, []string{`unknown command "frobnicate"`}},
		{[]string{"logs"}, exitUsage, []string{"takes NAME"}},
		{[]string{"reset"}, exitUsage, []string{"--wipe is required"}},
		{[]string{"-o", "yaml", "status"}, exitUsage, []string{"-o takes json"}},
	} {
		code, _, errOut := e.run(t, false, tc.args...)
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d\n%s", tc.args, code, tc.code, errOut)
		}
		contains(t, fmt.Sprint(tc.args), errOut, tc.want...)
	}
}
