package journal

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"keel/events"
)

// TestTail: the last n lines of a log split over rotated files, read from the ends, equal the
// last n of the whole log read naively: lines of every length (empty, across 64 KiB chunks,
// longer than a chunk), a last line without its newline, every n.
func TestTail(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 30 {
		dir := t.TempDir()
		var all []string
		var paths []string
		files := 1 + r.IntN(3)
		for fi := range files {
			var b strings.Builder
			lines := r.IntN(200)
			for li := range lines {
				var l string
				switch r.IntN(10) {
				case 0:
					l = ""
				case 1:
					l = strings.Repeat("x", 70<<10+r.IntN(1000)) // longer than a chunk
				default:
					l = fmt.Sprintf("f%d l%d %s", fi, li, strings.Repeat("y", r.IntN(3000)))
				}
				all = append(all, l)
				b.WriteString(l)
				if fi < files-1 || li < lines-1 || l == "" || r.IntN(2) == 0 {
					b.WriteString("\n") // the newest file's last line may lack it
				}
			}
			p := filepath.Join(dir, fmt.Sprintf("f%d", fi))
			if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			paths = append(paths, p)
		}
		for _, n := range []int{1, 2, 7, 100, 1000, len(all), len(all) + 5} {
			got, err := Tail(paths, n)
			if err != nil {
				t.Fatal(err)
			}
			want := all[max(len(all)-n, 0):]
			if !slices.Equal(got, want) {
				t.Fatalf("round %d, %d files, %d lines, tail %d: got %d lines, want %d (first got %.40q, want %.40q)", round, files, len(all), n, len(got), len(want), first(got), first(want))
			}
		}
	}
}

func first(l []string) string {
	if len(l) == 0 {
		return "<none>"
	}
	return l[0]
}

func fill(t *testing.T, dir string, bytes int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "init.log"), make([]byte, bytes), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestStartPrunes: each boot gets the next number; the oldest go past KeepBoots and past
// PastBytes (the new boot's own logs do not count); names that are not boots are left alone.
func TestStartPrunes(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "lost+found"), 0o755)
	var seqs []int
	for i := range 6 {
		j, err := Start(root, fmt.Sprintf("boot-%d", i), Info{Version: "v1", Slot: "A"}, Options{KeepBoots: 4, PastBytes: 1000})
		if err != nil {
			t.Fatal(err)
		}
		fill(t, j.Dir(), 300)
		seqs = append(seqs, j.seq)
	}
	boots, _ := List(root)
	var got []string
	for _, b := range boots {
		got = append(got, fmt.Sprintf("%d-%s:%v", b.Seq, b.BootID, b.Logs))
	}
	// 4 kept by count; their 3 earlier ones hold 900+ bytes (init.log and boot.json): the
	// oldest of them goes too.
	if want := []string{"4-boot-3:[init]", "5-boot-4:[init]", "6-boot-5:[init]"}; !slices.Equal(got, want) || !slices.Equal(seqs, []int{1, 2, 3, 4, 5, 6}) {
		t.Errorf("boots %v (seqs %v), want %v", got, seqs, want)
	}
	if _, err := os.Stat(filepath.Join(root, "lost+found")); err != nil {
		t.Errorf("a directory that is not a boot was removed: %v", err)
	}
	if _, err := Start(root, "../x", Info{}, Options{}); err == nil {
		t.Error("a boot id with a path in it was taken")
	}
}

func TestPrune(t *testing.T) {
	b := func(bytes ...int64) []Boot {
		var out []Boot
		for i, n := range bytes {
			out = append(out, Boot{Seq: i + 1, Bytes: n})
		}
		return out
	}
	for _, tc := range []struct {
		boots []Boot
		keep  int
		bytes int64
		gone  int
	}{
		{nil, 3, 100, 0},
		{b(1, 1, 1), 3, 100, 0},
		{b(1, 1, 1, 1), 3, 100, 1},
		{b(50, 40, 30), 9, 100, 1}, // 30+40 fit, +50 does not
		{b(10, 200), 9, 100, 2},    // the newest alone is too big: nothing earlier is kept
		{b(1, 1), 0, 100, 2},
	} {
		if got := len(prune(tc.boots, tc.keep, tc.bytes)); got != tc.gone {
			t.Errorf("prune(%v, %d, %d) removes %d, want %d", tc.boots, tc.keep, tc.bytes, got, tc.gone)
		}
	}
}

// TestFollowAndReadBack: what the ring held before the journal started and what it gets after
// are in NAME.log once Close returns; the next boot reads them as boot -1, with boot.json; a
// boot never kept and a log never written are ErrNotFound.
func TestFollowAndReadBack(t *testing.T) {
	root := t.TempDir()
	ring := events.NewRing(100, 0)
	ring.Append("before the mount")
	j, err := Start(root, "aaaa", Info{Version: "v2.0.0", Slot: "B", Started: time.Unix(100, 0).UTC()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	j.Follow(ring, "init")
	for i := range 50 {
		ring.Append(fmt.Sprintf("line %d", i))
	}
	j.Close()
	ring.Append("after close: memory only")
	j.Close() // again: nothing

	next, err := Start(root, "bbbb", Info{Version: "v1.0.0", Slot: "A"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	prev, err := next.Boot(-1)
	if err != nil {
		t.Fatal(err)
	}
	if prev.BootID != "aaaa" || prev.Info.Version != "v2.0.0" || prev.Info.Slot != "B" || !slices.Equal(prev.Logs, []string{"init"}) {
		t.Errorf("boot -1: %+v", prev)
	}
	paths, err := Paths(prev.Dir, "init")
	if err != nil {
		t.Fatal(err)
	}
	lines, _ := Tail(paths, 1000)
	if len(lines) != 51 || lines[0] != "before the mount" || lines[50] != "line 49" {
		t.Errorf("boot -1's init log: %d lines %q … %q", len(lines), first(lines), lines[len(lines)-1])
	}
	if cur, err := next.Boot(0); err != nil || cur.BootID != "bbbb" {
		t.Errorf("boot 0: %+v %v", cur, err)
	}
	for _, back := range []int{-2, 1} {
		if _, err := next.Boot(back); !errors.Is(err, ErrNotFound) {
			t.Errorf("boot %d: %v, want ErrNotFound", back, err)
		}
	}
	for _, name := range []string{"kubelet", "../boot.json", ""} {
		if _, err := Paths(prev.Dir, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("log %q: %v, want ErrNotFound", name, err)
		}
	}
	boots, _ := next.Boots()
	if len(boots) != 2 || boots[0].BootID != "bbbb" {
		t.Errorf("boots %+v, want this one first", boots)
	}
}

// TestPathsRotated: rotated files come oldest first.
func TestPathsRotated(t *testing.T) {
	dir := t.TempDir()
	f := NewFile(dir, "svc", 100, 2, nil)
	for i := range 60 {
		fmt.Fprintf(f, "line %02d\n", i)
	}
	f.Close()
	paths, err := Paths(dir, "svc")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 3 || !strings.HasSuffix(paths[0], "svc.log.2") || !strings.HasSuffix(paths[2], "svc.log") {
		t.Fatalf("paths %v", paths)
	}
	lines, _ := Tail(paths, 1000)
	// 12 lines of 8 bytes a file, 3 files.
	if len(lines) != 36 || lines[0] != "line 24" || lines[35] != "line 59" {
		t.Errorf("%d lines, last %q", len(lines), lines[len(lines)-1])
	}
}
