package machine

import (
	"io"
	"strings"
	"sync"
)

// Console is where the init writes for people: /dev/console (the kernel's preferred console,
// the last console= on the command line) and every other console= device, so that someone
// at the server's screen (tty0) and someone on its serial line both see the node's progress
// and its address, as the kernel's own messages go to all of them.
type Console struct {
	mu    sync.Mutex
	main  io.Writer
	extra []io.WriteCloser
}

// NewConsole writes to main (the init's stdout, i.e. /dev/console) until Attach adds more.
func NewConsole(main io.Writer) *Console { return &Console{main: main} }

// Write writes b to every console. Only the main console's error is returned: a screen that
// is gone must not stop the log.
func (c *Console) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.extra {
		w.Write(b)
	}
	return c.main.Write(b)
}

// Attach adds the devices (opened by open, e.g. /dev/tty0 for writing).
func (c *Console) Attach(devs []string, open func(dev string) (io.WriteCloser, error)) []error {
	var errs []error
	for _, d := range devs {
		w, err := open("/dev/" + d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c.mu.Lock()
		c.extra = append(c.extra, w)
		c.mu.Unlock()
	}
	return errs
}

// ExtraConsoles are the console= devices of the command line text that are not
// /dev/console, in order, each once: "console=tty0 console=ttyS0,115200" gives [tty0].
// active is /sys/class/tty/console/active, whose last entry is the device behind
// /dev/console (the kernel's choice: the last console= as a rule, but one driver serves only
// one port, so with two serial consoles it is the first); empty, the last console= is taken
// as it. Names with a path and "null" are left out.
func ExtraConsoles(cmdline, active string) []string {
	var devs []string
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, "console=")
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(v, ",")
		devs = append(devs, name)
	}
	if len(devs) == 0 {
		return nil
	}
	main := devs[len(devs)-1]
	if a := strings.Fields(active); len(a) > 0 {
		main = a[len(a)-1]
	}
	var out []string
	seen := map[string]bool{main: true}
	for _, d := range devs {
		if seen[d] || d == "" || d == "null" || strings.ContainsAny(d, "/.") {
			continue
		}
		seen[d] = true
		out = append(out, d)
	}
	return out
}
