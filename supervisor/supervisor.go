package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"keel/events"
	"keel/journal"
)

// State is where a service is.
type State string

// Service states.
const (
	Waiting  State = "waiting"  // for its dependencies, or for its restart backoff
	Starting State = "starting" // being started
	Running  State = "running"  // process up; health not (yet) known, or no health check
	Healthy  State = "healthy"  // process up and its health check passes
	Failing  State = "failing"  // process up but its health check fails, or it cannot start
	Stopped  State = "stopped"  // not running, and not going to be restarted by itself
)

// Status is a service as the API shows it.
type Status struct {
	Name      string    `json:"name"`
	State     State     `json:"state"`
	PID       int       `json:"pid,omitempty"`
	Restarts  int       `json:"restarts"`
	ExitCode  *int      `json:"exit_code,omitempty"` // of the last exit; -1 for killed by a signal
	LastError string    `json:"last_error,omitempty"`
	Since     time.Time `json:"since"`
}

// Starter starts and waits for child processes; the init's reaper implements it so that it
// never reaps a service behind os/exec's back.
type Starter interface {
	Start(*exec.Cmd) error
	Wait(*exec.Cmd) error
}

type plainStarter struct{}

func (plainStarter) Start(c *exec.Cmd) error { return c.Start() }
func (plainStarter) Wait(c *exec.Cmd) error  { return c.Wait() }

// Options configure a Supervisor.
type Options struct {
	Log     *slog.Logger
	Starter Starter // default: plain os/exec
	// LogDir returns the directory for per-service log files ("" while none is mounted).
	LogDir func() string
	// OnChange is called on every state change (from a supervisor goroutine).
	OnChange             func(name string, from, to State, detail string)
	RingLines, RingBytes int // per-service output ring; default 2000 lines, 256 KiB
	// LogMaxBytes rotates a service's log file when it would grow past it (default 10 MiB);
	// LogKeep older files are kept as NAME.log.1 ... (default 2).
	LogMaxBytes int64
	LogKeep     int
}

// ErrUnknown means no service has that name.
var ErrUnknown = errors.New("no such service")

// Supervisor runs a set of services.
type Supervisor struct {
	opts  Options
	order []string
	svcs  map[string]*service
	wg    sync.WaitGroup
	ctx   context.Context
	stop  context.CancelFunc
}

type service struct {
	spec Spec
	ring *events.Ring
	sup  *Supervisor

	mu        sync.Mutex
	st        Status
	cmd       *exec.Cmd
	exited    chan struct{} // closed when the current process has exited
	up        chan struct{} // closed once the service first counts as up
	runDone   chan struct{} // closed when the run loop has published its last state
	upOnce    sync.Once
	restartRq bool
	stopping  bool
}

// New validates specs and prepares a Supervisor; nothing starts until Start.
func New(specs []Spec, o Options) (*Supervisor, error) {
	ordered, err := Order(append([]Spec(nil), specs...))
	if err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Starter == nil {
		o.Starter = plainStarter{}
	}
	if o.RingLines == 0 {
		o.RingLines = 2000
	}
	if o.RingBytes == 0 {
		o.RingBytes = 256 << 10
	}
	if o.LogMaxBytes <= 0 {
		o.LogMaxBytes = journal.DefaultMaxBytes
	}
	if o.LogKeep <= 0 {
		o.LogKeep = journal.DefaultKeep
	}
	s := &Supervisor{opts: o, svcs: map[string]*service{}}
	for _, sp := range ordered {
		s.order = append(s.order, sp.Name)
		s.svcs[sp.Name] = &service{spec: sp, sup: s, ring: events.NewRing(o.RingLines, o.RingBytes),
			st: Status{Name: sp.Name, State: Waiting, Since: time.Now()}, up: make(chan struct{}), runDone: make(chan struct{})}
	}
	return s, nil
}

// Start starts every service's run loop; each waits for its dependencies.
func (s *Supervisor) Start(ctx context.Context) {
	s.ctx, s.stop = context.WithCancel(ctx)
	for _, n := range s.order {
		svc := s.svcs[n]
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			svc.run(s.ctx)
		}()
	}
}

// Names lists the services in start order.
func (s *Supervisor) Names() []string { return append([]string(nil), s.order...) }

// Status lists every service in start order.
func (s *Supervisor) Status() []Status {
	out := make([]Status, 0, len(s.order))
	for _, n := range s.order {
		svc := s.svcs[n]
		svc.mu.Lock()
		out = append(out, svc.st)
		svc.mu.Unlock()
	}
	return out
}

