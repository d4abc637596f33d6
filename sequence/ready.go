// Package sequence is the node: its boot as timed phases (data), the rooms those phases set up
// (bootloader, upgrade executor, services, cluster sides), the endpoint's adapter, power, and
// the ordered shutdown. It decides nothing about upgrades: package upgrade does.
package sequence

import (
	"encoding/json"
	"fmt"
	"strings"
)

// ReadyPrefix starts the one machine-readable line the init prints on the console when it is
// ready; tests and benchmarks wait for it.
const ReadyPrefix = "keel-ready "

// Ready is the JSON after ReadyPrefix.
type Ready struct {
	Version        string  `json:"version"`
	Slot           string  `json:"slot"`
	BootID         string  `json:"boot_id"`
	KernelAtInitS  float64 `json:"kernel_uptime_at_init_s"`
	KernelAtReadyS float64 `json:"kernel_uptime_at_ready_s"`
	Warnings       int     `json:"warnings"`
	// Endpoint is where the control endpoint answers (mTLS), one URL per address: what a
	// person at the console needs to reach the node.
	Endpoint []string `json:"endpoint,omitempty"`
}

// Line renders the ready line (no trailing newline).
func (r Ready) Line() string {
	b, _ := json.Marshal(r)
	return ReadyPrefix + string(b)
}

// ParseReady finds and decodes a ready line.
func ParseReady(line string) (Ready, error) {
	i := strings.Index(line, ReadyPrefix)
	if i < 0 {
		return Ready{}, fmt.Errorf("no %q in %q", ReadyPrefix, line)
	}
	var r Ready
	if err := json.Unmarshal([]byte(strings.TrimSpace(line[i+len(ReadyPrefix):])), &r); err != nil {
		return Ready{}, fmt.Errorf("ready line: %w", err)
	}
	return r, nil
}

// ShutdownDonePrefix starts the last line the init prints before reboot(2).
const ShutdownDonePrefix = "keel-shutdown-done "
