package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"keel/machine"
)

func TestOrder(t *testing.T) {
	sh := []string{"/bin/sh"}
	specs := []Spec{
		{Name: "app", Command: sh, After: []string{"db", "cache"}},
		{Name: "db", Command: sh},
		{Name: "cache", Command: sh, After: []string{"db"}},
		{Name: "solo", Command: sh},
	}
	got, err := Order(specs)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range got {
		names = append(names, s.Name)
	}
	if want := []string{"db", "cache", "app", "solo"}; !reflect.DeepEqual(names, want) {
		t.Errorf("order = %v, want %v", names, want)
	}
	for _, tc := range []struct {
		name  string
		specs []Spec
		want  string
	}{
		{"cycle", []Spec{{Name: "a", Command: sh, After: []string{"b"}}, {Name: "b", Command: sh, After: []string{"a"}}}, "cycle a → b → a"},
		{"missing", []Spec{{Name: "a", Command: sh, After: []string{"x"}}}, `"x", which is not declared`},
		{"duplicate", []Spec{{Name: "a", Command: sh}, {Name: "a", Command: sh}}, "duplicate"},
		{"relative command", []Spec{{Name: "a", Command: []string{"sh"}}}, "absolute path"},
		{"reserved name", []Spec{{Name: "init", Command: sh}}, "reserved"},
		{"bad policy", []Spec{{Name: "a", Command: sh, Restart: "sometimes"}}, "restart"},
		{"two checks", []Spec{{Name: "a", Command: sh, Health: &Check{TCP: "x:1", HTTP: "http://x"}}}, "exactly one"},
		{"bad signal", []Spec{{Name: "a", Command: sh, StopSignal: "SIGFOO"}}, "stop_signal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Order(tc.specs)
			if !errors.Is(err, ErrSpec) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrSpec containing %q", err, tc.want)
			}
		})
	}
}

func TestBackoffAndPolicy(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		n    int
		ran  time.Duration
		want time.Duration
	}{
		{1, 0, 100 * ms}, {2, 0, 200 * ms}, {3, 0, 400 * ms}, {4, 0, 800 * ms}, {5, 0, time.Second}, {50, 0, time.Second},
		{5, 2 * time.Second, 100 * ms}, // it stayed up longer than the cap: start over
	} {
		if got := Backoff(tc.n, tc.ran, 100*ms, time.Second); got != tc.want {
			t.Errorf("Backoff(%d, %s) = %s, want %s", tc.n, tc.ran, got, tc.want)
		}
	}
	for _, tc := range []struct {
		p        Policy
		code     int
		stopping bool
		want     bool
	}{
		{RestartAlways, 0, false, true}, {RestartAlways, 1, true, false},
		{RestartOnFailure, 0, false, false}, {RestartOnFailure, 2, false, true},
		{RestartNever, 2, false, false},
	} {
		if got := ShouldRestart(tc.p, tc.code, tc.stopping); got != tc.want {
			t.Errorf("ShouldRestart(%s, %d, %v) = %v", tc.p, tc.code, tc.stopping, got)
		}
	}
	if got := ForRole([]Spec{{Name: "a"}, {Name: "b", Roles: []string{"control-plane"}}}, "worker"); len(got) != 1 || got[0].Name != "a" {
		t.Errorf("ForRole = %+v", got)
	}
}

// recorder collects state changes.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) on(name string, from, to State, detail string) {
	r.mu.Lock()
	r.events = append(r.events, name+":"+string(to))
	r.mu.Unlock()
}

func (r *recorder) index(ev string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, e := range r.events {
		if e == ev {
			return i
		}
	}
	return -1
}

var testReaper *machine.Reaper

func newSup(t *testing.T, specs []Spec, o Options) (*Supervisor, *recorder) {
	t.Helper()
	if err := machine.SetSubreaper(); err != nil {
		t.Skip(err)
	}
	rec := &recorder{}
	o.OnChange = rec.on
	o.Log = slog.Default()
	reaper := machine.NewReaper(slog.Default())
	testReaper = reaper
	o.Starter = reaper
	s, err := New(specs, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		reaper.ReapOnce()
	})
	return s, rec
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func state(s *Supervisor, name string) Status {
	for _, st := range s.Status() {
		if st.Name == name {
			return st
		}
	}
	return Status{}
}

func TestDependencyOrderAndReverseStop(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(dir, "db-ready")
	s, rec := newSup(t, []Spec{
		{Name: "app", Command: []string{"/bin/sleep", "60"}, After: []string{"db"}},
		{Name: "db", Command: []string{"/bin/sh", "-c", "sleep 0.3; touch " + ready + "; exec sleep 60"},
			Health: &Check{Exec: []string{"/bin/test", "-f", ready}, Interval: Duration(50 * time.Millisecond)}},
	}, Options{})
	s.Start(t.Context())
	waitFor(t, "both up", func() bool { ok, _ := s.AllUp(); return ok })
	if a, d := rec.index("app:starting"), rec.index("db:healthy"); a < 0 || d < 0 || a < d {
		t.Errorf("app started at event %d, db healthy at %d: %v", a, d, rec.events)
	}
	s.Stop()
	if a, d := rec.index("app:stopped"), rec.index("db:stopped"); a < 0 || d < 0 || a > d {
		t.Errorf("app stopped at event %d, db at %d (dependents first): %v", a, d, rec.events)
	}
	if z := machineZombies(); z != 0 {
		t.Errorf("%d zombies left", z)
	}
}

