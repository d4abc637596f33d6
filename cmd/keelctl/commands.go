package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"keel/events"
	"keel/netapi"
	"keel/netapi/client"
	"keel/supervisor"
)

func commands() map[string]command {
	cs := []command{
		{name: "status", help: "the node: version, slots, upgrade, services, warnings", run: cmdStatus},
		{name: "version", help: "the node's version, Go version and kernel", run: cmdVersion},
		{name: "services", help: "each service's state, pid, restarts, last error", run: cmdServices},
		{name: "logs", args: "NAME", help: "a service's output, or the init's own log (init)", positional: 1, run: cmdLogs, flags: func(fs *flag.FlagSet) {
			fs.Bool("f", false, "follow: print new lines as they come")
			fs.Int("tail", 100, "lines of history (0: none)")
			fs.Int("boot", 0, "an earlier boot's log: -1 the boot before this one (see boots)")
		}},
		{name: "boots", help: "the boots whose logs the node keeps", run: cmdBoots},
		{name: "events", help: "the node's events: boot phases, services, upgrade states", run: cmdEvents, flags: func(fs *flag.FlagSet) {
			fs.Bool("f", false, "follow")
			fs.Int("tail", 100, "events of history (0: none)")
		}},
		{name: "dmesg", help: "the kernel's log", run: cmdDmesg, flags: func(fs *flag.FlagSet) {
			fs.Bool("f", false, "follow")
		}},
		{name: "upgrade", args: "IMAGE", help: "install IMAGE into the other slot and reboot into it", positional: 1, run: cmdUpgrade, flags: upgradeFlags},
		{name: "activate", help: "go on with the staged upgrade (cordon, drain, reboot)", run: cmdActivate, flags: func(fs *flag.FlagSet) {
			fs.Bool("wait", false, "follow the upgrade to its end, across the reboot")
			fs.Duration("timeout", 30*time.Minute, "how long --wait waits")
		}},
		{name: "cancel", help: "end an upgrade that has changed nothing yet, or discard a staged one", run: cmdCancel},
		{name: "rollback", help: "commit the other slot and reboot into it", run: cmdRollback, flags: waitFlags},
		{name: "reboot", help: "the ordered shutdown, then a reboot", run: cmdReboot, flags: waitFlags},
		{name: "shutdown", help: "the ordered shutdown, then power off", run: cmdShutdown},
		{name: "reset", help: "wipe partitions (--wipe EPHEMERAL,STATE) and reboot", run: cmdReset, flags: func(fs *flag.FlagSet) {
			fs.String("wipe", "", "partitions to wipe, comma-separated: EPHEMERAL, STATE (STATE holds the node's keys and config)")
		}},
	}
	m := map[string]command{}
	for _, c := range cs {
		m[c.name] = c
	}
	return m
}

func waitFlags(fs *flag.FlagSet) {
	fs.Bool("wait", false, "wait until the node is back (a new boot answering)")
	fs.Duration("timeout", 10*time.Minute, "how long --wait waits")
}

func flagBool(fs *flag.FlagSet, n string) bool {
	v, _ := strconv.ParseBool(fs.Lookup(n).Value.String())
	return v
}

func flagInt(fs *flag.FlagSet, n string) int {
	v, _ := strconv.Atoi(fs.Lookup(n).Value.String())
	return v
}

func flagDuration(fs *flag.FlagSet, n string) time.Duration {
	return fs.Lookup(n).Value.(flag.Getter).Get().(time.Duration)
}

func (k *cli) get(ctx context.Context, path string, out any) error {
	return k.c.Call(ctx, client.NodeName, http.MethodGet, path, nil, http.StatusOK, out)
}

func (k *cli) printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(k.out, "%s\n", b)
	return err
}