// Logs is a service's output ring.
func (s *Supervisor) Logs(name string) (*events.Ring, error) {
	svc, ok := s.svcs[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	return svc.ring, nil
}

// AllUp reports whether every service counts as up (healthy, or running without a check),
// and names the first that does not.
func (s *Supervisor) AllUp() (bool, string) {
	for _, st := range s.Status() {
		svc := s.svcs[st.Name]
		if !(st.State == Healthy || (st.State == Running && svc.spec.Health == nil)) {
			return false, fmt.Sprintf("%s is %s", st.Name, st.State)
		}
	}
	return true, ""
}

// Restart stops a service's process (signal, grace, SIGKILL) and starts it again at once.
func (s *Supervisor) Restart(name string) error {
	svc, ok := s.svcs[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	svc.mu.Lock()
	running := svc.cmd != nil
	svc.restartRq = running
	svc.mu.Unlock()
	if !running {
		return fmt.Errorf("%s is not running", name)
	}
	svc.terminate(false)
	return nil
}

// CloseLogs ends every follower of the services' output (at shutdown).
func (s *Supervisor) CloseLogs() {
	for _, svc := range s.svcs {
		svc.ring.Close()
	}
}

// Stop stops every service, dependents first, each with its stop signal and then SIGKILL
// after its grace period, and waits for every run loop to end.
func (s *Supervisor) Stop() {
	if s.stop == nil {
		return
	}
	for _, n := range s.order {
		svc := s.svcs[n]
		svc.mu.Lock()
		svc.stopping = true
		svc.mu.Unlock()
	}
	for i := len(s.order) - 1; i >= 0; i-- {
		s.svcs[s.order[i]].terminate(true)
	}
	s.stop()
	s.wg.Wait()
}

func (svc *service) set(to State, detail string) {
	svc.mu.Lock()
	from := svc.st.State
	if from == to && detail == "" {
		svc.mu.Unlock()
		return
	}
	svc.st.State = to
	svc.st.Since = time.Now()
	if detail != "" && (to == Failing || to == Stopped || to == Waiting) {
		svc.st.LastError = detail
	}
	svc.mu.Unlock()
	svc.sup.opts.Log.Info("service", "name", svc.spec.Name, "from", string(from), "to", string(to), "detail", detail)
	if cb := svc.sup.opts.OnChange; cb != nil && from != to {
		cb(svc.spec.Name, from, to, detail)
	}
	// Release dependents only after the change is published, so that every observer sees
	// "db healthy" before "app starting".
	if to == Healthy || (to == Running && svc.spec.Health == nil) {
		svc.upOnce.Do(func() { close(svc.up) })
	}
}

func (svc *service) run(ctx context.Context) {
	defer close(svc.runDone)
	// Dependencies first.
	for _, d := range svc.spec.After {
		dep := svc.sup.svcs[d]
		svc.set(Waiting, "waiting for "+d)
		select {
		case <-dep.up:
		case <-ctx.Done():
			svc.set(Stopped, "")
			return
		}
	}
	failures := 0
	for {
		t0 := time.Now()
		code, err := svc.runOnce(ctx)
		svc.mu.Lock()
		stopping, restartRq := svc.stopping, svc.restartRq
		svc.restartRq = false
		svc.st.PID = 0
		svc.st.ExitCode = &code
		svc.mu.Unlock()
		detail := fmt.Sprintf("exited with code %d", code)
		if err != nil {
			detail = err.Error()
		}
		if restartRq && !stopping {
			svc.bumpRestarts()
			continue
		}
		if !ShouldRestart(svc.spec.Restart, code, stopping || ctx.Err() != nil) {
			svc.set(Stopped, detail)
			return
		}
		failures++
		if time.Since(t0) > time.Duration(svc.spec.BackoffMax) {
			failures = 1
		}
		wait := Backoff(failures, time.Since(t0), time.Duration(svc.spec.BackoffMin), time.Duration(svc.spec.BackoffMax))
		svc.set(Waiting, fmt.Sprintf("%s; restarting in %s", detail, wait))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			svc.set(Stopped, detail)
			return
		}
		svc.bumpRestarts()
	}
}

func (svc *service) bumpRestarts() {
	svc.mu.Lock()
	svc.st.Restarts++
	svc.mu.Unlock()
}

// runOnce starts the process and waits for it; the exit code is -1 when a signal killed it.
func (svc *service) runOnce(ctx context.Context) (int, error) {
	svc.set(Starting, "")
	cmd := exec.Command(svc.spec.Command[0], svc.spec.Command[1:]...)
	cmd.Env = append([]string{"PATH=" + Path}, svc.spec.Env...)
	cmd.Dir = svc.spec.Dir
	// Its own process group, so that stopping it reaches whatever it forked.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := svc.output()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 2 * time.Second // a grandchild holding the pipe must not hang Wait
	exited := make(chan struct{})
	svc.mu.Lock()
	svc.exited = exited
	svc.mu.Unlock()
	defer close(exited)
	if err := svc.sup.opts.Starter.Start(cmd); err != nil {
		out.Close()
		svc.set(Failing, "start: "+err.Error())
		return 127, err
	}
	svc.mu.Lock()
	svc.cmd = cmd
	svc.st.PID = cmd.Process.Pid
	svc.mu.Unlock()
	svc.set(Running, "")
	hctx, cancel := context.WithCancel(ctx)
	if svc.spec.Health != nil {
		go svc.checkLoop(hctx)
	}
	err := svc.sup.opts.Starter.Wait(cmd)
	cancel()
	out.Close()
	svc.mu.Lock()
	svc.cmd = nil
	svc.mu.Unlock()
	code := 0
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return code, err
	}
	return code, nil
}

