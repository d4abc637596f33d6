package sequence

import (
	"errors"
	"sync"

	"keel/machine"
)

// ErrShuttingDown answers a power request (or anything that would need one) once the node is
// going down.
var ErrShuttingDown = errors.New("the node is already shutting down")

// PowerRequest is how the node is to go down: a reboot or a poweroff, why, and the partitions a
// reset re-makes on the way (after the services stop and the filesystems unmount).
type PowerRequest struct {
	Action machine.Action
	Reason string
	Wipe   []string
}

// power takes the one power request the node acts on. Whatever else asks later (a second
// reboot, a reset, a rollback's reboot) is refused with ErrShuttingDown and changes nothing: a
// reset's wipe is part of its request, never armed on its own.
type power struct {
	mu       sync.Mutex
	accepted *PowerRequest
	ch       chan machine.Action
}

func newPower() power { return power{ch: make(chan machine.Action, 1)} }

// request accepts r if it is the first; accepted (if not nil) is called before the shutdown
// can begin, so that what it reports comes before the shutdown's own reports.
func (p *power) request(r PowerRequest, accepted func()) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.accepted != nil {
		return ErrShuttingDown
	}
	r.Wipe = append([]string(nil), r.Wipe...)
	p.accepted = &r
	if accepted != nil {
		accepted()
	}
	p.ch <- r.Action
	return nil
}

// down reports whether a request was accepted.
func (p *power) down() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted != nil
}

// wipe is what the accepted request re-makes.
func (p *power) wipe() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.accepted == nil {
		return nil
	}
	return p.accepted.Wipe
}

// PowerRequests delivers the one accepted power request.
func (n *Node) PowerRequests() <-chan machine.Action { return n.power.ch }

// Reboot starts the ordered shutdown and a reboot.
func (n *Node) Reboot(reason string) error { return n.requestPower(machine.ActionReboot, reason, nil) }

func (n *Node) requestPower(a machine.Action, reason string, wipe []string) error {
	// The event first: a follower sees the request, then the shutdown it starts.
	return n.power.request(PowerRequest{Action: a, Reason: reason, Wipe: wipe}, func() {
		n.log.Info("power request", "action", a.String(), "reason", reason, "wipe", wipe)
		n.publish("power", a.String(), reason, nil)
	})
}

// powerFx is the node's power as the upgrade executor sees it.
type powerFx struct{ n *Node }

func (p powerFx) Reboot(reason string) error { return p.n.Reboot(reason) }
func (p powerFx) Down() bool                 { return p.n.power.down() }
