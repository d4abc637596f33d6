package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"keel/events"
	"keel/netapi"
	"keel/netapi/client"
	"keel/upgrade"
)

func upgradeFlags(fs *flag.FlagSet) {
	fs.Bool("preserve", true, "keep EPHEMERAL (false: wipe it; etcd leaves and rejoins)")
	fs.Bool("force", false, "go on past a failed drain and skip the etcd quorum check")
	fs.Bool("stage", false, "write the slot while the node serves; activate later (keelctl activate)")
	fs.Bool("downgrade", false, "allow an older version (never one below the rollback floor)")
	fs.Int("drain-timeout", 0, "seconds for the drain (0: the node's config)")
	fs.Bool("wait", false, "follow the upgrade to its end, across the reboot: exit 0 done, 1 aborted or rolled back")
	fs.Duration("timeout", 30*time.Minute, "how long --wait waits")
}

func cmdUpgrade(ctx context.Context, k *cli, fs *flag.FlagSet, args []string) error {
	req := netapi.UpgradeRequest{Image: args[0], Preserve: flagBool(fs, "preserve"), Force: flagBool(fs, "force"),
		Stage: flagBool(fs, "stage"), Downgrade: flagBool(fs, "downgrade"), DrainTimeoutS: flagInt(fs, "drain-timeout")}
	var acc netapi.UpgradeAccepted
	if err := k.c.Call(ctx, client.NodeName, http.MethodPost, "/v1/upgrade", req, http.StatusAccepted, &acc); err != nil {
		return err
	}
	return k.accepted(ctx, fs, acc, "upgrade "+acc.ID+" to "+req.Image, req.Stage)
}

func cmdActivate(ctx context.Context, k *cli, fs *flag.FlagSet, _ []string) error {
	var acc netapi.UpgradeAccepted
	if err := k.c.Call(ctx, client.NodeName, http.MethodPost, "/v1/upgrade/activate", nil, http.StatusAccepted, &acc); err != nil {
		return err
	}
	return k.accepted(ctx, fs, acc, "staged upgrade "+acc.ID+" activated", false)
}

// accepted reports an accepted upgrade, and with --wait follows it to its end.
func (k *cli) accepted(ctx context.Context, fs *flag.FlagSet, acc netapi.UpgradeAccepted, what string, staged bool) error {
	if !flagBool(fs, "wait") {
		if k.json() {
			return k.printJSON(acc)
		}
		fmt.Fprintf(k.out, "%s: %s\n", what, acc.Status)
		if acc.Etcd != "" {
			fmt.Fprintf(k.out, "etcd: %s\n", acc.Etcd)
		}
		return nil
	}
	d := newDisplay(k.out, k.tty && !k.json(), time.Now())
	d.silenced = k.json()
	d.line(what)
	if acc.Etcd != "" {
		d.line("etcd: " + acc.Etcd)
	}
	ctx, cancel := context.WithTimeout(ctx, flagDuration(fs, "timeout"))
	defer cancel()
	u, err := (&waiter{k: k, id: acc.ID, d: d, staged: staged}).run(ctx)
	if err != nil {
		return err
	}
	if k.json() {
		k.printJSON(u)
	}
	switch u.State {
	case upgrade.Done:
		d.line(fmt.Sprintf("upgrade %s done: %s on slot %s", u.ID, u.ToVersion, u.ToSlot))
		return nil
	case upgrade.Staged:
		d.line(fmt.Sprintf("upgrade %s staged: %s written to slot %s; keelctl activate goes on with it", u.ID, u.ToVersion, u.ToSlot))
		return nil
	}
	return &upgradeFailed{u: u}
}

// notInRecord is an upgrade the node's record does not hold (exit 1: the node answered).
type notInRecord struct{ id string }

func (e *notInRecord) Error() string {
	return fmt.Sprintf("the node has no upgrade %s in its record (a newer one pushed it out of the history?)", e.id)
}

// upgradeFailed is an upgrade that ended aborted or rolled back (exit 1).
type upgradeFailed struct{ u upgrade.Upgrade }

func (e *upgradeFailed) Error() string {
	return fmt.Sprintf("upgrade %s %s: %s", e.u.ID, e.u.State, e.u.Reason)
}

