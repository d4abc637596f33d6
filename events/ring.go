// Package events is the node's streams: Ring keeps the last lines of a log in memory, bounded
// in lines and bytes, and lets readers follow it (the init's own log, each service's output);
// Bus publishes state changes as NDJSON lines in a Ring (boot phases, services, upgrades,
// shutdown steps), which the endpoint serves and follows.
package events

import (
	"sync"
)

// Ring is a bounded, concurrency-safe line buffer. The zero value is not usable; call NewRing.
type Ring struct {
	mu       sync.Mutex
	lines    []string // circular
	start, n int
	bytes    int
	maxBytes int
	seq      uint64 // lines ever written; the sequence number of the next line
	subs     map[chan string]struct{}
	closed   bool
}

// New returns a ring keeping at most maxLines lines and about maxBytes bytes.
func NewRing(maxLines, maxBytes int) *Ring {
	return &Ring{lines: make([]string, max(maxLines, 1)), maxBytes: maxBytes, subs: map[chan string]struct{}{}}
}

// Write appends p as lines (a trailing partial line counts as a line). It never blocks on a
// slow follower: a follower whose channel is full misses lines rather than stalling the log.
func (r *Ring) Write(p []byte) (int, error) {
	s := string(p)
	for len(s) > 0 {
		line := s
		if i := indexByte(s, '\n'); i >= 0 {
			line, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		r.Append(line)
	}
	return len(p), nil
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// Append adds one line.
func (r *Ring) Append(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if r.n == len(r.lines) {
		r.dropOldest()
	}
	r.lines[(r.start+r.n)%len(r.lines)] = line
	r.n++
	r.bytes += len(line)
	for r.maxBytes > 0 && r.bytes > r.maxBytes && r.n > 1 {
		r.dropOldest()
	}
	r.seq++
	for c := range r.subs {
		select {
		case c <- line:
		default:
		}
	}
}

func (r *Ring) dropOldest() {
	r.bytes -= len(r.lines[r.start])
	r.lines[r.start] = ""
	r.start = (r.start + 1) % len(r.lines)
	r.n--
}

// Tail returns the last n lines (all when n <= 0), oldest first.
func (r *Ring) Tail(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tailLocked(n)
}

func (r *Ring) tailLocked(n int) []string {
	if n <= 0 || n > r.n {
		n = r.n
	}
	out := make([]string, 0, n)
	for i := r.n - n; i < r.n; i++ {
		out = append(out, r.lines[(r.start+i)%len(r.lines)])
	}
	return out
}

// Follow returns the last n lines and a channel of every line appended after them, atomically
// (no line is lost or repeated between the two). cancel must be called to stop following; the
// channel is closed by cancel or by Close.
func (r *Ring) Follow(n, buffer int) (tail []string, lines <-chan string, cancel func()) {
	c := make(chan string, max(buffer, 1))
	r.mu.Lock()
	defer r.mu.Unlock()
	tail = r.tailLocked(n)
	if r.closed {
		close(c)
		return tail, c, func() {}
	}
	r.subs[c] = struct{}{}
	var once sync.Once
	return tail, c, func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if _, ok := r.subs[c]; ok {
				delete(r.subs, c)
				close(c)
			}
		})
	}
}

// Close ends every follower (at shutdown). Later writes are dropped.
func (r *Ring) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for c := range r.subs {
		delete(r.subs, c)
		close(c)
	}
}

// Len reports the number of lines held and their total bytes.
func (r *Ring) Len() (lines, bytes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n, r.bytes
}
