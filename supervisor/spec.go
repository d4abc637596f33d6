// Package supervisor runs the node's system services: started in dependency order, restarted
// by policy with backoff, health-checked, their output captured in per-service rings, stopped
// in reverse order with a signal then SIGKILL after a grace period.
//
// spec.go is pure: validation, dependency order, backoff and restart decisions.
package supervisor

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// Path is every service's PATH unless its Env says otherwise: the slot's system image first
// (keel/disk.SystemDir), where the node's programs live, then the initramfs.
const Path = "/system/bin:/sbin:/bin:/usr/sbin:/usr/bin"

// Policy says when a service that exited is started again.
type Policy string

// Restart policies.
const (
	RestartAlways    Policy = "always"
	RestartOnFailure Policy = "on-failure"
	RestartNever     Policy = "never"
)

// Check is a health check; exactly one of Exec, TCP, HTTP is set.
type Check struct {
	Exec     []string `json:"exec,omitempty"`
	TCP      string   `json:"tcp,omitempty"`  // host:port to connect to
	HTTP     string   `json:"http,omitempty"` // URL that must answer 2xx
	Interval Duration `json:"interval,omitzero"`
	Timeout  Duration `json:"timeout,omitzero"`
	// Failures is how many failed checks in a row make a healthy service failing (default 1).
	Failures int `json:"failures,omitempty"`
}

// Spec declares one service (config.json "services").
type Spec struct {
	Name    string   `json:"name"`
	Command []string `json:"command"`
	Env     []string `json:"env,omitempty"`
	Dir     string   `json:"dir,omitempty"`
	// After names services that must be up (healthy, or running when they have no health
	// check) before this one starts, and that are stopped only after this one.
	After      []string `json:"after,omitempty"`
	Restart    Policy   `json:"restart,omitempty"` // default on-failure
	BackoffMin Duration `json:"backoff_min,omitzero"`
	BackoffMax Duration `json:"backoff_max,omitzero"`
	Health     *Check   `json:"health,omitempty"`
	StopSignal string   `json:"stop_signal,omitempty"` // default SIGTERM
	Grace      Duration `json:"grace,omitzero"`        // default 10s
	// Roles limits the service to nodes of these roles; empty means every node.
	Roles []string `json:"roles,omitempty"`
}

// Duration is a time.Duration written as "1.5s" in JSON.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Defaults applied by Normalize.
const (
	DefaultGrace      = 10 * time.Second
	DefaultBackoffMin = 500 * time.Millisecond
	DefaultBackoffMax = 30 * time.Second
	DefaultInterval   = 2 * time.Second
	DefaultTimeout    = 2 * time.Second
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// Signals a service may be stopped with.
var Signals = map[string]int{"SIGTERM": 15, "SIGINT": 2, "SIGQUIT": 3, "SIGHUP": 1, "SIGUSR1": 10, "SIGUSR2": 12}

// ReservedNames are log streams that are not services.
var ReservedNames = []string{"init", "kernel"}

// ErrSpec wraps every validation failure.
var ErrSpec = errors.New("service spec")

// Normalize fills defaults and validates one spec.
func (s Spec) Normalize() (Spec, error) {
	if !nameRE.MatchString(s.Name) || slices.Contains(ReservedNames, s.Name) {
		return s, fmt.Errorf("%w: bad or reserved name %q", ErrSpec, s.Name)
	}
	if len(s.Command) == 0 || !strings.HasPrefix(s.Command[0], "/") {
		return s, fmt.Errorf("%w: %s: command must start with an absolute path", ErrSpec, s.Name)
	}
	switch s.Restart {
	case "":
		s.Restart = RestartOnFailure
	case RestartAlways, RestartOnFailure, RestartNever:
	default:
		return s, fmt.Errorf("%w: %s: restart %q (want always, on-failure or never)", ErrSpec, s.Name, s.Restart)
	}
	if s.StopSignal == "" {
		s.StopSignal = "SIGTERM"
	}
	if _, ok := Signals[s.StopSignal]; !ok {
		return s, fmt.Errorf("%w: %s: stop_signal %q", ErrSpec, s.Name, s.StopSignal)
	}
	if s.Grace <= 0 {
		s.Grace = Duration(DefaultGrace)
	}
	if s.BackoffMin <= 0 {
		s.BackoffMin = Duration(DefaultBackoffMin)
	}
	if s.BackoffMax < s.BackoffMin {
		s.BackoffMax = max(Duration(DefaultBackoffMax), s.BackoffMin)
	}
	if h := s.Health; h != nil {
		c := *h
		n := 0
		for _, set := range []bool{len(c.Exec) > 0, c.TCP != "", c.HTTP != ""} {
			if set {
				n++
			}
		}
		if n != 1 {
			return s, fmt.Errorf("%w: %s: health needs exactly one of exec, tcp, http", ErrSpec, s.Name)
		}
		if c.Interval <= 0 {
			c.Interval = Duration(DefaultInterval)
		}
		if c.Timeout <= 0 {
			c.Timeout = Duration(DefaultTimeout)
		}
		if c.Failures <= 0 {
			c.Failures = 1
		}
		s.Health = &c
	}
	return s, nil
}

// Order validates specs together and returns them in start order: every service after the
// ones it names in After. Ties keep the declared order. A missing dependency or a cycle is an
// error naming the services involved.
func Order(specs []Spec) ([]Spec, error) {
	byName := map[string]int{}
	out := make([]Spec, 0, len(specs))
	for i, s := range specs {
		n, err := s.Normalize()
		if err != nil {
			return nil, err
		}
		if _, dup := byName[n.Name]; dup {
			return nil, fmt.Errorf("%w: duplicate service %q", ErrSpec, n.Name)
		}
		byName[n.Name] = i
		specs[i] = n
	}
	for _, s := range specs {
		for _, d := range s.After {
			if _, ok := byName[d]; !ok {
				return nil, fmt.Errorf("%w: %s starts after %q, which is not declared", ErrSpec, s.Name, d)
			}
		}
	}
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(specs))
	var visit func(i int, path []string) error
	visit = func(i int, path []string) error {
		switch color[i] {
		case black:
			return nil
		case grey:
			return fmt.Errorf("%w: dependency cycle %s", ErrSpec, strings.Join(append(path, specs[i].Name), " → "))
		}
		color[i] = grey
		deps := append([]string(nil), specs[i].After...)
		sort.SliceStable(deps, func(a, b int) bool { return byName[deps[a]] < byName[deps[b]] })
		for _, d := range deps {
			if err := visit(byName[d], append(path, specs[i].Name)); err != nil {
				return err
			}
		}
		color[i] = black
		out = append(out, specs[i])
		return nil
	}
	for i := range specs {
		if err := visit(i, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ForRole keeps the services that run on a node of role.
func ForRole(specs []Spec, role string) []Spec {
	var out []Spec
	for _, s := range specs {
		if len(s.Roles) == 0 || slices.Contains(s.Roles, role) {
			out = append(out, s)
		}
	}
	return out
}

// ShouldRestart decides whether a service that exited with code is started again.
func ShouldRestart(p Policy, code int, stopping bool) bool {
	if stopping {
		return false
	}
	switch p {
	case RestartAlways:
		return true
	case RestartOnFailure:
		return code != 0
	}
	return false
}

// Backoff is the wait before restart number n (1-based) after a run that lasted ran: doubling
// from min, capped at max; a run that stayed up longer than max resets it.
func Backoff(n int, ran, min, max time.Duration) time.Duration {
	if ran > max || n <= 1 {
		return min
	}
	d := min
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return minDur(d, max)
}

func minDur(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}