func TestRestartWithBackoffAndPolicies(t *testing.T) {
	s, _ := newSup(t, []Spec{
		{Name: "crashy", Command: []string{"/bin/sh", "-c", "echo started; exit 3"}, Restart: RestartOnFailure,
			BackoffMin: Duration(20 * time.Millisecond), BackoffMax: Duration(200 * time.Millisecond)},
		{Name: "once", Command: []string{"/bin/sh", "-c", "exit 0"}, Restart: RestartOnFailure},
		{Name: "never", Command: []string{"/bin/sh", "-c", "exit 4"}, Restart: RestartNever},
	}, Options{})
	s.Start(t.Context())
	waitFor(t, "3 restarts", func() bool { return state(s, "crashy").Restarts >= 3 })
	waitFor(t, "once and never stopped", func() bool {
		return state(s, "once").State == Stopped && state(s, "never").State == Stopped
	})
	if st := state(s, "never"); *st.ExitCode != 4 || st.Restarts != 0 {
		t.Errorf("never: %+v", st)
	}
	if st := state(s, "once"); *st.ExitCode != 0 || st.Restarts != 0 {
		t.Errorf("once: %+v", st)
	}
	if st := state(s, "crashy"); *st.ExitCode != 3 || !strings.Contains(st.LastError, "restarting in") {
		t.Errorf("crashy: %+v", st)
	}
	r, _ := s.Logs("crashy")
	if tail := r.Tail(0); len(tail) < 3 || tail[0] != "started" {
		t.Errorf("crashy output = %q", tail)
	}
}

func TestHealthTransitions(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "ok")
	s, rec := newSup(t, []Spec{{Name: "svc", Command: []string{"/bin/sleep", "60"},
		Health: &Check{Exec: []string{"/bin/test", "-f", flag}, Interval: Duration(30 * time.Millisecond)}}}, Options{})
	s.Start(t.Context())
	waitFor(t, "running", func() bool { return state(s, "svc").State == Running })
	os.WriteFile(flag, nil, 0o644)
	waitFor(t, "healthy", func() bool { return state(s, "svc").State == Healthy })
	os.Remove(flag)
	waitFor(t, "failing", func() bool { return state(s, "svc").State == Failing })
	if st := state(s, "svc"); !strings.HasPrefix(st.LastError, "health:") {
		t.Errorf("failing without a health reason: %+v", st)
	}
	os.WriteFile(flag, nil, 0o644)
	waitFor(t, "healthy again", func() bool { return state(s, "svc").State == Healthy })
	if rec.index("svc:failing") < 0 {
		t.Errorf("events: %v", rec.events)
	}
}

func TestSIGKILLAfterGrace(t *testing.T) {
	s, _ := newSup(t, []Spec{{Name: "stubborn", Command: []string{"/bin/sh", "-c", `trap "" TERM; echo armed; while :; do sleep 0.05; done`},
		Grace: Duration(300 * time.Millisecond), Restart: RestartAlways}}, Options{})
	s.Start(t.Context())
	r, _ := s.Logs("stubborn")
	waitFor(t, "trap armed", func() bool { return len(r.Tail(1)) == 1 && r.Tail(1)[0] == "armed" })
	t0 := time.Now()
	s.Stop()
	took := time.Since(t0)
	st := state(s, "stubborn")
	if st.State != Stopped || st.ExitCode == nil || *st.ExitCode != -1 {
		t.Errorf("after stop: %+v (want stopped, killed by a signal)", st)
	}
	if took < 300*time.Millisecond {
		t.Errorf("stopped after %s, before its grace period: the TERM was not ignored?", took)
	}
	if z := machineZombies(); z != 0 {
		t.Errorf("%d zombies left", z)
	}
}

func TestRestartRequestAndRingBounds(t *testing.T) {
	s, _ := newSup(t, []Spec{{Name: "chatty", Command: []string{"/bin/sh", "-c", `i=0; while [ $i -lt 5000 ]; do echo line $i; i=$((i+1)); done; exec sleep 60`}}},
		Options{RingLines: 100, RingBytes: 1 << 20})
	s.Start(t.Context())
	r, _ := s.Logs("chatty")
	waitFor(t, "all lines", func() bool { t := r.Tail(1); return len(t) == 1 && t[0] == "line 4999" })
	if n, _ := r.Len(); n != 100 {
		t.Errorf("ring holds %d lines, want 100", n)
	}
	pid := state(s, "chatty").PID
	if err := s.Restart("chatty"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restarted", func() bool { st := state(s, "chatty"); return st.Restarts == 1 && st.PID != 0 && st.PID != pid })
	if err := s.Restart("nope"); !errors.Is(err, ErrUnknown) {
		t.Errorf("restart unknown: %v", err)
	}
}

func TestLogFile(t *testing.T) {
	dir := t.TempDir()
	s, _ := newSup(t, []Spec{{Name: "w", Command: []string{"/bin/sh", "-c", "echo to-file; exec sleep 60"}}}, Options{LogDir: func() string { return dir }})
	s.Start(t.Context())
	waitFor(t, "log file", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "w.log"))
		return string(b) == "to-file\n"
	})
}

