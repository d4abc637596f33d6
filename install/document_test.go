package install

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"keel/pki"
)

type testPKI struct {
	ca          *pki.CA
	server      pki.Pair
	otherCA     *pki.CA
	otherServer pki.Pair
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	now := time.Now()
	var p testPKI
	var err error
	if p.ca, err = pki.NewCA("install-test", now, time.Hour); err != nil {
		t.Fatal(err)
	}
	if p.otherCA, err = pki.NewCA("other", now, time.Hour); err != nil {
		t.Fatal(err)
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	if p.server, err = p.ca.Issue(pki.Request{CommonName: "node", IPs: ips, Server: true, Now: now, Validity: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if p.otherServer, err = p.otherCA.Issue(pki.Request{CommonName: "node", IPs: ips, Server: true, Now: now, Validity: time.Hour}); err != nil {
		t.Fatal(err)
	}
	return p
}

func docJSON(t *testing.T, p testPKI, edit func(map[string]any)) []byte {
	m := map[string]any{
		"image":  "10.0.2.2:5000/keel:v1",
		"config": map[string]any{"hostname": "n1", "upgrade": map[string]any{"insecure_registries": []string{"10.0.2.2"}}},
		"files": map[string]string{
			"pki/ca.crt": string(p.ca.CertPEM), "pki/server.crt": string(p.server.CertPEM), "pki/server.key": string(p.server.KeyPEM),
			"kubeconfig": "apiVersion: v1\n",
		},
		"kernel_args": "console=tty0 console=ttyS0,115200",
	}
	if edit != nil {
		edit(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseDocument(t *testing.T) {
	p := newTestPKI(t)
	d, cfg, err := ParseDocument(docJSON(t, p, nil))
	if err != nil {
		t.Fatal(err)
	}
	if d.Image != "10.0.2.2:5000/keel:v1" || cfg.Hostname != "n1" || len(d.Files) != 4 {
		t.Fatalf("%+v %+v", d, cfg)
	}
	files := func(f func(map[string]string)) func(map[string]any) {
		return func(m map[string]any) { f(m["files"].(map[string]string)) }
	}
	bad := []struct {
		name string
		edit func(map[string]any)
		msg  string
	}{
		{"no image", func(m map[string]any) { delete(m, "image") }, "no image"},
		{"unknown field", func(m map[string]any) { m["imagee"] = "x" }, "unknown field"},
		{"bad config", func(m map[string]any) { m["config"] = map[string]any{"api": map[string]any{"port": 70000}} }, "config"},
		{"unknown config field", func(m map[string]any) { m["config"] = map[string]any{"hostnme": "x"} }, "config"},
		{"escaping path", files(func(f map[string]string) { f["../etc/passwd"] = "x" }), "clean path"},
		{"absolute path", files(func(f map[string]string) { f["/etc/passwd"] = "x" }), "clean path"},
		{"unclean path", files(func(f map[string]string) { f["pki//x"] = "x" }), "clean path"},
		{"config as a file", files(func(f map[string]string) { f["config.json"] = "{}" }), "goes in \"config\""},
		{"no server key", files(func(f map[string]string) { delete(f, "pki/server.key") }), "no pki/server.key"},
		{"key of another cert", files(func(f map[string]string) { f["pki/server.key"] = string(p.otherServer.KeyPEM) }), "key material"},
		{"no CA PEM", files(func(f map[string]string) { f["pki/ca.crt"] = "junk" }), "key material"},
		{"kernel args injection", func(m map[string]any) { m["kernel_args"] = "quiet\n}\nmenuentry evil {" }, "kernel_args"},
		{"kernel args quote", func(m map[string]any) { m["kernel_args"] = `a="b"` }, "kernel_args"},
		{"kernel args reinstall", func(m map[string]any) { m["kernel_args"] = "quiet keel.install=wipe" }, "keel's to set"},
		{"kernel args slot", func(m map[string]any) { m["kernel_args"] = "slot=B" }, "keel's to set"},
		{"kernel args init", func(m map[string]any) { m["kernel_args"] = "init=/bin/sh" }, "keel's to set"},
		{"kernel args too long", func(m map[string]any) { m["kernel_args"] = strings.Repeat("a", 1025) }, "kernel_args"},
	}
	for _, c := range bad {
		_, _, err := ParseDocument(docJSON(t, p, c.edit))
		if !errors.Is(err, ErrDocument) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want ErrDocument saying %q", c.name, err, c.msg)
		}
	}
}

// serve serves body over TLS with the leaf pair, sending the CA in the chain (or not).
func serve(t *testing.T, leaf pki.Pair, ca *pki.CA, sendCA bool, h http.HandlerFunc) string {
	t.Helper()
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if sendCA {
		cert.Certificate = append(cert.Certificate, ca.Cert.Raw)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestFetchPinned(t *testing.T) {
	p := newTestPKI(t)
	body := docJSON(t, p, nil)
	ok := func(w http.ResponseWriter, r *http.Request) { w.Write(body) }
	url := serve(t, p.server, p.ca, true, ok)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := Fetch(ctx, url+"/node.json", PinHash(p.ca.Cert), nil)
	if err != nil || string(b) != string(body) {
		t.Fatalf("pinned fetch: %v", err)
	}
	// Another CA's pin: refused at once, not retried.
	t0 := time.Now()
	if _, err := Fetch(ctx, url, PinHash(p.otherCA.Cert), nil); !errors.Is(err, ErrPin) || time.Since(t0) > 5*time.Second {
		t.Fatalf("wrong pin: %v after %s", err, time.Since(t0))
	}
	// A server that does not send its CA cannot be checked against a pin.
	if _, err := Fetch(ctx, serve(t, p.server, p.ca, false, ok), PinHash(p.ca.Cert), nil); !errors.Is(err, ErrPin) {
		t.Fatalf("CA not sent: %v", err)
	}
	// The pinned CA is in the chain, but the leaf is another CA's: the chain must verify.
	if _, err := Fetch(ctx, serve(t, p.otherServer, p.ca, true, ok), PinHash(p.ca.Cert), nil); !errors.Is(err, ErrPin) {
		t.Fatalf("leaf of another CA: %v", err)
	}
	// The certificate is for 127.0.0.1, not for the name asked.
	if _, err := Fetch(ctx, strings.Replace(url, "127.0.0.1", "localhost", 1), PinHash(p.ca.Cert), nil); !errors.Is(err, ErrPin) {
		t.Fatalf("host name mismatch: %v", err)
	}
	// A redirect is refused, not followed (not retried either).
	t0 = time.Now()
	redirect := serve(t, p.server, p.ca, true, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/node.json", http.StatusFound)
	})
	if _, err := Fetch(ctx, redirect, PinHash(p.ca.Cert), nil); err == nil || !strings.Contains(err.Error(), "redirects are not followed") || time.Since(t0) > 5*time.Second {
		t.Fatalf("redirect: %v", err)
	}
	// 404 is an answer; 503 is retried until it works.
	if _, err := Fetch(ctx, serve(t, p.server, p.ca, true, http.NotFound), PinHash(p.ca.Cert), nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("404: %v", err)
	}
	n := 0
	var warned []error
	flaky := serve(t, p.server, p.ca, true, func(w http.ResponseWriter, r *http.Request) {
		if n++; n < 2 {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.Write(body)
	})
	if _, err := Fetch(ctx, flaky, PinHash(p.ca.Cert), func(err error) { warned = append(warned, err) }); err != nil || len(warned) != 1 {
		t.Fatalf("503 then 200: %v, warned %v", err, warned)
	}
	big := serve(t, p.server, p.ca, true, func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, MaxDocument+1)) })
	if _, err := Fetch(ctx, big, PinHash(p.ca.Cert), nil); !errors.Is(err, ErrDocument) {
		t.Fatalf("oversized: %v", err)
	}
}
