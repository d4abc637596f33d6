package netapi

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"keel/events"
	"keel/pki"
)

// FuzzHandlers sends arbitrary method, path, query and body to the handler as an admin: it
// must never panic, never answer 5xx, and every error must be the uniform JSON body.
func FuzzHandlers(f *testing.F) {
	ca, err := pki.NewCA("fuzz", time.Now(), time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	p, _ := ca.Issue(pki.Request{CommonName: "a", Orgs: []string{"admin"}, Client: true, Now: time.Now(), Validity: time.Hour})
	blk, _ := pem.Decode(p.CertPEM)
	cert, _ := x509.ParseCertificate(blk.Bytes)
	closed := func() *events.Ring { r := events.NewRing(10, 0); r.Append(`{"x":1}`); r.Close(); return r }
	node := &fakeNode{events: closed(), initLog: closed()}
	h := New(Options{Node: node})

	for _, seed := range []struct{ method, path, body string }{
		{"POST", "/v1/upgrade", `{"image":"r/x:1","preserve":true}`},
		{"POST", "/v1/reset", `{"wipe":["EPHEMERAL"]}`},
		{"GET", "/v1/logs/init?tail=5&follow=1", ""},
		{"GET", "/v1/events?follow=1", ""},
		{"POST", "/v1/services/db/restart", ""},
		{"GET", "/v1/status", ""},
		{"PUT", "/v1/upgrade", "{"},
	} {
		f.Add(seed.method, seed.path, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n#") {
			return
		}
		req, err := http.NewRequest(method, "https://node"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", method, path, body, rec.Code, rec.Body)
		}
		if rec.Code >= 400 {
			var eb ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
				t.Fatalf("%s %s: %d with a non-uniform error body %q", method, path, rec.Code, rec.Body)
			}
		}
	})
}
