package netapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"keel/events"
	"keel/journal"
	"keel/machine"
	"keel/pki"
	"keel/supervisor"
	"keel/upgrade"
)

type fakeNode struct {
	mu      sync.Mutex
	reboots int
	events  *events.Ring
	initLog *events.Ring
	resets  [][]string
	snapDir string
	journal *journal.Journal // a real one in a temporary directory, when a test makes it
	status  *Status          // what Status answers, if set
	succeed bool             // shutdown, cancel, activate and rollback succeed
}

func (f *fakeNode) PastLog(name string, back int) ([]string, error) {
	if f.journal == nil {
		return nil, fmt.Errorf("%w: no logs kept", ErrNotFound)
	}
	b, err := f.journal.Boot(back)
	if err == nil {
		var paths []string
		if paths, err = journal.Paths(b.Dir, name); err == nil {
			return paths, nil
		}
	}
	return nil, fmt.Errorf("%w: %v", ErrNotFound, err)
}
func (f *fakeNode) Boots() ([]journal.Boot, error) {
	if f.journal == nil {
		return nil, nil
	}
	return f.journal.Boots()
}

func (f *fakeNode) Services() []supervisor.Status {
	return []supervisor.Status{{Name: "db", State: supervisor.Healthy}}
}
func (f *fakeNode) RestartService(name string) error {
	if name != "db" {
		return fmt.Errorf("%w: service %q", ErrNotFound, name)
	}
	return nil
}
func (f *fakeNode) LogRing(name string) (*events.Ring, error) {
	if name != "init" {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return f.initLog, nil
}
func (f *fakeNode) Events() *events.Ring { return f.events }
func (f *fakeNode) Dmesg(ctx context.Context, follow bool, emit func(any) error) error {
	return emit(machine.KmsgRecord{Seq: 1, Level: 6, Micros: 12, Message: "kernel says hi"})
}
func (f *fakeNode) Reset(wipe []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resets = append(f.resets, wipe)
	return nil
}

// EtcdSnapshot serves one file, named "etcd-n1.db", from the test's directory.
func (f *fakeNode) EtcdSnapshot(name string) (File, error) {
	if name != "etcd-n1.db" || f.snapDir == "" {
		return nil, fmt.Errorf("%w: no etcd snapshot %q", ErrNotFound, name)
	}
	return os.Open(filepath.Join(f.snapDir, name))
}

func (f *fakeNode) Status() Status {
	if f.status != nil {
		return *f.status
	}
	return Status{Version: "v9", BootedSlot: "A"}
}
func (f *fakeNode) Version() Version { return Version{Version: "v9"} }
func (f *fakeNode) Reboot(string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reboots++
	return nil
}
func (f *fakeNode) Shutdown(string) error {
	if f.succeed {
		return nil
	}
	return errors.New("already shutting down")
}
func (f *fakeNode) StartUpgrade(r UpgradeRequest) (UpgradeAccepted, error) {
	if r.Image == "busy" {
		return UpgradeAccepted{}, fmt.Errorf("%w: busy", ErrConflict)
	}
	return UpgradeAccepted{ID: "id1", Status: "accepted"}, nil
}
func (f *fakeNode) CancelUpgrade() error {
	if f.succeed {
		return nil
	}
	return fmt.Errorf("%w: no upgrade in flight", ErrConflict)
}
func (f *fakeNode) ActivateUpgrade(id string) (UpgradeAccepted, error) {
	if id == "stale" { // as the executor refuses a staged upgrade it will never activate
		return UpgradeAccepted{}, UpgradeError(fmt.Errorf("%w: %w: signature check: key k expired", upgrade.ErrRefused, upgrade.ErrStale))
	}
	if f.succeed {
		return UpgradeAccepted{ID: "id1", Status: "activating"}, nil
	}
	return UpgradeAccepted{}, fmt.Errorf("%w: no staged upgrade to activate", ErrConflict)
}
func (f *fakeNode) Rollback() error {
	if f.succeed {
		return nil
	}
	return fmt.Errorf("%w: slot B is empty", ErrPrecondition)
}

type env struct {
	url   string
	ca    *pki.CA
	node  *fakeNode
	roots *x509.CertPool
}

// newEnv serves the real handler over real mTLS on 127.0.0.1.
func newEnv(t *testing.T) *env {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA("test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvPair, err := ca.Issue(pki.Request{CommonName: "node", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, Now: now, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := TLSConfig(ca.CertPEM, srvPair.CertPEM, srvPair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	node := &fakeNode{events: events.NewRing(100, 0), initLog: events.NewRing(100, 0)}
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "keel_test 1\n") })
	srv, _ := Serve(ln, New(Options{Node: node, Log: slog.Default(), Metrics: metrics}), cfg, slog.Default())
	t.Cleanup(func() { srv.Close() })
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	return &env{url: "https://" + ln.Addr().String(), ca: ca, node: node, roots: roots}
}

