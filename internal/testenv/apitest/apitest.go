// Package apitest checks the node endpoint's real answers against its OpenAPI document
// (GET /v1/openapi.json) with kin-openapi: the document is valid OpenAPI 3, each request
// matches a route and its parameters and body, each answer its status and schema, and each
// line of an NDJSON stream the schema its route names in x-keel-line.
package apitest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// Validator holds one document.
type Validator struct {
	Doc    *openapi3.T
	router routers.Router
}

func init() {
	// Stream bodies are checked line by line (Check); the body as a whole is a string.
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(r)
		return string(b), err
	})
	openapi3filter.RegisterBodyDecoder("application/octet-stream", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(r)
		return string(b), err
	})
}

// New loads and validates the document; server is the base URL requests will have.
func New(doc []byte, server string) (*Validator, error) {
	l := openapi3.NewLoader()
	d, err := l.LoadFromData(doc)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	if err := d.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("not valid OpenAPI 3: %w", err)
	}
	d.Servers = openapi3.Servers{{URL: server}}
	r, err := gorillamux.NewRouter(d)
	if err != nil {
		return nil, err
	}
	return &Validator{Doc: d, router: r}, nil
}

// Check validates one exchange: req (with its body as sent, reqBody) and the answer.
func (v *Validator) Check(req *http.Request, reqBody []byte, status int, header http.Header, body []byte) error {
	ctx := context.Background()
	req = req.Clone(ctx)
	req.Body = io.NopCloser(bytes.NewReader(reqBody))
	route, params, err := v.router.FindRoute(req)
	if err != nil && (status == http.StatusMethodNotAllowed || status == http.StatusNotFound) {
		// No operation to match: the answer is the uniform error body.
		var val any
		if err := json.Unmarshal(body, &val); err != nil {
			return fmt.Errorf("%s %s: %d answer is not JSON: %w", req.Method, req.URL, status, err)
		}
		s := v.Doc.Components.Schemas["ErrorBody"]
		if s == nil {
			return fmt.Errorf("no ErrorBody schema among the components")
		}
		return s.Value.VisitJSON(val)
	}
	if err != nil {
		return fmt.Errorf("%s %s: no route in the document: %w", req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if status < 400 {
		// A request the node refused may break the schema on purpose (a bad tail).
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			return fmt.Errorf("%s %s: request: %w", req.Method, req.URL, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header,
		Body: io.NopCloser(bytes.NewReader(body)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		return fmt.Errorf("%s %s: %d answer: %w\n%.600s", req.Method, req.URL, status, err, body)
	}
	if !strings.HasPrefix(header.Get("Content-Type"), "application/x-ndjson") {
		return nil
	}
	resp := route.Operation.Responses.Status(status)
	if resp == nil || resp.Value == nil {
		return fmt.Errorf("%s %s: no response %d documented", req.Method, req.URL.Path, status)
	}
	line, err := v.lineSchema(resp.Value.Extensions["x-keel-line"])
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		var val any
		if err := json.Unmarshal(sc.Bytes(), &val); err != nil {
			return fmt.Errorf("%s %s: line %d is not JSON: %w", req.Method, req.URL, n, err)
		}
		if err := line.VisitJSON(val); err != nil {
			return fmt.Errorf("%s %s: line %d: %w\n%s", req.Method, req.URL, n, err, sc.Bytes())
		}
	}
	return sc.Err()
}

// lineSchema resolves x-keel-line ({"$ref": "#/components/schemas/NAME"}).
func (v *Validator) lineSchema(ext any) (*openapi3.Schema, error) {
	m, ok := ext.(map[string]any)
	ref, _ := m["$ref"].(string)
	name, found := strings.CutPrefix(ref, "#/components/schemas/")
	if !ok || !found {
		return nil, fmt.Errorf("x-keel-line is %v, want a $ref to a component", ext)
	}
	s := v.Doc.Components.Schemas[name]
	if s == nil || s.Value == nil {
		return nil, fmt.Errorf("x-keel-line names %s, which is not among the components", name)
	}
	return s.Value, nil
}
