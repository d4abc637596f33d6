// Package promtest runs a real Prometheus (Debian's, unpacked by `make deps` into
// build/cache/prometheus) scraping targets over mTLS, and reads metrics back through its
// query API.
package promtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"keel/internal/testenv"
)

// Prometheus is one running server.
type Prometheus struct {
	URL string // http://127.0.0.1:PORT
	t   testing.TB
	log *os.File
}

// Target is a scrape job: HTTPS with the client certificate, every second.
type Target struct {
	Job, Addr, Path  string
	CA, Cert, Key    string
	ServerName       string // "" for the address's host
	ScrapeIntervalMS int    // 0: 1000
}

// Start runs Prometheus scraping targets; it is stopped when the test ends.
func Start(t testing.TB, targets ...Target) *Prometheus {
	t.Helper()
	dir, err := testenv.BuildDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "cache", "prometheus", "bin", "prometheus")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("prometheus: %v (make deps unpacks Debian's)", err)
	}
	work := t.TempDir()
	var cfg strings.Builder
	cfg.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n")
	for _, tg := range targets {
		ms := tg.ScrapeIntervalMS
		if ms == 0 {
			ms = 1000
		}
		fmt.Fprintf(&cfg, "  - job_name: %q\n    scheme: https\n    metrics_path: %q\n    scrape_interval: %dms\n    scrape_timeout: %dms\n", tg.Job, tg.Path, ms, ms)
		fmt.Fprintf(&cfg, "    tls_config:\n      ca_file: %q\n      cert_file: %q\n      key_file: %q\n", tg.CA, tg.Cert, tg.Key)
		if tg.ServerName != "" {
			fmt.Fprintf(&cfg, "      server_name: %q\n", tg.ServerName)
		}
		fmt.Fprintf(&cfg, "    static_configs:\n      - targets: [%q]\n", tg.Addr)
	}
	conf := filepath.Join(work, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	port := testenv.FreePort()
	logf, err := os.Create(filepath.Join(work, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(work, "data"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(port), "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Prometheus{URL: "http://127.0.0.1:" + strconv.Itoa(port), t: t, log: logf}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("prometheus log:\n%s", b)
		}
		logf.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30 s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Sample is one series of an instant query's answer.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Query runs an instant query.
func (p *Prometheus) Query(ctx context.Context, q string) ([]Sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	if out.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, out.Error)
	}
	var res []Sample
	for _, r := range out.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v", q, r.Value[1])
		}
		res = append(res, Sample{Labels: r.Metric, Value: v})
	}
	return res, nil
}

// WaitFor queries q until ok holds for its answer (or timeout), and returns that answer.
func (p *Prometheus) WaitFor(q string, timeout time.Duration, ok func([]Sample) bool) []Sample {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	var last []Sample
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last, lastErr = p.Query(ctx, q)
		cancel()
		if lastErr == nil && ok(last) {
			return last
		}
		time.Sleep(500 * time.Millisecond)
	}
	p.t.Fatalf("prometheus: %s: %+v %v after %s", q, last, lastErr, timeout)
	return nil
}
