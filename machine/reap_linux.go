package machine

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reaper collects orphaned children: every process whose parent dies is re-parented to PID 1,
// and unless PID 1 waits for it, it stays a zombie forever.
//
// It must not reap the children the init started itself and waits for through os/exec (their
// Wait would fail with ECHILD), so those are started through Start, which records them. A scan
// and a Start hold the same lock: a child that exits at once cannot be taken for an orphan.
type Reaper struct {
	mu    sync.Mutex
	ours  map[int]bool
	log   *slog.Logger
	self  int
	count int
}

// NewReaper returns a reaper for the children of this process.
func NewReaper(log *slog.Logger) *Reaper {
	return &Reaper{ours: map[int]bool{}, log: log, self: os.Getpid()}
}

// Start starts cmd as a child the reaper leaves alone; call Wait on it through the reaper.
func (r *Reaper) Start(cmd *exec.Cmd) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	r.ours[cmd.Process.Pid] = true
	return nil
}

// Wait waits for a command started with Start.
func (r *Reaper) Wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	r.mu.Lock()
	delete(r.ours, cmd.Process.Pid)
	r.mu.Unlock()
	return err
}

// Run is Start then Wait.
func (r *Reaper) Run(cmd *exec.Cmd) error {
	if err := r.Start(cmd); err != nil {
		return err
	}
	return r.Wait(cmd)
}

// Reaped is the number of orphans collected so far.
func (r *Reaper) Reaped() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count
}

// Loop reaps on every SIGCHLD, and once a second in case signals coalesced, until ctx ends.
func (r *Reaper) Loop(ctx context.Context) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGCHLD)
	defer signal.Stop(c)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		r.ReapOnce()
		select {
		case <-ctx.Done():
			return
		case <-c:
		case <-t.C:
		}
	}
}

// ReapOnce collects every zombie child not started through Start.
func (r *Reaper) ReapOnce() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, pid := range zombieChildren(r.self) {
		if r.ours[pid] {
			continue
		}
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err != nil || got != pid {
			continue
		}
		n++
		r.count++
		r.log.Debug("reaped orphan", "pid", pid, "status", ws.ExitStatus())
	}
	return n
}

// zombieChildren lists the pids in /proc whose parent is ppid and whose state is Z.
func zombieChildren(ppid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		state, parent, ok := parseStat(b)
		if ok && parent == ppid && state == 'Z' {
			out = append(out, pid)
		}
	}
	return out
}

// parseStat reads state and ppid from /proc/PID/stat ("pid (comm) S ppid ..."); comm may
// contain spaces and parentheses, so it splits after the last ')'.
func parseStat(b []byte) (state byte, ppid int, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+4 > len(b) {
		return 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	p, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], p, true
}

// SetSubreaper makes this process the reaper of its orphaned descendants (what PID 1 is by
// nature); tests use it to exercise the Reaper outside PID 1.
func SetSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl PR_SET_CHILD_SUBREAPER: %w", err)
	}
	return nil
}
