package machine

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Action is how the machine goes down.
type Action int

// Power actions.
const (
	ActionReboot Action = iota
	ActionPowerOff
)

func (a Action) String() string {
	if a == ActionPowerOff {
		return "poweroff"
	}
	return "reboot"
}

// DisableCtrlAltDel asks the kernel to send SIGINT to PID 1 on Ctrl-Alt-Del instead of
// rebooting on the spot, so the init can shut down in order.
func DisableCtrlAltDel() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
}

// KillAll sends SIGTERM to every process but us, waits up to grace for them to exit, then
// sends SIGKILL to what is left and waits for it. It returns how many were still alive at the
// SIGKILL. As PID 1, kill(-1) reaches every process except ourselves; zombies are reaped by the
// Reaper, so "alive" means not a zombie.
func KillAll(grace time.Duration, reap func() int) (killed int) {
	if unix.Kill(-1, unix.SIGTERM) != nil {
		return 0 // ESRCH: nobody else is running
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		reap()
		if len(livePids()) == 0 {
			return 0
		}
		time.Sleep(50 * time.Millisecond)
	}
	killed = len(livePids())
	unix.Kill(-1, unix.SIGKILL)
	for range 40 {
		reap()
		if len(livePids()) == 0 {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	return killed
}

// livePids lists the user-space processes other than us that are not zombies. Kernel threads
// (parent kthreadd, pid 2) are not ours to kill.
func livePids() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 2 {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		state, ppid, ok := parseStat(b)
		if !ok || state == 'Z' || ppid == 2 {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// Reboot performs the final reboot(2). It only returns on failure.
func Reboot(a Action) error {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_RESTART
	if a == ActionPowerOff {
		cmd = unix.LINUX_REBOOT_CMD_POWER_OFF
	}
	if err := unix.Reboot(cmd); err != nil {
		return fmt.Errorf("reboot(%s): %w", a, err)
	}
	return errors.New("reboot returned")
}

// Uptime is the kernel's CLOCK_BOOTTIME: time since boot, including suspend.
func Uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// SelfRSS is this process's resident set size in bytes (VmRSS), 0 if unknown.
func SelfRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// MemInfo is one /proc/meminfo field in bytes ("MemTotal", "MemAvailable"; 0 if absent).
func MemInfo(key string) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
