package machine

import (
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestReaperCollectsOrphansButNotOurChildren makes this test process a subreaper (what PID 1
// is by nature), orphans a grandchild onto it, and checks that the reaper collects the orphan
// while a child started through the reaper is still waited for by os/exec.
func TestReaperCollectsOrphansButNotOurChildren(t *testing.T) {
	if err := SetSubreaper(); err != nil {
		t.Skip(err)
	}
	r := NewReaper(slog.Default())

	// A child of ours that exits at once: the reaper must leave its zombie to cmd.Wait.
	ours := exec.Command("true")
	if err := r.Start(ours); err != nil {
		t.Fatal(err)
	}
	// sh forks a sleeper and exits; the sleeper is re-parented to us and exits soon after.
	orphaner := exec.Command("sh", "-c", "sleep 0.2 & echo $!")
	out, err := orphaner.Output()
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	if st, ppid, ok := procStat(orphan); !ok || ppid != os.Getpid() {
		t.Fatalf("orphan %d: state %c parent %d, want parent %d (subreaper)", orphan, st, ppid, os.Getpid())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.ReapOnce()
		if _, _, ok := procStat(orphan); !ok {
			break // gone from /proc: reaped
		}
		if time.Now().After(deadline) {
			st, _, _ := procStat(orphan)
			t.Fatalf("orphan %d not reaped (state %c)", orphan, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := r.Wait(ours); err != nil {
		t.Errorf("Wait on our own child after reaping: %v (the reaper took it)", err)
	}
	if r.Reaped() < 1 {
		t.Errorf("Reaped = %d", r.Reaped())
	}
	if z := zombieChildren(os.Getpid()); len(z) != 0 {
		t.Errorf("zombies left: %v", z)
	}
}

func procStat(pid int) (byte, int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	return parseStat(b)
}

func TestParseStat(t *testing.T) {
	st, ppid, ok := parseStat([]byte("42 (a) b) c) Z 1 42 42 0 -1"))
	if !ok || st != 'Z' || ppid != 1 {
		t.Errorf("parseStat = %c %d %v", st, ppid, ok)
	}
	if _, _, ok := parseStat([]byte("garbage")); ok {
		t.Error("garbage parsed")
	}
}
