// Package testenv holds what every test harness of keel shares: where the repository and its
// build outputs are, and free loopback ports. The harnesses themselves live beside it: vmtest
// (QEMU), kubetest (etcd + kube-apiserver), etcdtest (etcd clusters of separate processes).
// Only tests import them.
package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RepoRoot finds the keel module root above the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module keel\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("testenv: no keel go.mod above the working directory")
		}
		dir = parent
	}
}

// BuildDir is build/ under the repository root, where make and the harnesses keep outputs.
func BuildDir() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "build"), nil
}

// Bin is the path of a binary in build/bin, built by `make k8s-bins` (or `make etcd-bin`).
func Bin(name string) (string, error) {
	dir, err := BuildDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "bin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("testenv: %s not built: run `make k8s-bins`", p)
	}
	return p, nil
}

// FreePort returns a TCP port free on 127.0.0.1 and reserved for this process (0 if none
// could be had, which the caller's listen then reports).
//
// Not the kernel's pick for port 0: that comes from the ephemeral range, the same range every
// outgoing connection's source port comes from, so between the pick and the listen (an etcd
// or QEMU started later) a client connection of another test package, running at the same
// time, can take it ("bind: address already in use" in TestSnapshotRestore). The ports here
// lie below the ephemeral range, and each is reserved across processes by an flock held
// until the process ends.
func FreePort() int {
	lo, hi := portRange()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 200 {
		p := lo + rand.IntN(hi-lo)
		if reserve(p) {
			return p
		}
	}
	// Nothing left below the ephemeral range: the kernel's pick, with its race.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var (
	portsMu sync.Mutex
	held    = map[int]*os.File{} // the locks, open until the process ends
)

// portRange is where FreePort looks: from 20000 up to the ephemeral range's start (or 10000
// up, when a machine's ephemeral range starts lower).
func portRange() (lo, hi int) {
	hi = 32768 // Linux's default ip_local_port_range starts here
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				hi = n
			}
		}
	}
	lo = 20000
	if hi-lo < 1000 {
		lo = 10000
	}
	if hi-lo < 1000 {
		lo, hi = 10000, 11000
	}
	return lo, hi
}

// reserve takes port p for this process if no other test process holds it and nothing
// listens on it.
func reserve(p int) bool {
	if held[p] != nil {
		return false
	}
	dir := filepath.Join(os.TempDir(), "keel-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return false
	}
	_ = os.Chmod(dir, 0o1777) // past the umask: every user's tests share it, as /tmp
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(p)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return false
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		f.Close()
		return false
	}
	l.Close()
	held[p] = f
	return true
}

// CPUTime is the CPU time (user + system) process pid has used so far, from /proc/PID/stat
// (fields 14 and 15, counted after the command name, which may hold spaces and parentheses;
// 100 clock ticks a second on Linux).
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}
