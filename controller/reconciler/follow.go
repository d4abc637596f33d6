package reconciler

import (
	"context"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"keel/controller/api"
	"keel/controller/plan"
	"keel/events"
	"keel/upgrade"
)

// Streams follows a node's event stream (controller.Client.Follow).
type Streams interface {
	Follow(ctx context.Context, node string, fn func(events.Event)) error
}

// followers follow the event streams of a plan's nodes in flight, as Talos' controller follows
// a node's logs across its reboot: an upgrade that ends, or a node that answers again after
// its reboot, passes the plan at once instead of at the next poll, so the next node starts
// without waiting for it.
type followers struct {
	streams Streams
	base    context.Context
	wake    chan event.GenericEvent
	retry   time.Duration // a stream that ended (a reboot) is tried again after this

	mu      sync.Mutex
	running map[string]context.CancelFunc // plan/node
}

func newFollowers(ctx context.Context, s Streams, retry time.Duration) *followers {
	return &followers{streams: s, base: ctx, wake: make(chan event.GenericEvent, 1024), retry: retry, running: map[string]context.CancelFunc{}}
}

// sync makes the followed nodes of plan p those its status has upgrading or staging.
func (f *followers) sync(p *api.UpgradePlan, st api.UpgradePlanStatus) {
	if f == nil {
		return
	}
	want := map[string]bool{}
	for _, n := range st.Nodes {
		if n.Phase == string(plan.Upgrading) || n.Phase == string(plan.Staging) {
			want[p.Name+"/"+n.Name] = true
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for key, cancel := range f.running {
		if len(key) > len(p.Name) && key[:len(p.Name)+1] == p.Name+"/" && !want[key] {
			cancel()
			delete(f.running, key)
		}
	}
	obj := &api.UpgradePlan{}
	obj.Name = p.Name
	for key := range want {
		if _, ok := f.running[key]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(f.base)
		f.running[key] = cancel
		go f.follow(ctx, key[len(p.Name)+1:], obj)
	}
}

// follow wakes the plan when the stream (re)connects (its first line is the node's last
// event; what happened while it was away is in the status the pass reads), when the node's
// upgrade ends, and when its cordon is lifted (the health gate waits for that).
func (f *followers) follow(ctx context.Context, node string, obj client.Object) {
	for ctx.Err() == nil {
		connected := false
		f.streams.Follow(ctx, node, func(ev events.Event) {
			if !connected {
				connected = true
				f.poke(obj)
			}
			if ev.Kind == "upgrade" && (upgrade.State(ev.Message).Terminal() || ev.Message == "uncordoned" || ev.Message == string(upgrade.Staged)) {
				f.poke(obj)
			}
		})
		select {
		case <-ctx.Done():
		case <-time.After(f.retry):
		}
	}
}

func (f *followers) poke(obj client.Object) {
	select {
	case f.wake <- event.GenericEvent{Object: obj}:
	default: // the queue holds wakes enough: a pass is coming
	}
}
