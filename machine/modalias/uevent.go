package modalias

import (
	"bytes"
	"fmt"
	"strings"
)

// Uevent is a kernel uevent as a NETLINK_KOBJECT_UEVENT socket delivers it: a header
// "ACTION@DEVPATH", then KEY=VALUE pairs, each NUL-terminated. A device that appears is an
// "add" with its MODALIAS among the pairs.
type Uevent struct {
	Action, DevPath string
	Env             map[string]string
}

// ParseUevent reads one message. udev's re-broadcasts ("libudev" header, a binary format)
// and anything without a header are errors: only the kernel's messages are read.
func ParseUevent(b []byte) (Uevent, error) {
	parts := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
	head := string(parts[0])
	action, devpath, ok := strings.Cut(head, "@")
	if !ok || action == "" || !strings.HasPrefix(devpath, "/") {
		return Uevent{}, fmt.Errorf("uevent: header %q: want ACTION@/DEVPATH", head)
	}
	u := Uevent{Action: action, DevPath: devpath, Env: map[string]string{}}
	for _, p := range parts[1:] {
		if k, v, ok := strings.Cut(string(p), "="); ok {
			u.Env[k] = v
		}
	}
	return u, nil
}

// Needs are the modules a uevent's device asks for: an "add" with a MODALIAS, matched as
// Coldplug matches (nil for any other event).
func (t *Table) Needs(u Uevent) []Need {
	alias := u.Env["MODALIAS"]
	if u.Action != "add" || alias == "" {
		return nil
	}
	var out []Need
	for _, m := range t.Modules(alias) {
		out = append(out, Need{Module: m, Device: strings.TrimPrefix(u.DevPath, "/"), Modalias: alias})
	}
	return out
}
