package vmtest

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"
)

var ansi = regexp.MustCompile(`\x1b\[[0-9;?=]*[A-Za-z]`)

// Clean strips ANSI escapes and carriage returns from a serial line: OVMF and GRUB draw with
// them, and a pattern must match what a person reads.
func Clean(s string) string {
	return strings.TrimRight(ansi.ReplaceAllString(strings.ReplaceAll(s, "\r", ""), ""), " ")
}

// console collects the serial output as lines and lets tests wait for patterns in it.
type console struct {
	mu      sync.Mutex
	lines   []string
	cursor  int           // Expect searches from here
	changed chan struct{} // closed and replaced on every new line or at EOF
	eof     bool
	log     io.Writer
}

func newConsole(log io.Writer) *console {
	return &console{changed: make(chan struct{}), log: log}
}

func (c *console) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := Clean(sc.Text())
		c.mu.Lock()
		c.lines = append(c.lines, line)
		fmt.Fprintln(c.log, line)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.eof = true
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// expect waits until a line at or after the cursor matches re, moves the cursor past it and
// returns it with its submatches.
func (c *console) expect(re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.After(timeout)
	for {
		c.mu.Lock()
		for i := c.cursor; i < len(c.lines); i++ {
			if m := re.FindStringSubmatch(c.lines[i]); m != nil {
				c.cursor = i + 1
				c.mu.Unlock()
				return m, nil
			}
		}
		eof, ch := c.eof, c.changed
		c.mu.Unlock()
		if eof {
			return nil, fmt.Errorf("console closed (QEMU exited) before a line matched %q", re)
		}
		select {
		case <-ch:
		case <-deadline:
			return nil, fmt.Errorf("no console line matched %q within %s", re, timeout)
		}
	}
}

// waitEOF waits for QEMU to close the serial console.
func (c *console) waitEOF(timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		c.mu.Lock()
		eof, ch := c.eof, c.changed
		c.mu.Unlock()
		if eof {
			return nil
		}
		select {
		case <-ch:
		case <-deadline:
			return fmt.Errorf("QEMU still running after %s", timeout)
		}
	}
}

func (c *console) all() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}