func cmdStatus(ctx context.Context, k *cli, _ *flag.FlagSet, _ []string) error {
	var raw json.RawMessage
	if err := k.get(ctx, "/v1/status", &raw); err != nil {
		return err
	}
	if k.json() {
		return k.printJSON(raw)
	}
	var st netapi.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return err
	}
	w := tabwriter.NewWriter(k.out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "node\t%s (context %s)\n", k.ctx.Endpoint, k.name)
	slot := fmt.Sprintf("slot %s booted, %s committed", st.BootedSlot, st.CommittedSlot)
	if st.NextSlot != "" {
		slot += fmt.Sprintf(", %s under trial (%d tries left)", st.NextSlot, st.TrialTries)
	}
	fmt.Fprintf(w, "version\t%s (%s)\n", st.Version, slot)
	var slots []string
	for _, s := range st.Slots {
		v := s.Version
		if s.Error != "" {
			v = "unreadable: " + s.Error
		}
		slots = append(slots, s.Slot+" "+v)
	}
	fmt.Fprintf(w, "slots\t%s\n", strings.Join(slots, "; "))
	role := orDash(st.Role)
	if st.ControlPlane {
		role += " (control plane)"
	}
	fmt.Fprintf(w, "role\t%s\n", role)
	fmt.Fprintf(w, "uptime\t%s (boot %d, id %s)\n", (time.Duration(st.UptimeS) * time.Second).String(), st.BootCount+1, st.BootID)
	if u := st.Upgrade; u != nil {
		line := fmt.Sprintf("%s %s: %s → %s", u.ID, u.State, orDash(u.FromVersion), orDash(u.ToVersion))
		if u.Reason != "" {
			line += ": " + u.Reason
		}
		fmt.Fprintf(w, "upgrade\t%s\n", line)
	}
	var svcs []string
	for _, s := range st.Services {
		svcs = append(svcs, s.Name+" "+string(s.State))
	}
	if len(svcs) > 0 {
		fmt.Fprintf(w, "services\t%s\n", strings.Join(svcs, ", "))
	}
	if st.RollbackFloor != "" {
		fmt.Fprintf(w, "floor\t%s (nothing older installs)\n", st.RollbackFloor)
	}
	for _, wn := range st.Warnings {
		fmt.Fprintf(w, "warning\t%s\n", wn)
	}
	return w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdVersion(ctx context.Context, k *cli, _ *flag.FlagSet, _ []string) error {
	var v netapi.Version
	if err := k.get(ctx, "/v1/version", &v); err != nil {
		return err
	}
	if k.json() {
		return k.printJSON(v)
	}
	_, err := fmt.Fprintf(k.out, "%s (%s, kernel %s)\n", v.Version, v.GoVersion, v.Kernel)
	return err
}

func cmdServices(ctx context.Context, k *cli, _ *flag.FlagSet, _ []string) error {
	var out struct {
		Services []supervisor.Status `json:"services"`
	}
	if err := k.get(ctx, "/v1/services", &out); err != nil {
		return err
	}
	if k.json() {
		return k.printJSON(out)
	}
	w := tabwriter.NewWriter(k.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSTATE\tPID\tRESTARTS\tSINCE\tLAST ERROR")
	for _, s := range out.Services {
		pid := "-"
		if s.PID > 0 {
			pid = strconv.Itoa(s.PID)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, s.State, pid, s.Restarts, s.Since.Local().Format(time.DateTime), s.LastError)
	}
	return w.Flush()
}

// stream prints an NDJSON route: raw lines with -o json, else each through human.
func (k *cli) stream(ctx context.Context, path string, human func(line []byte) string) error {
	return k.c.Stream(ctx, client.NodeName, path, func(line []byte) error {
		if k.json() {
			_, err := fmt.Fprintf(k.out, "%s\n", line)
			return err
		}
		_, err := fmt.Fprintln(k.out, human(line))
		return err
	})
}

func cmdLogs(ctx context.Context, k *cli, fs *flag.FlagSet, args []string) error {
	q := url.Values{"tail": {strconv.Itoa(flagInt(fs, "tail"))}}
	if flagBool(fs, "f") {
		q.Set("follow", "1")
	}
	if b := flagInt(fs, "boot"); b != 0 {
		if b > 0 {
			return usageError{"--boot is 0 (this boot) or negative (-1: the boot before)"}
		}
		q.Set("boot", strconv.Itoa(b))
	}
	return k.stream(ctx, "/v1/logs/"+url.PathEscape(args[0])+"?"+q.Encode(), func(line []byte) string {
		var l netapi.LogLine
		json.Unmarshal(line, &l)
		return l.Line
	})
}

func cmdBoots(ctx context.Context, k *cli, _ *flag.FlagSet, _ []string) error {
	var bs netapi.Boots
	if err := k.get(ctx, "/v1/boots", &bs); err != nil {
		return err
	}
	if k.json() {
		return k.printJSON(bs)
	}
	w := tabwriter.NewWriter(k.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "BOOT\tSTARTED\tVERSION\tSLOT\tSIZE\tLOGS")
	for _, b := range bs.Boots {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%.1f KiB\t%s\n", b.Boot, b.Started.Local().Format(time.DateTime), b.Version, b.Slot, float64(b.Bytes)/1024, strings.Join(b.Logs, " "))
	}
	return w.Flush()
}

func cmdEvents(ctx context.Context, k *cli, fs *flag.FlagSet, _ []string) error {
	q := url.Values{"tail": {strconv.Itoa(flagInt(fs, "tail"))}}
	if flagBool(fs, "f") {
		q.Set("follow", "1")
	}
	return k.stream(ctx, "/v1/events?"+q.Encode(), humanEvent)
}

func humanEvent(line []byte) string {
	var ev events.Event
	if json.Unmarshal(line, &ev) != nil {
		return string(line)
	}
	s := fmt.Sprintf("%s  %-8s %-14s %s", ev.Time.Local().Format("15:04:05.000"), ev.Kind, ev.Source, ev.Message)
	if len(ev.Data) > 0 {
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range ev.Data {
				if !yield(k) {
					return
				}
			}
		})
		for _, key := range keys {
			if v := ev.Data[key]; v != nil && v != "" {
				s += fmt.Sprintf(" %s=%v", key, v)
			}
		}
	}
	return s
}