func (e *env) client(t *testing.T, ca *pki.CA, orgs ...string) *http.Client {
	t.Helper()
	tc := &tls.Config{RootCAs: e.roots}
	if ca != nil {
		p, err := ca.Issue(pki.Request{CommonName: "c", Orgs: orgs, Client: true, Now: time.Now(), Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 5 * time.Second}
}

func do(t *testing.T, c *http.Client, method, url string) (int, ErrorBody, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var eb ErrorBody
	json.Unmarshal(b, &eb)
	return resp.StatusCode, eb, b
}

func TestRoles(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, method, path string
		orgs               []string
		want               int
		code               string
	}{
		{"reader reads status", "GET", "/v1/status", []string{"reader"}, 200, ""},
		{"reader cannot reboot", "POST", "/v1/reboot", []string{"reader"}, 403, "forbidden"},
		{"no role reads nothing", "GET", "/v1/status", nil, 403, "forbidden"},
		{"operator reboots", "POST", "/v1/reboot", []string{"operator"}, 202, ""},
		{"operator cannot shut down", "POST", "/v1/shutdown", []string{"operator"}, 403, "forbidden"},
		{"highest role wins", "POST", "/v1/reboot", []string{"reader", "operator"}, 202, ""},
		{"admin conflict is JSON", "POST", "/v1/shutdown", []string{"admin"}, 409, "busy"},
		{"wrong method", "GET", "/v1/reboot", []string{"admin"}, 405, "method_not_allowed"},
		{"unknown path", "GET", "/v1/nope", []string{"admin"}, 404, "not_found"},
		{"reader scrapes metrics", "GET", "/metrics", []string{"reader"}, 200, ""},
		{"no role scrapes nothing", "GET", "/metrics", nil, 403, "forbidden"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, eb, body := do(t, e.client(t, e.ca, tc.orgs...), tc.method, e.url+tc.path)
			if got != tc.want || eb.Error.Code != tc.code {
				t.Errorf("%s %s = %d %q, want %d %q: %s", tc.method, tc.path, got, eb.Error.Code, tc.want, tc.code, body)
			}
		})
	}
	if e.node.reboots != 2 {
		t.Errorf("reboots = %d, want 2", e.node.reboots)
	}
}

func TestRefusedWithoutTrustedCert(t *testing.T) {
	e := newEnv(t)
	other, err := pki.NewCA("other CA", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*http.Client{
		"no certificate":        e.client(t, nil),
		"certificate, other CA": e.client(t, other, "admin"),
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := c.Get(e.url + "/v1/status")
			if err == nil {
				resp.Body.Close()
				t.Fatalf("got %d, want a failed handshake", resp.StatusCode)
			}
		})
	}
}

