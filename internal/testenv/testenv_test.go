package testenv

import (
	"net"
	"strconv"
	"testing"
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
