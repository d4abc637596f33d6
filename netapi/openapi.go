package netapi

import (
	"encoding"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"keel/events"
	"keel/machine"
	"keel/supervisor"
)

// The OpenAPI 3 document (GET /v1/openapi.json) is generated from the code: the routes as
// registered (each with its role), the doc below for what a route takes and answers, and the
// JSON schemas of the Go types the handlers encode, by reflection. A route registered without
// a doc leaves the node without a document (GET /v1/openapi.json answers 500 saying why);
// TestOpenAPI fails on it, and validates every handler's real answers against the document.

// routeDoc describes one route.
type routeDoc struct {
	summary string
	query   []param
	body    any // request body type (nil: none)
	ok      int
	resp    any    // JSON answer's type
	lines   any    // NDJSON stream: each line's type
	raw     string // another content type (the answer is not JSON)
	errors  []int  // besides 403 (role) and 500 (the node failed), which every route may answer
}

type param struct{ name, typ, desc string }

var (
	tailParam   = param{"tail", "integer", "lines of history, 0-100000 (default 100; 0: none)"}
	followParam = param{"follow", "boolean", "1: keep the stream open and send every new line"}
)

// ServicesAnswer is GET /v1/services.
type ServicesAnswer struct {
	Services []supervisor.Status `json:"services"`
}

var routeDocs = map[string]routeDoc{
	"GET /v1/version":                  {summary: "version, Go version, kernel release", ok: 200, resp: Version{}},
	"GET /v1/status":                   {summary: "the node: slots, boot timing, partitions, services, the upgrade record", ok: 200, resp: Status{}},
	"POST /v1/reboot":                  {summary: "the ordered shutdown, then a reboot", ok: 202, resp: Accepted{}, errors: []int{409}},
	"POST /v1/shutdown":                {summary: "the ordered shutdown, then power off", ok: 202, resp: Accepted{}, errors: []int{409}},
	"POST /v1/upgrade":                 {summary: "start an upgrade (or stage one)", body: UpgradeRequest{}, ok: 202, resp: UpgradeAccepted{}, errors: []int{400, 409, 412}},
	"POST /v1/upgrade/cancel":          {summary: "end an upgrade that changed nothing yet, or discard a staged one", ok: 200, resp: Accepted{}, errors: []int{409}},
	"POST /v1/upgrade/activate":        {summary: "go on with the staged upgrade", body: ActivateRequest{}, ok: 202, resp: UpgradeAccepted{}, errors: []int{400, 409, 412}},
	"POST /v1/rollback":                {summary: "commit the other slot and reboot into it", ok: 202, resp: Accepted{}, errors: []int{409, 412}},
	"POST /v1/reset":                   {summary: "wipe EPHEMERAL and/or STATE during the ordered shutdown, then reboot", body: ResetRequest{}, ok: 202, resp: Accepted{}, errors: []int{400, 409}},
	"GET /v1/services":                 {summary: "each service's state", ok: 200, resp: ServicesAnswer{}},
	"POST /v1/services/{name}/restart": {summary: "restart a service", ok: 202, resp: Accepted{}, errors: []int{404, 409}},
	"GET /v1/logs/{name}": {summary: "a service's output, or the init's own log (init); boot=-1 the boot before's", ok: 200, lines: LogLine{},
		query: []param{tailParam, followParam, {"boot", "integer", "0: this boot; -1 the boot before (GET /v1/boots); no follow then"}}, errors: []int{400, 404, 429}},
	"GET /v1/boots":                 {summary: "the boots whose logs are kept on EPHEMERAL", ok: 200, resp: Boots{}, errors: []int{404}},
	"GET /metrics":                  {summary: "Prometheus metrics", ok: 200, raw: "text/plain"},
	"GET /v1/events":                {summary: "the event stream (NDJSON)", ok: 200, lines: events.Event{}, query: []param{tailParam, followParam}, errors: []int{400, 429}},
	"GET /v1/dmesg":                 {summary: "the kernel's log (NDJSON)", ok: 200, lines: machine.KmsgRecord{}, query: []param{followParam}, errors: []int{400, 429}},
	"GET /v1/etcd/snapshots/{name}": {summary: "a saved etcd snapshot (admin: it holds every key)", ok: 200, raw: "application/octet-stream", errors: []int{404}},
	"GET /v1/openapi.json":          {summary: "this document", ok: 200, resp: map[string]any{}},
}

