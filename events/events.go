// Package events is the node's stream of state changes (boot phases, service transitions,
// upgrade steps and progress, shutdown steps), kept as NDJSON lines in a bounded ring that
// the endpoint serves and follows.
package events

import (
	"encoding/json"
	"sync"
	"time"
)

// Event is one state change. Data holds kind-specific fields.
type Event struct {
	Seq     uint64         `json:"seq"`
	Time    time.Time      `json:"time"`
	Kind    string         `json:"kind"`   // boot, service, upgrade, shutdown, power
	Source  string         `json:"source"` // the phase, service or upgrade id
	Message string         `json:"message"`
	Data    map[string]any `json:"data,omitempty"`
}

// Bus publishes events. The zero value is not usable; call New.
type Bus struct {
	mu   sync.Mutex
	seq  uint64
	ring *Ring
	now  func() time.Time
}

// New returns a bus keeping the last n events.
func New(n int, now func() time.Time) *Bus {
	if now == nil {
		now = time.Now
	}
	return &Bus{ring: NewRing(n, 0), now: now}
}

// Publish appends an event; it never blocks on a slow follower.
func (b *Bus) Publish(kind, source, msg string, data map[string]any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	line, err := json.Marshal(Event{Seq: b.seq, Time: b.now().UTC(), Kind: kind, Source: source, Message: msg, Data: data})
	if err != nil {
		line, _ = json.Marshal(Event{Seq: b.seq, Time: b.now().UTC(), Kind: kind, Source: source, Message: msg + " (data not encodable)"})
	}
	b.ring.Append(string(line))
}

// Ring is the NDJSON lines, for Tail and Follow.
func (b *Bus) Ring() *Ring { return b.ring }

// Close ends every follower (at shutdown).
func (b *Bus) Close() { b.ring.Close() }