// A service's output goes to its ring and, while a log directory exists, to NAME.log there
// (a journal.File: best effort, never an error the service could see).

// output tees a service's output into its ring and its log file. Write never fails.
type output struct {
	ring *events.Ring
	file *journal.File
}

func (o *output) Write(p []byte) (int, error) {
	o.ring.Write(p)
	if o.file != nil {
		o.file.Write(p)
	}
	return len(p), nil
}

func (o *output) Close() error {
	if o.file != nil {
		o.file.Close()
	}
	return nil
}

// output is where the process writes: the ring, and a log file when a log directory exists.
func (svc *service) output() *output {
	o := &output{ring: svc.ring}
	if svc.sup.opts.LogDir != nil {
		if dir := svc.sup.opts.LogDir(); dir != "" {
			o.file = journal.NewFile(dir, svc.spec.Name, svc.sup.opts.LogMaxBytes, svc.sup.opts.LogKeep, svc.sup.opts.Log)
		}
	}
	return o
}

// terminate sends the stop signal to the process group, waits up to the grace period, then
// SIGKILLs the group, and waits for the exit.
// terminate stops the running process; final (a Stop, not a restart) also waits for the run
// loop to end.
func (svc *service) terminate(final bool) {
	svc.mu.Lock()
	cmd, exited := svc.cmd, svc.exited
	svc.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	pgid := cmd.Process.Pid
	syscall.Kill(-pgid, syscall.Signal(Signals[svc.spec.StopSignal]))
	select {
	case <-exited:
	case <-time.After(time.Duration(svc.spec.Grace)):
		svc.sup.opts.Log.Warn("service did not stop in its grace period; SIGKILL", "name", svc.spec.Name, "grace", time.Duration(svc.spec.Grace))
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-exited
	}
	// The process is gone; let its run loop publish "stopped" before the next service (a
	// dependency) is stopped, so that observers see the order in which it happened. Bounded:
	// the loop only has to take a lock and return.
	if final {
		select {
		case <-svc.runDone:
		case <-time.After(time.Second):
		}
	}
}

func (svc *service) checkLoop(ctx context.Context) {
	h := svc.spec.Health
	fails := 0
	t := time.NewTicker(time.Duration(h.Interval))
	defer t.Stop()
	for {
		err := svc.check(ctx)
		if ctx.Err() != nil {
			return
		}
		svc.mu.Lock()
		cur := svc.st.State
		svc.mu.Unlock()
		if err == nil {
			fails = 0
			if cur != Healthy {
				svc.set(Healthy, "")
			}
		} else {
			fails++
			if cur == Healthy && fails >= h.Failures || cur == Running && fails >= h.Failures && svc.everUp() {
				svc.set(Failing, "health: "+err.Error())
			} else if cur == Failing {
				svc.mu.Lock()
				svc.st.LastError = "health: " + err.Error()
				svc.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (svc *service) everUp() bool {
	select {
	case <-svc.up:
		return true
	default:
		return false
	}
}

func (svc *service) check(ctx context.Context) error {
	h := svc.spec.Health
	ctx, cancel := context.WithTimeout(ctx, time.Duration(h.Timeout))
	defer cancel()
	switch {
	case h.TCP != "":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", h.TCP)
		if err != nil {
			return err
		}
		return c.Close()
	case h.HTTP != "":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.HTTP, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("GET %s: %s", h.HTTP, resp.Status)
		}
		return nil
	default:
		cmd := exec.Command(h.Exec[0], h.Exec[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := svc.sup.opts.Starter.Start(cmd); err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() { done <- svc.sup.opts.Starter.Wait(cmd) }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			return fmt.Errorf("exec check timed out after %s", time.Duration(h.Timeout))
		}
	}
}
