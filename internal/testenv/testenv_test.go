package testenv

import (
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestFreePort: ports come from below the ephemeral range, are not handed out twice, and can
// be listened on.
func TestFreePort(t *testing.T) {
	lo, hi := portRange()
	seen := map[int]bool{}
	for range 50 {
		p := FreePort()
		if p < lo || p >= hi {
			t.Fatalf("port %d outside [%d, %d)", p, lo, hi)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
}

func TestCPUTime(t *testing.T) {
	before, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn at least 50 ms of CPU (several clock ticks) in this process.
	x := 0
	for t0 := time.Now(); time.Since(t0) < 50*time.Millisecond; {
		x++
	}
	after, err := CPUTime(os.Getpid())
	if err != nil || after-before < 20*time.Millisecond {
		t.Fatalf("CPU time %v → %v (%v) after a busy loop of 50 ms (%d rounds)", before, after, err, x)
	}
	if _, err := CPUTime(1 << 30); err == nil {
		t.Error("a PID that does not exist: no error")
	}
}
