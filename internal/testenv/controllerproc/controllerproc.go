// Package controllerproc builds the keel-controller binary once per test binary and runs
// replicas of it, reading their Prometheus metrics (for the controller's tests: the
// integration ones over simulated nodes, and the end-to-end one over QEMU workers).
package controllerproc

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"keel/internal/testenv"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// Bin builds cmd/keel-controller once per test binary and returns its path.
func Bin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "keel-controller-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "keel-controller")
		cmd := exec.Command("go", "build", "-o", builtBin, "./cmd/keel-controller")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build keel-controller: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// Proc is one running replica.
type Proc struct {
	Cmd     *exec.Cmd
	Metrics string // host:port of its metrics endpoint
	log     *syncBuffer
	exited  chan struct{}
}

// Start runs a replica named name with args, its metrics on a free port, no probes; it is
// stopped (SIGTERM) when the test ends, and its log's tail is printed if the test failed.
func Start(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Metrics: "127.0.0.1:" + strconv.Itoa(testenv.FreePort()), log: &syncBuffer{}, exited: make(chan struct{})}
	p.Cmd = exec.Command(Bin(t), append([]string{"-metrics-bind-address", p.Metrics, "-health-probe-bind-address", "0"}, args...)...)
	p.Cmd.Stdout, p.Cmd.Stderr = p.log, p.log
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.Cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.Cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("controller %s log (last 60 lines):\n%s", name, p.log.tail(60))
		}
	})
	return p
}

// Kill ends the replica with SIGKILL: no hand-over of its Lease.
func (p *Proc) Kill() { p.Cmd.Process.Kill() }

// Metric sums the samples whose line starts with prefix (a name with its labels as
// Prometheus prints them, e.g. `keel_upgradeplan_nodes{phase="upgraded",plan="fleet"}`).
func (p *Proc) Metric(prefix string) (float64, bool) {
	resp, err := http.Get("http://" + p.Metrics + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	total, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				total, found = total+v, true
			}
		}
	}
	return total, found
}

// Leads reports whether the replica holds the Lease (controller-runtime's gauge).
func (p *Proc) Leads() bool {
	v, ok := p.Metric("leader_election_master_status")
	return ok && v == 1
}

// Stats are the replica's CPU time (user + system) and peak RSS (bytes).
func (p *Proc) Stats() (time.Duration, int64) {
	pid := p.Cmd.Process.Pid
	cpu, err := testenv.CPUTime(pid)
	if err != nil {
		return 0, 0
	}
	var hwm int64
	if s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(s), "\n") {
			if strings.HasPrefix(l, "VmHWM:") {
				kb, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
				hwm = kb << 10
			}
		}
	}
	return cpu, hwm
}

// syncBuffer is the replica's log (stdout and stderr).
type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := strings.Split(strings.TrimRight(string(s.b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
