package netapi

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"keel/events"
	"keel/internal/testenv/apitest"
	"keel/journal"
)

// fill sets every field reachable from v to a value that is not its zero (one element in each
// slice and map), so that every schema of the document is exercised by a real answer.
func fill(v reflect.Value, depth int) {
	if depth > 8 {
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.Type().Elem() == reflect.TypeOf(time.Time{}) || v.Type().Elem().Kind() != reflect.Interface {
			v.Set(reflect.New(v.Type().Elem()))
			fill(v.Elem(), depth+1)
		}
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			v.Set(reflect.ValueOf(time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), depth+1)
			}
		}
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(s.Index(0), depth+1)
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k, depth+1)
		fill(e, depth+1)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.String:
		v.SetString("A")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Interface:
		v.Set(reflect.ValueOf("any"))
	}
}

// TestOpenAPI: GET /v1/openapi.json is valid OpenAPI 3 (kin-openapi's loader and validator),
// names every registered route with its role, and every handler's real answers match it: each
// success (with a status whose every field is set, and with an empty one), each error class,
// and each line of the NDJSON streams. A route whose success answer was not checked fails
// the test, so a new route cannot go undocumented or unchecked.
func TestOpenAPI(t *testing.T) {
	e := newEnv(t)
	reader := e.client(t, e.ca, "reader")
	raw := func(c *http.Client, method, path string, body []byte) (*http.Request, *http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, e.url+path, bytes.NewReader(body))
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return req, resp, b
	}
	_, resp, doc := raw(reader, "GET", "/v1/openapi.json", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("openapi.json: %d %s", resp.StatusCode, doc)
	}
	v, err := apitest.New(doc, e.url)
	if err != nil {
		t.Fatal(err)
	}
	// Every registered route is documented, with its role.
	srv := New(Options{Node: e.node, Metrics: http.NotFoundHandler()})
	for _, r := range srv.routes {
		method, path, _ := strings.Cut(r.pattern, " ")
		item := v.Doc.Paths.Find(path)
		if item == nil || item.GetOperation(method) == nil {
			t.Errorf("route %s is not in the document", r.pattern)
			continue
		}
		if got := item.GetOperation(method).Extensions["x-keel-role"]; got != r.role.String() {
			t.Errorf("route %s: document says role %v, the server needs %s", r.pattern, got, r.role)
		}
	}

	full := Status{}
	fill(reflect.ValueOf(&full).Elem(), 0)
	bus := events.New(10, nil)
	bus.Publish("upgrade", "u1", "progress", map[string]any{"written": 1, "total": 2})
	bus.Publish("boot", "ready", "ready", nil)
	for _, l := range bus.Ring().Tail(0) {
		e.node.events.Append(l)
	}
	e.node.initLog.Append("keel init starting")
	root := t.TempDir()
	prev, _ := journal.Start(root, "b1", journal.Info{Version: "v1"}, journal.Options{})
	prev.Follow(e.node.initLog, "init")
	prev.Close()
	e.node.journal, _ = journal.Start(root, "b2", journal.Info{Version: "v2"}, journal.Options{})
	e.node.snapDir = t.TempDir()
	os.WriteFile(filepath.Join(e.node.snapDir, "etcd-n1.db"), []byte("snapshot"), 0o600)

	type call struct {
		role, method, path, body string
		want                     int
		setup                    func()
	}
	calls := []call{
		{"reader", "GET", "/v1/version", "", 200, nil},
		{"reader", "GET", "/v1/status", "", 200, nil},
		{"reader", "GET", "/v1/status", "", 200, func() { e.node.status = &full }},
		{"reader", "GET", "/v1/services", "", 200, nil},
		{"reader", "GET", "/v1/logs/init?tail=5", "", 200, nil},
		{"reader", "GET", "/v1/logs/init?boot=-1&tail=5", "", 200, nil},
		{"reader", "GET", "/v1/logs/init?boot=-3", "", 404, nil},
		{"reader", "GET", "/v1/logs/nope", "", 404, nil},
		{"reader", "GET", "/v1/logs/init?tail=x", "", 400, nil},
		{"reader", "GET", "/v1/boots", "", 200, nil},
		{"reader", "GET", "/v1/events?tail=10", "", 200, nil},
		{"reader", "GET", "/v1/events?follow=x", "", 400, nil},
		{"reader", "GET", "/v1/dmesg", "", 200, nil},
		{"reader", "GET", "/metrics", "", 200, nil},
		{"reader", "GET", "/v1/openapi.json", "", 200, nil},
		{"reader", "POST", "/v1/reboot", "", 403, nil},
		{"admin", "GET", "/v1/reboot", "", 405, nil},
		{"admin", "GET", "/v1/nope", "", 404, nil},
		{"operator", "POST", "/v1/reboot", "", 202, nil},
		{"admin", "POST", "/v1/shutdown", "", 409, nil},
		{"admin", "POST", "/v1/upgrade", `{"image": "reg/keel:v2", "preserve": true}`, 202, nil},
		{"admin", "POST", "/v1/upgrade", `{"image": "busy"}`, 409, nil},
		{"admin", "POST", "/v1/upgrade", `{"image": 7}`, 400, nil},
		{"admin", "POST", "/v1/upgrade/cancel", "", 409, nil},
		{"admin", "POST", "/v1/upgrade/activate", `{"id": "id1"}`, 409, nil},
		{"admin", "POST", "/v1/rollback", "", 412, nil},
		{"admin", "POST", "/v1/reset", `{"wipe": ["EPHEMERAL"]}`, 202, nil},
		{"admin", "POST", "/v1/reset", `{"wipe": ["BOOT_A"]}`, 400, nil},
		{"operator", "POST", "/v1/services/db/restart", "", 202, nil},
		{"operator", "POST", "/v1/services/nope/restart", "", 404, nil},
		{"admin", "GET", "/v1/etcd/snapshots/etcd-n1.db", "", 200, nil},
		{"admin", "GET", "/v1/etcd/snapshots/nope", "", 404, nil},
		{"admin", "POST", "/v1/shutdown", "", 202, func() { e.node.succeed = true }},
		{"admin", "POST", "/v1/upgrade/cancel", "", 200, nil},
		{"admin", "POST", "/v1/upgrade/activate", "", 202, nil},
		{"admin", "POST", "/v1/rollback", "", 202, nil},
	}
	clients := map[string]*http.Client{}
	for _, r := range []string{"reader", "operator", "admin"} {
		clients[r] = e.client(t, e.ca, r)
	}
	okSeen := map[string]bool{}
	for _, c := range calls {
		if c.setup != nil {
			c.setup()
		}
		var body []byte
		if c.body != "" {
			body = []byte(c.body)
		}
		req, resp, b := raw(clients[c.role], c.method, c.path, body)
		if resp.StatusCode != c.want {
			t.Errorf("%s %s: %d, want %d: %s", c.method, c.path, resp.StatusCode, c.want, b)
			continue
		}
		if err := v.Check(req, body, resp.StatusCode, resp.Header, b); err != nil {
			t.Errorf("%v", err)
		}
		if c.want < 300 {
			path, _, _ := strings.Cut(c.path, "?")
			okSeen[c.method+" "+path] = true
		}
	}
	// Every operation's success was checked.
	for path, item := range v.Doc.Paths.Map() {
		for method := range item.Operations() {
			seen := slices.ContainsFunc(mapsKeys(okSeen), func(k string) bool {
				m, p, _ := strings.Cut(k, " ")
				return m == method && matches(path, p)
			})
			if !seen {
				t.Errorf("%s %s: no success answer was checked against the document", method, path)
			}
		}
	}
	t.Logf("openapi.json: %d bytes, %d paths, %d schemas", len(doc), len(v.Doc.Paths.Map()), len(v.Doc.Components.Schemas))
}

func mapsKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// matches says whether a concrete path fits a templated one (/v1/logs/{name}).
func matches(tmpl, path string) bool {
	a, b := strings.Split(tmpl, "/"), strings.Split(path, "/")
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] && !strings.HasPrefix(a[i], "{") {
			return false
		}
	}
	return true
}

// TestOpenAPICatchesDrift: the checks are not vacuous — a field the schema does not know, or
// a route with no doc, is caught.
func TestOpenAPICatchesDrift(t *testing.T) {
	saved := routeDocs["GET /v1/version"]
	defer func() { routeDocs["GET /v1/version"] = saved }()
	delete(routeDocs, "GET /v1/version")
	if _, err := openAPI(New(Options{Node: &fakeNode{}}).routes); err == nil || !strings.Contains(err.Error(), "GET /v1/version has no OpenAPI doc") {
		t.Errorf("a route without a doc: %v", err)
	}
	routeDocs["GET /v1/version"] = saved
	doc, err := openAPI(New(Options{Node: &fakeNode{}}).routes)
	if err != nil {
		t.Fatal(err)
	}
	v, err := apitest.New(doc, "https://node")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "https://node/v1/version", nil)
	h := http.Header{"Content-Type": {"application/json"}}
	if err := v.Check(req, nil, 200, h, []byte(`{"version": "v1", "go_version": "go", "kernel": "k", "extra": 1}`)); err == nil {
		t.Error("a field the schema does not know passed")
	}
	if err := v.Check(req, nil, 200, h, []byte(`{"version": "v1", "go_version": "go"}`)); err == nil {
		t.Error("a missing field passed")
	}
	if err := v.Check(req, nil, 200, h, []byte(`{"version": "v1", "go_version": "go", "kernel": "k"}`)); err != nil {
		t.Error(err)
	}
	ev, _ := http.NewRequest("GET", "https://node/v1/events", nil)
	if err := v.Check(ev, nil, 200, http.Header{"Content-Type": {"application/x-ndjson"}}, []byte(fmt.Sprintln(`{"seq": "one"}`))); err == nil {
		t.Error("a stream line of the wrong shape passed")
	}
}