// machineZombies counts zombie children of this (subreaper) test process after the reaper
// has run, as the init's reaper loop does: orphaned grandchildren are the reaper's job.
func machineZombies() int {
	for range 50 {
		if testReaper.ReapOnce() == 0 && countZombies() == 0 {
			return 0
		}
		time.Sleep(10 * time.Millisecond)
	}
	return countZombies()
}

func countZombies() int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		var st byte
		var ppid int
		if i > 0 {
			fmt.Sscanf(s[i+2:], "%c %d", &st, &ppid)
		}
		if st == 'Z' && ppid == os.Getpid() {
			n++
		}
	}
	return n
}

// TestUnwritableLogFileDoesNotKillTheService: a log file that cannot be written (a full /var:
// here the file is /dev/full, every write fails with ENOSPC) loses the file copy of the output,
// not the service: it keeps running, unrestarted, and its output still reaches the ring.
func TestUnwritableLogFileDoesNotKillTheService(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/dev/full", filepath.Join(dir, "w.log")); err != nil {
		t.Fatal(err)
	}
	s, _ := newSup(t, []Spec{{Name: "w", Command: []string{"/bin/sh", "-c", `i=0; while true; do echo line $i; i=$((i+1)); sleep 0.01; done`}}},
		Options{LogDir: func() string { return dir }})
	s.Start(t.Context())
	r, _ := s.Logs("w")
	waitFor(t, "200 lines in the ring", func() bool { n, _ := r.Len(); return n >= 200 })
	if st := state(s, "w"); st.State != Running || st.Restarts != 0 || st.ExitCode != nil {
		t.Fatalf("service with an unwritable log file: %+v", st)
	}
}

// TestLogFileRotation: a service's log file is rotated at LogMaxBytes, keeping LogKeep older
// files; the newest lines are in NAME.log and none is lost across a rotation.
func TestLogFileRotation(t *testing.T) {
	dir := t.TempDir()
	s, _ := newSup(t, []Spec{{Name: "w", Command: []string{"/bin/sh", "-c", `i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done; exec sleep 60`}}},
		Options{LogDir: func() string { return dir }, LogMaxBytes: 8 << 10, LogKeep: 2})
	s.Start(t.Context())
	r, _ := s.Logs("w")
	waitFor(t, "all lines", func() bool { l := r.Tail(1); return len(l) == 1 && l[0] == "line 2999" })
	waitFor(t, "the last line in the file", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "w.log"))
		return strings.HasSuffix(string(b), "line 2999\n")
	})
	var all string
	for _, name := range []string{"w.log.2", "w.log.1", "w.log"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(b) > 8<<10 {
			t.Errorf("%s holds %d bytes, more than LogMaxBytes", name, len(b))
		}
		all += string(b)
	}
	if _, err := os.Stat(filepath.Join(dir, "w.log.3")); err == nil {
		t.Error("w.log.3 exists: more than LogKeep old files")
	}
	// The kept files hold the newest lines, contiguous up to the last.
	lines := strings.Split(strings.TrimSuffix(all, "\n"), "\n")
	first := 3000 - len(lines)
	for i, l := range lines {
		if l != fmt.Sprintf("line %d", first+i) {
			t.Fatalf("line %d of the kept files is %q, want %q", i, l, fmt.Sprintf("line %d", first+i))
		}
	}
}

// TestLogFileFullAtStart: a log file already past LogMaxBytes (from an earlier boot) is rotated
// before the first write, not appended to.
func TestLogFileFullAtStart(t *testing.T) {
	dir := t.TempDir()
	old := strings.Repeat("old line\n", 2000)
	os.WriteFile(filepath.Join(dir, "w.log"), []byte(old), 0o644)
	s, _ := newSup(t, []Spec{{Name: "w", Command: []string{"/bin/sh", "-c", "echo new; exec sleep 60"}}},
		Options{LogDir: func() string { return dir }, LogMaxBytes: 4 << 10})
	s.Start(t.Context())
	waitFor(t, "new file", func() bool { b, _ := os.ReadFile(filepath.Join(dir, "w.log")); return string(b) == "new\n" })
	if b, _ := os.ReadFile(filepath.Join(dir, "w.log.1")); string(b) != old {
		t.Errorf("w.log.1 has %d bytes, want the old file's %d", len(b), len(old))
	}
}