func TestUpgradeEndpoint(t *testing.T) {
	e := newEnv(t)
	admin := e.client(t, e.ca, "admin")
	post := func(body string) (int, ErrorBody, []byte) {
		resp, err := admin.Post(e.url+"/v1/upgrade", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var eb ErrorBody
		json.Unmarshal(b, &eb)
		return resp.StatusCode, eb, b
	}
	for _, tc := range []struct {
		body string
		want int
	}{
		{`{"image":"r/x:1","preserve":true}`, 202},
		{`{"image":"busy"}`, 409},
		{`{`, 400},
		{`{"image":""}`, 400},
		{`{"image":"x","extra":1}`, 400},
		{`{"image":"x"}{"image":"y"}`, 400},
		{`[]`, 400},
		{strings.Repeat(" ", 2<<20) + `{"image":"x"}`, 400}, // over the 1 MiB body limit
	} {
		code, eb, b := post(tc.body)
		if code != tc.want || (code >= 400 && eb.Error.Code == "") {
			t.Errorf("POST %.40q = %d %s, want %d with a JSON error", tc.body, code, b, tc.want)
		}
	}
	code, eb, _ := do(t, admin, "POST", e.url+"/v1/rollback")
	if code != http.StatusPreconditionFailed || eb.Error.Code != "precondition_failed" {
		t.Errorf("rollback = %d %+v", code, eb)
	}
	code, eb, _ = do(t, admin, "POST", e.url+"/v1/upgrade/cancel")
	if code != http.StatusConflict || eb.Error.Code == "" {
		t.Errorf("cancel with nothing in flight = %d %+v, want 409", code, eb)
	}
	code, eb, _ = do(t, admin, "POST", e.url+"/v1/upgrade/activate")
	if code != http.StatusConflict || !strings.Contains(eb.Error.Message, "no staged upgrade") {
		t.Errorf("activate with nothing staged = %d %+v, want 409", code, eb)
	}
	// A staged upgrade the node will never activate: its own code, so that a caller (the
	// controller) discards it instead of trying again.
	resp, err := admin.Post(e.url+"/v1/upgrade/activate", "application/json", strings.NewReader(`{"id":"stale"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if json.Unmarshal(b, &eb) != nil || resp.StatusCode != http.StatusPreconditionFailed || eb.Error.Code != "stale_staged" || !strings.Contains(eb.Error.Message, "key k expired") {
		t.Errorf("activate of a stale staged upgrade = %d %s, want 412 stale_staged", resp.StatusCode, b)
	}
	operator := e.client(t, e.ca, "operator")
	for _, path := range []string{"/v1/upgrade/cancel", "/v1/upgrade/activate"} {
		if code, _, _ = do(t, operator, "POST", e.url+path); code != http.StatusForbidden {
			t.Errorf("%s as operator = %d, want 403", path, code)
		}
	}
}

func TestStreams(t *testing.T) {
	e := newEnv(t)
	reader := e.client(t, e.ca, "reader")
	reader.Timeout = 0
	for i := range 5 {
		e.node.initLog.Append(fmt.Sprintf("old %d", i))
	}
	// History only.
	code, _, b := do(t, reader, "GET", e.url+"/v1/logs/init?tail=2")
	if code != 200 || string(b) != "{\"line\":\"old 3\"}\n{\"line\":\"old 4\"}\n" {
		t.Errorf("tail=2: %d %q", code, b)
	}
	if code, eb, _ := do(t, reader, "GET", e.url+"/v1/logs/nope"); code != 404 || eb.Error.Code != "not_found" {
		t.Errorf("unknown log: %d %+v", code, eb)
	}
	if code, _, _ := do(t, reader, "GET", e.url+"/v1/logs/init?tail=x"); code != 400 {
		t.Errorf("bad tail: %d", code)
	}

	// Follow: history, then lines as they are written, then a clean end when the ring closes.
	resp, err := reader.Get(e.url + "/v1/events?follow=1&tail=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	go func() {
		for i := range 3 {
			e.node.events.Append(fmt.Sprintf(`{"seq":%d}`, i))
			time.Sleep(20 * time.Millisecond)
		}
		e.node.events.Close()
	}()
	var got []string
	for sc.Scan() {
		got = append(got, sc.Text())
	}
	if sc.Err() != nil || len(got) < 3 || got[len(got)-1] != `{"seq":2}` {
		t.Errorf("followed %q, err %v (want the 3 events, then a clean end)", got, sc.Err())
	}

	// Stream limit.
	var open []*http.Response
	for range MaxStreams {
		r, err := reader.Get(e.url + "/v1/logs/init?follow=1&tail=0")
		if err != nil || r.StatusCode != 200 {
			t.Fatalf("stream: %v %v", err, r)
		}
		open = append(open, r)
	}
	if code, eb, _ := do(t, reader, "GET", e.url+"/v1/logs/init?follow=1"); code != http.StatusTooManyRequests || eb.Error.Code != "too_many_streams" {
		t.Errorf("stream %d: %d %+v, want 429", MaxStreams+1, code, eb)
	}
	for _, r := range open {
		r.Body.Close()
	}
	code, _, b = do(t, reader, "GET", e.url+"/v1/dmesg")
	if code != 200 || !strings.Contains(string(b), "kernel says hi") {
		t.Errorf("dmesg: %d %s", code, b)
	}
}

// TestPastBootLogs: ?boot=-1 reads the log the boot before kept on disk (a real journal),
// tail applies; a boot or a log not kept is 404; following or a positive boot is 400;
// /v1/boots lists the boots, this one first.
func TestPastBootLogs(t *testing.T) {
	e := newEnv(t)
	reader := e.client(t, e.ca, "reader")
	root := t.TempDir()
	prev, err := journal.Start(root, "b1", journal.Info{Version: "v2", Slot: "B"}, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ring := events.NewRing(100, 0)
	prev.Follow(ring, "init")
	for i := range 5 {
		ring.Append(fmt.Sprintf("trial %d", i))
	}
	prev.Close()
	if e.node.journal, err = journal.Start(root, "b2", journal.Info{Version: "v1", Slot: "A"}, journal.Options{}); err != nil {
		t.Fatal(err)
	}
	if code, _, b := do(t, reader, "GET", e.url+"/v1/logs/init?boot=-1&tail=2"); code != 200 || string(b) != "{\"line\":\"trial 3\"}\n{\"line\":\"trial 4\"}\n" {
		t.Errorf("boot=-1 tail=2: %d %q", code, b)
	}
	for url, want := range map[string]int{
		"/v1/logs/init?boot=-2":          404,
		"/v1/logs/kubelet?boot=-1":       404,
		"/v1/logs/init?boot=-1&follow=1": 400,
		"/v1/logs/init?boot=1":           400,
		"/v1/logs/init?boot=x":           400,
	} {
		if code, eb, _ := do(t, reader, "GET", e.url+url); code != want || eb.Error.Message == "" {
			t.Errorf("%s: %d %+v, want %d", url, code, eb, want)
		}
	}
	code, _, b := do(t, reader, "GET", e.url+"/v1/boots")
	var bs Boots
	if err := json.Unmarshal(b, &bs); code != 200 || err != nil || len(bs.Boots) != 2 || bs.Boots[0].BootID != "b2" || bs.Boots[1].Boot != -1 || bs.Boots[1].Version != "v2" || !slices.Equal(bs.Boots[1].Logs, []string{"init"}) {
		t.Errorf("boots: %d %s", code, b)
	}
}

func TestServicesAndReset(t *testing.T) {
	e := newEnv(t)
	op, admin := e.client(t, e.ca, "operator"), e.client(t, e.ca, "admin")
	if code, _, b := do(t, op, "GET", e.url+"/v1/services"); code != 200 || !strings.Contains(string(b), `"healthy"`) {
		t.Errorf("services: %d %s", code, b)
	}
	if code, _, _ := do(t, op, "POST", e.url+"/v1/services/db/restart"); code != 202 {
		t.Errorf("restart db: %d", code)
	}
	if code, _, _ := do(t, op, "POST", e.url+"/v1/services/nope/restart"); code != 404 {
		t.Errorf("restart unknown: %d", code)
	}
	if code, _, _ := do(t, e.client(t, e.ca, "reader"), "POST", e.url+"/v1/services/db/restart"); code != 403 {
		t.Errorf("reader restart: %d", code)
	}
	post := func(c *http.Client, body string) int {
		resp, err := c.Post(e.url+"/v1/reset", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for body, want := range map[string]int{
		`{"wipe":["EPHEMERAL"]}`:             202,
		`{"wipe":["EPHEMERAL","STATE"]}`:     202,
		`{"wipe":[]}`:                        400,
		`{"wipe":["META"]}`:                  400,
		`{"wipe":["EPHEMERAL","EPHEMERAL"]}`: 400,
		`{"wipe":["ephemeral"]}`:             400,
		`{}`:                                 400,
	} {
		if got := post(admin, body); got != want {
			t.Errorf("reset %s = %d, want %d", body, got, want)
		}
	}
	if post(op, `{"wipe":["EPHEMERAL"]}`) != 403 {
		t.Error("operator may reset")
	}
	if len(e.node.resets) != 2 {
		t.Errorf("resets = %v", e.node.resets)
	}
}

// TestEtcdSnapshotDownload: a saved snapshot is sent to an admin whole, and to nobody else; a
// name that is not a snapshot is 404.
func TestEtcdSnapshotDownload(t *testing.T) {
	e := newEnv(t)
	e.node.snapDir = t.TempDir()
	body := bytes.Repeat([]byte("bolt"), 100000)
	os.WriteFile(filepath.Join(e.node.snapDir, "etcd-n1.db"), body, 0o600)
	admin := e.client(t, e.ca, "admin")
	code, _, b := do(t, admin, "GET", e.url+"/v1/etcd/snapshots/etcd-n1.db")
	if code != http.StatusOK || !bytes.Equal(b, body) {
		t.Errorf("admin: %d, %d bytes", code, len(b))
	}
	if code, eb, _ := do(t, e.client(t, e.ca, "operator"), "GET", e.url+"/v1/etcd/snapshots/etcd-n1.db"); code != http.StatusForbidden || eb.Error.Code != "forbidden" {
		t.Errorf("operator: %d %+v", code, eb)
	}
	for _, name := range []string{"nope.db", "..%2Fconfig.json"} {
		if code, eb, _ := do(t, admin, "GET", e.url+"/v1/etcd/snapshots/"+name); code != http.StatusNotFound {
			t.Errorf("%s: %d %+v", name, code, eb)
		}
	}
}