func cmdDmesg(ctx context.Context, k *cli, fs *flag.FlagSet, _ []string) error {
	path := "/v1/dmesg"
	if flagBool(fs, "f") {
		path += "?follow=1"
	}
	return k.stream(ctx, path, func(line []byte) string {
		var r struct {
			TS      int64  `json:"ts_us"`
			Message string `json:"message"`
		}
		json.Unmarshal(line, &r)
		return fmt.Sprintf("[%12.6f] %s", float64(r.TS)/1e6, r.Message)
	})
}

func cmdCancel(ctx context.Context, k *cli, _ *flag.FlagSet, _ []string) error {
	var a netapi.Accepted
	if err := k.c.Call(ctx, client.NodeName, http.MethodPost, "/v1/upgrade/cancel", nil, http.StatusOK, &a); err != nil {
		return err
	}
	if k.json() {
		return k.printJSON(a)
	}
	_, err := fmt.Fprintln(k.out, "upgrade cancelled:", a.Status)
	return err
}

func cmdShutdown(ctx context.Context, k *cli, _ *flag.FlagSet, _ []string) error {
	return k.power(ctx, "/v1/shutdown", nil)
}

func cmdReboot(ctx context.Context, k *cli, fs *flag.FlagSet, _ []string) error {
	return k.powerAndWait(ctx, fs, "/v1/reboot")
}

func cmdRollback(ctx context.Context, k *cli, fs *flag.FlagSet, _ []string) error {
	return k.powerAndWait(ctx, fs, "/v1/rollback")
}

// powerAndWait makes a call that reboots the node and, with --wait, waits for its next boot.
func (k *cli) powerAndWait(ctx context.Context, fs *flag.FlagSet, path string) error {
	before, err := k.bootID(ctx)
	if err != nil {
		return err
	}
	if err := k.power(ctx, path, nil); err != nil {
		return err
	}
	if !flagBool(fs, "wait") {
		return nil
	}
	return k.waitBack(ctx, before, flagDuration(fs, "timeout"))
}

func cmdReset(ctx context.Context, k *cli, fs *flag.FlagSet, _ []string) error {
	wipe := fs.Lookup("wipe").Value.String()
	if wipe == "" {
		return usageError{"--wipe is required: EPHEMERAL, STATE or both (comma-separated)"}
	}
	var parts []string
	for _, p := range strings.Split(wipe, ",") {
		parts = append(parts, strings.ToUpper(strings.TrimSpace(p)))
	}
	return k.power(ctx, "/v1/reset", netapi.ResetRequest{Wipe: parts})
}

// power makes a call answered 202 {"status": ...}.
func (k *cli) power(ctx context.Context, path string, body any) error {
	var a netapi.Accepted
	if err := k.c.Call(ctx, client.NodeName, http.MethodPost, path, body, http.StatusAccepted, &a); err != nil {
		return err
	}
	if k.json() {
		return k.printJSON(a)
	}
	_, err := fmt.Fprintf(k.out, "%s: %s\n", k.ctx.Endpoint, a.Status)
	return err
}

func (k *cli) bootID(ctx context.Context) (string, error) {
	var st netapi.Status
	err := k.get(ctx, "/v1/status", &st)
	return st.BootID, err
}

// waitBack waits until the node answers from a boot other than before.
func (k *cli) waitBack(ctx context.Context, before string, timeout time.Duration) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var st netapi.Status
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		err := k.get(cctx, "/v1/status", &st)
		ccancel()
		if err == nil && st.BootID != before {
			if k.json() {
				return k.printJSON(st)
			}
			_, err := fmt.Fprintf(k.out, "back after %.1f s: %s on slot %s (boot id %s)\n", time.Since(start).Seconds(), st.Version, st.BootedSlot, st.BootID)
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the node was not back within %s (last: %v)", timeout, errOr(err, "still the same boot"))
		case <-time.After(2 * time.Second):
		}
	}
}

func errOr(err error, s string) string {
	if err != nil {
		return err.Error()
	}
	return s
}
