// Package journal keeps the node's logs on EPHEMERAL across reboots, so that "why did the trial
// fail?" has an answer on the node after it fell back: one directory a boot
// (ROOT/NNNNNN-BOOTID, NNNNNN counting boots), holding boot.json (version, slot, start) and
// NAME.log for each log (the init's own, each service's), rotated by size (File). When a boot
// starts its journal, the oldest boots are removed so that at most KeepBoots boots, and about
// PastBytes of the earlier ones, stay.
//
// A boot whose init never mounted EPHEMERAL (it died before, or EPHEMERAL was being remade)
// leaves no directory: "the boot before" is the one before that had its logs kept.
package journal

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"keel/events"
)

// Defaults of the limits across boots.
const (
	DefaultKeepBoots = 10
	DefaultPastBytes = 256 << 20
)

// ErrNotFound: no such boot, or no such log in it.
var ErrNotFound = errors.New("journal: not found")

// Options configure a Journal.
type Options struct {
	// KeepBoots is how many boots' logs are kept, this one included (DefaultKeepBoots).
	KeepBoots int
	// PastBytes bounds the earlier boots' logs together (DefaultPastBytes): the oldest go first.
	PastBytes int64
	// MaxBytes and Keep are each log file's rotation (File's defaults).
	MaxBytes int64
	Keep     int
	Log      *slog.Logger
}

// Info is what boot.json says of a boot.
type Info struct {
	Version string    `json:"version"`
	Slot    string    `json:"slot"`
	Started time.Time `json:"started"`
}

// Boot is one boot's logs.
type Boot struct {
	Seq    int      `json:"seq"`
	BootID string   `json:"boot_id"`
	Info   Info     `json:"info"`
	Logs   []string `json:"logs"` // names, sorted
	Bytes  int64    `json:"bytes"`
	Dir    string   `json:"-"`
}

// Journal is this boot's directory and the logs followed into it.
type Journal struct {
	root string
	dir  string
	seq  int
	o    Options

	mu      sync.Mutex
	closed  bool
	stops   []func()
	pending sync.WaitGroup
}

var bootDir = regexp.MustCompile(`^([0-9]{6,})-([0-9a-zA-Z-]+)$`)

// List returns the boots under root, oldest first.
func List(root string) ([]Boot, error) {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	var out []Boot
	for _, e := range ents {
		m := bootDir.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		seq, _ := strconv.Atoi(m[1])
		b := Boot{Seq: seq, BootID: m[2], Dir: filepath.Join(root, e.Name())}
		if raw, err := os.ReadFile(filepath.Join(b.Dir, "boot.json")); err == nil {
			json.Unmarshal(raw, &b.Info)
		}
		files, _ := os.ReadDir(b.Dir)
		for _, f := range files {
			if i, err := f.Info(); err == nil {
				b.Bytes += i.Size()
			}
			if name, ok := strings.CutSuffix(f.Name(), ".log"); ok {
				b.Logs = append(b.Logs, name)
			}
		}
		slices.Sort(b.Logs)
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b Boot) int { return a.Seq - b.Seq })
	return out, nil
}

// Start makes this boot's directory under root (the next number after the last boot's) with
// its boot.json, and removes the oldest boots past the limits. An error leaves no journal: the
// logs stay in memory only.
func Start(root, bootID string, info Info, o Options) (*Journal, error) {
	if o.KeepBoots <= 0 {
		o.KeepBoots = DefaultKeepBoots
	}
	if o.PastBytes <= 0 {
		o.PastBytes = DefaultPastBytes
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if !bootDir.MatchString("000000-" + bootID) {
		return nil, fmt.Errorf("journal: boot id %q", bootID)
	}
	boots, err := List(root)
	if err != nil {
		return nil, err
	}
	seq := 1
	if len(boots) > 0 {
		seq = boots[len(boots)-1].Seq + 1
	}
	for _, b := range prune(boots, o.KeepBoots-1, o.PastBytes) {
		if err := os.RemoveAll(b.Dir); err != nil {
			o.Log.Warn("journal: an old boot's logs could not be removed", "dir", b.Dir, "err", err)
		}
	}
	dir := filepath.Join(root, fmt.Sprintf("%06d-%s", seq, bootID))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	raw, _ := json.Marshal(info)
	if err := os.WriteFile(filepath.Join(dir, "boot.json"), append(raw, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return &Journal{root: root, dir: dir, seq: seq, o: o}, nil
}

// prune returns the boots to remove (pure): all but the newest keep, and the oldest while the
// ones kept hold more than bytes together.
func prune(boots []Boot, keep int, bytes int64) []Boot {
	var total int64
	kept := 0
	for i := len(boots) - 1; i >= 0; i-- {
		if kept == keep || total+boots[i].Bytes > bytes {
			return boots[:i+1]
		}
		kept++
		total += boots[i].Bytes
	}
	return nil
}

// Dir is this boot's directory (services write their NAME.log there).
func (j *Journal) Dir() string { return j.dir }

// Boot is the boot back boots before this one (-1: the one before); ErrNotFound if none is kept.
func (j *Journal) Boot(back int) (Boot, error) {
	boots, err := List(j.root)
	if err != nil {
		return Boot{}, err
	}
	i := slices.IndexFunc(boots, func(b Boot) bool { return b.Seq == j.seq })
	if back > 0 || i < 0 || i+back < 0 {
		return Boot{}, fmt.Errorf("%w: boot %d (%d earlier boots kept)", ErrNotFound, back, max(i, 0))
	}
	return boots[i+back], nil
}

// Boots are the boots kept, this one first (Seq descending).
func (j *Journal) Boots() ([]Boot, error) {
	boots, err := List(j.root)
	slices.Reverse(boots)
	return boots, err
}

// Follow writes ring (all it holds now, then every new line) into NAME.log of this boot until
// Close. Lines are flushed and synced each second, so a boot that hangs until a watchdog
// resets it keeps all but its last second.
func (j *Journal) Follow(ring *events.Ring, name string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return
	}
	f := NewFile(j.dir, name, j.o.MaxBytes, j.o.Keep, j.o.Log)
	held, lines, cancel := ring.Follow(0, 8192)
	j.stops = append(j.stops, cancel)
	j.pending.Add(1)
	go func() {
		defer j.pending.Done()
		w := bufio.NewWriterSize(f, 64<<10)
		for _, l := range held {
			w.WriteString(l + "\n")
		}
		dirty := true
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					w.Flush()
					f.Sync()
					f.Close()
					return
				}
				w.WriteString(l + "\n")
				dirty = true
			case <-tick.C:
				if dirty {
					w.Flush()
					f.Sync()
					dirty = false
				}
			}
		}
	}()
}

// Close stops following, flushes and closes the files: before EPHEMERAL is unmounted.
// Idempotent.
func (j *Journal) Close() {
	j.mu.Lock()
	stops := j.stops
	j.stops, j.closed = nil, true
	j.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	j.pending.Wait()
}

var logName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]*$`)

// Paths are the files of log name in dir, oldest first (NAME.log.K ... NAME.log.1, NAME.log);
// ErrNotFound if there are none.
func Paths(dir, name string) ([]string, error) {
	if !logName.MatchString(name) {
		return nil, fmt.Errorf("%w: log %q", ErrNotFound, name)
	}
	base := filepath.Join(dir, name+".log")
	var out []string
	for i := 1; ; i++ {
		p := base + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		out = append(out, p)
	}
	slices.Reverse(out)
	if _, err := os.Stat(base); err == nil {
		out = append(out, base)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no log %q in %s", ErrNotFound, name, filepath.Base(dir))
	}
	return out, nil
}