// OpenAPI builds the document for the routes registered (pattern → role).
func openAPI(routes []registered) ([]byte, error) {
	g := &schemaGen{defs: map[string]any{}}
	paths := map[string]map[string]any{}
	errRef := g.ref(reflect.TypeOf(ErrorBody{}), false)
	for _, r := range routes {
		d, ok := routeDocs[r.pattern]
		if !ok {
			return nil, fmt.Errorf("netapi: route %s has no OpenAPI doc", r.pattern)
		}
		method, path, _ := strings.Cut(r.pattern, " ")
		op := map[string]any{"summary": d.summary, "x-keel-role": r.role.String(),
			"description": fmt.Sprintf("Role: %s (the client certificate's organization).", r.role)}
		var params []any
		for _, name := range pathParams(path) {
			params = append(params, map[string]any{"name": name, "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
		}
		for _, q := range d.query {
			params = append(params, map[string]any{"name": q.name, "in": "query", "description": q.desc, "schema": map[string]any{"type": q.typ}})
		}
		if len(params) > 0 {
			op["parameters"] = params
		}
		if d.body != nil {
			op["requestBody"] = map[string]any{"required": false, "content": map[string]any{"application/json": map[string]any{"schema": g.ref(reflect.TypeOf(d.body), true)}}}
		}
		okResp := map[string]any{"description": http.StatusText(d.ok)}
		switch {
		case d.lines != nil:
			okResp["content"] = map[string]any{"application/x-ndjson": map[string]any{"schema": map[string]any{"type": "string",
				"description": "one JSON value a line, each as x-keel-line says"}}}
			okResp["x-keel-line"] = g.ref(reflect.TypeOf(d.lines), false)
		case d.raw != "":
			okResp["content"] = map[string]any{d.raw: map[string]any{"schema": map[string]any{"type": "string"}}}
		default:
			okResp["content"] = map[string]any{"application/json": map[string]any{"schema": g.ref(reflect.TypeOf(d.resp), false)}}
		}
		resps := map[string]any{strconv.Itoa(d.ok): okResp}
		for _, code := range append([]int{403, 500}, d.errors...) {
			resps[strconv.Itoa(code)] = map[string]any{"description": http.StatusText(code),
				"content": map[string]any{"application/json": map[string]any{"schema": errRef}}}
		}
		op["responses"] = resps
		if paths[path] == nil {
			paths[path] = map[string]any{}
		}
		paths[path][strings.ToLower(method)] = op
	}
	doc := map[string]any{
		"openapi": "3.0.3",
		"info": map[string]any{"title": "keel node endpoint", "version": "v1",
			"description": "HTTPS with client certificates (mTLS); the certificate's subject organization is the role: reader < operator < admin. Every error is {\"error\": {\"code\", \"message\"}}; an unknown path is 404, a known path with another method 405."},
		"paths":      paths,
		"components": map[string]any{"schemas": g.defs},
	}
	return json.MarshalIndent(doc, "", "  ")
}

func pathParams(path string) []string {
	var out []string
	for _, seg := range strings.Split(path, "/") {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			out = append(out, strings.Trim(seg, "{}"))
		}
	}
	return out
}

// schemaGen makes JSON schemas (OpenAPI 3.0's dialect) of Go types as encoding/json encodes
// them: named structs become components, referred to by $ref.
type schemaGen struct{ defs map[string]any }

var (
	timeType          = reflect.TypeOf(time.Time{})
	textMarshalerType = reflect.TypeOf((*encoding.TextMarshaler)(nil)).Elem()
	jsonMarshalerType = reflect.TypeOf((*json.Marshaler)(nil)).Elem()
)

func defName(t reflect.Type) string {
	pkg := t.PkgPath()
	if i := strings.LastIndex(pkg, "/"); i >= 0 {
		pkg = pkg[i+1:]
	}
	if pkg == "netapi" {
		return t.Name()
	}
	return pkg + "." + t.Name()
}

// ref is the schema of t; request schemas require nothing (a field left out is its zero).
func (g *schemaGen) ref(t reflect.Type, request bool) map[string]any {
	if t.Kind() == reflect.Struct && t.Name() != "" && t != timeType {
		name := defName(t)
		if request {
			name += ".request"
		}
		if _, ok := g.defs[name]; !ok {
			g.defs[name] = map[string]any{} // placeholder: recursive types
			g.defs[name] = g.structSchema(t, request)
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	return g.schema(t, request)
}

func (g *schemaGen) schema(t reflect.Type, request bool) map[string]any {
	if t == timeType {
		return map[string]any{"type": "string", "format": "date-time"}
	}
	if t.Implements(jsonMarshalerType) {
		return map[string]any{}
	}
	if t.Implements(textMarshalerType) {
		return map[string]any{"type": "string"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		s := g.ref(t.Elem(), request)
		return nullable(s)
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "format": "byte", "nullable": true}
		}
		return map[string]any{"type": "array", "items": g.ref(t.Elem(), request), "nullable": true}
	case reflect.Array:
		return map[string]any{"type": "array", "items": g.ref(t.Elem(), request)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": g.ref(t.Elem(), request), "nullable": true}
	case reflect.Struct:
		return g.structSchema(t, request)
	}
	return map[string]any{} // interface: anything
}

// nullable wraps a $ref (which may carry no siblings in 3.0) so that null is allowed too.
func nullable(s map[string]any) map[string]any {
	if _, ok := s["$ref"]; ok {
		return map[string]any{"allOf": []any{s}, "nullable": true}
	}
	c := map[string]any{}
	for k, v := range s {
		c[k] = v
	}
	c["nullable"] = true
	return c
}

func (g *schemaGen) structSchema(t reflect.Type, request bool) map[string]any {
	props := map[string]any{}
	var required []string
	g.fields(t, request, props, &required)
	s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	if len(required) > 0 {
		sort.Strings(required)
		s["required"] = required
	}
	return s
}

func (g *schemaGen) fields(t reflect.Type, request bool, props map[string]any, required *[]string) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" || !f.IsExported() && !f.Anonymous {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			g.fields(f.Type, request, props, required)
			continue
		}
		if name == "" {
			name = f.Name
		}
		props[name] = g.ref(f.Type, request)
		optional := strings.Contains(opts, "omitempty") || strings.Contains(opts, "omitzero")
		if !optional && !request {
			*required = append(*required, name)
		}
	}
}
