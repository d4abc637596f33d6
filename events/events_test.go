package events

import (
	"encoding/json"
	"testing"
	"time"
)

func TestPublishFollow(t *testing.T) {
	b := New(3, func() time.Time { return time.Unix(10, 0) })
	b.Publish("boot", "mounts", "done", nil)
	tail, ch, cancel := b.Ring().Follow(0, 10)
	defer cancel()
	b.Publish("service", "db", "healthy", map[string]any{"from": "running"})
	var e Event
	if err := json.Unmarshal([]byte(tail[0]), &e); err != nil || e.Seq != 1 || e.Kind != "boot" {
		t.Fatalf("tail = %q, %v", tail, err)
	}
	if err := json.Unmarshal([]byte(<-ch), &e); err != nil || e.Seq != 2 || e.Data["from"] != "running" || !e.Time.Equal(time.Unix(10, 0)) {
		t.Fatalf("followed %+v, %v", e, err)
	}
	for range 5 {
		b.Publish("x", "y", "z", map[string]any{"bad": func() {}}) // not encodable: still one line
	}
	if n, _ := b.Ring().Len(); n != 3 {
		t.Errorf("ring holds %d, want 3", n)
	}
	b.Close()
	for range ch {
	}
}
