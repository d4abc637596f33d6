package boot

import (
	"fmt"
	"strings"
)

// Cmdline is the parsed kernel command line: the last value of each key wins, as in the
// kernel. Flags without '=' map to "".
type Cmdline map[string]string

// ParseCmdline splits /proc/cmdline text. Double quotes group a value with spaces
// (key="a b"), as the kernel allows.
func ParseCmdline(s string) Cmdline {
	c := Cmdline{}
	for _, f := range splitQuoted(strings.TrimSpace(s)) {
		k, v, _ := strings.Cut(f, "=")
		c[k] = strings.Trim(v, `"`)
	}
	return c
}

func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote := false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			cur.WriteRune(r)
		case (r == ' ' || r == '\t' || r == '\n') && !inQuote:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// BootedSlot is the slot GRUB booted, from the slot= argument every menu entry passes.
func (c Cmdline) BootedSlot() (Slot, error) {
	v, ok := c["slot"]
	if !ok {
		return "", fmt.Errorf("kernel command line has no slot=: %w", ErrSlot)
	}
	return ParseSlot(v)
}