// waiter follows one upgrade to its end: the node's record (GET /v1/status) is the truth,
// asked every 2 s and whenever the event stream ends; the events (GET /v1/events?follow=1)
// give the live progress. The stream ends when the node goes down; the record is asked again
// until the node answers from its next boot.
type waiter struct {
	k  *cli
	id string
	d  *display
	// staged: the upgrade was asked to stage: it ends, for the waiter, once staged.
	staged bool

	mu   sync.Mutex
	last upgrade.Upgrade // the record as last read: what a state event does not carry
}

func (w *waiter) seen(u upgrade.Upgrade) {
	w.mu.Lock()
	w.last = u
	w.mu.Unlock()
	w.d.state(u)
}

var errEnded = errors.New("ended")

// ended says whether the waiter is done with u.
func (w *waiter) ended(u upgrade.Upgrade) bool {
	return u.State.Terminal() || w.staged && u.State == upgrade.Staged
}

func (w *waiter) record(ctx context.Context) (upgrade.Upgrade, bool, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var st netapi.Status
	if err := w.k.get(cctx, "/v1/status", &st); err != nil {
		return upgrade.Upgrade{}, false, err
	}
	if st.Upgrade != nil && st.Upgrade.ID == w.id {
		return *st.Upgrade, true, nil
	}
	for _, u := range st.History {
		if u.ID == w.id {
			return u, true, nil
		}
	}
	return upgrade.Upgrade{}, false, nil
}

// event shows one line of the event stream: the write's progress, a gate passed, the node
// going down, a state (errEnded for the last one: the record says how it ended). replay: the
// line is from a boot's history, read once the node answers again.
func (w *waiter) event(line []byte, replay bool) error {
	var ev events.Event
	if json.Unmarshal(line, &ev) != nil {
		return nil
	}
	state := upgrade.State(ev.Message)
	switch {
	case replay && (ev.Kind != "upgrade" || ev.Message == "progress"):
	case ev.Kind == "upgrade" && ev.Source == w.id && ev.Message == "progress":
		written, _ := ev.Data["written"].(float64)
		total, _ := ev.Data["total"].(float64)
		w.d.progress(int64(written), int64(total))
	case ev.Kind == "upgrade" && ev.Message == "gate passed":
		w.d.line("  gate passed: " + ev.Source)
	case ev.Kind == "shutdown" && ev.Source == "begin":
		w.d.line("node going down: " + ev.Message)
	case ev.Kind == "upgrade" && ev.Source == w.id && (state.Terminal() || w.staged && state == upgrade.Staged):
		if !replay {
			return errEnded // the record says how (a replay leaves it to the record too)
		}
	case ev.Kind == "upgrade" && ev.Source == w.id && slices.Contains(upgrade.States, state):
		w.mu.Lock()
		u := w.last
		w.mu.Unlock()
		u.State = state
		u.Reason, _ = ev.Data["reason"].(string)
		w.d.state(u)
	}
	return nil
}

// replay shows what the node's new boot did before it answered (a trial may be over by then):
// its event history, once.
func (w *waiter) replay(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w.k.c.Stream(ctx, client.NodeName, "/v1/events?tail=1000", func(line []byte) error { return w.event(line, true) })
}

func (w *waiter) run(ctx context.Context) (upgrade.Upgrade, error) {
	var lastErr error
	wasDown := false
	for {
		u, ok, err := w.record(ctx)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return upgrade.Upgrade{}, fmt.Errorf("gave up waiting for upgrade %s (last: %v): %w", w.id, errOr(lastErr, "no answer"), ctx.Err())
			}
			lastErr = err
			wasDown = true
			w.d.unreachable(err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		case !ok:
			return upgrade.Upgrade{}, &notInRecord{w.id}
		}
		if wasDown {
			wasDown = false
			w.mu.Lock()
			w.last = u
			w.mu.Unlock()
			w.replay(ctx)
		}
		w.seen(u)
		if w.ended(u) {
			return u, nil
		}
		// Follow the events while asking for the record every 2 s.
		sctx, cancel := context.WithCancel(ctx)
		var mu sync.Mutex
		var final *upgrade.Upgrade
		go func() {
			t := time.NewTicker(2 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-sctx.Done():
					return
				case <-t.C:
				}
				u, ok, err := w.record(sctx)
				if err != nil {
					cancel() // the node went away: so did the stream, or it soon will
					return
				}
				if ok {
					w.seen(u)
					if w.ended(u) {
						mu.Lock()
						final = &u
						mu.Unlock()
						cancel()
						return
					}
				}
			}
		}()
		opened := time.Now()
		err = w.k.c.Stream(sctx, client.NodeName, "/v1/events?follow=1&tail=0", func(line []byte) error { return w.event(line, false) })
		cancel()
		mu.Lock()
		f := final
		mu.Unlock()
		if f != nil {
			return *f, nil
		}
		var ne *client.NodeError
		if errors.As(err, &ne) && ne.Status >= 400 && ne.Status < 500 && ne.Status != http.StatusTooManyRequests {
			return upgrade.Upgrade{}, err // the node will not stream to this client: no retry helps
		}
		if err != nil && !errors.Is(err, errEnded) && !errors.Is(err, context.Canceled) {
			lastErr = err
		}
		if time.Since(opened) < time.Second && ctx.Err() == nil {
			// Ended at once (the node going down, too many streams): not in a tight loop.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// display shows an upgrade's course: a line per state with the time since the request, a
// byte bar while the slot is written (redrawn in place on a terminal, every 10% otherwise),
// and a note while the node does not answer (its reboot).
type display struct {
	mu       sync.Mutex
	w        io.Writer
	tty      bool
	start    time.Time
	state_   upgrade.State
	shown    map[upgrade.State]bool // states shown: a record read before an event is not shown again
	bar      bool                   // a bar is drawn on the current line
	lastPct  int
	down     bool
	silenced bool // -o json: nothing but the final record
}

func newDisplay(w io.Writer, tty bool, start time.Time) *display {
	return &display{w: w, tty: tty, start: start, lastPct: -1, shown: map[upgrade.State]bool{}}
}

func (d *display) stamp() string {
	return fmt.Sprintf("[%6.1fs]", time.Since(d.start).Seconds())
}

// clearBar ends a bar drawn in place, so that the next line starts clean.
func (d *display) clearBar() {
	if d.bar {
		fmt.Fprint(d.w, "\r\x1b[2K")
		d.bar = false
	}
}

func (d *display) line(s string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.silenced {
		return
	}
	d.clearBar()
	fmt.Fprintf(d.w, "%s %s\n", d.stamp(), s)
}

func (d *display) state(u upgrade.Upgrade) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down {
		d.down = false
		if !d.silenced {
			d.clearBar()
			fmt.Fprintf(d.w, "%s node answers again (boot of slot %s)\n", d.stamp(), bootedOf(u))
		}
	}
	if d.shown[u.State] || d.silenced || u.State == upgrade.Done { // done: the caller's summary says it
		return
	}
	d.shown[u.State] = true
	d.state_ = u.State
	d.clearBar()
	s := string(u.State)
	switch {
	case u.State == upgrade.Pulling:
		s += " " + u.Image
	case u.State == upgrade.Locking && u.Lock != "":
		s += ": " + u.Lock
	case u.State == upgrade.Rebooting:
		s += fmt.Sprintf(" into slot %s", u.ToSlot)
	case u.State == upgrade.Trial:
		s += fmt.Sprintf(": %s booted on slot %s, health gates running", orDash(u.ToVersion), u.ToSlot)
	case u.State.Terminal() && u.Reason != "":
		s += ": " + u.Reason
	}
	fmt.Fprintf(d.w, "%s %s\n", d.stamp(), s)
}

func bootedOf(u upgrade.Upgrade) string {
	if u.State == upgrade.Trial || u.State == upgrade.Committing || u.State == upgrade.Done {
		return string(u.ToSlot)
	}
	return string(u.FromSlot)
}

func (d *display) progress(written, total int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if total <= 0 || d.silenced {
		return
	}
	pct := int(written * 100 / total)
	if d.tty {
		const width = 30
		n := min(max(int(written*width/total), 0), width)
		pct = min(max(pct, 0), 100)
		fmt.Fprintf(d.w, "\r\x1b[2K%s %s [%s%s] %3d%% %.1f/%.1f MiB", d.stamp(), d.state_, strings.Repeat("#", n), strings.Repeat(".", width-n), pct, float64(written)/(1<<20), float64(total)/(1<<20))
		d.bar = true
		return
	}
	if pct/10 != d.lastPct/10 || d.lastPct < 0 {
		d.lastPct = pct
		fmt.Fprintf(d.w, "%s %s %d%% (%.1f/%.1f MiB)\n", d.stamp(), d.state_, pct, float64(written)/(1<<20), float64(total)/(1<<20))
	}
}

func (d *display) unreachable(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down || d.silenced {
		return
	}
	d.down = true
	d.clearBar()
	fmt.Fprintf(d.w, "%s node does not answer (rebooting?): waiting for it\n", d.stamp())
}
