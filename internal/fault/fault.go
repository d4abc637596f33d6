// Package fault names the failures a test image bakes into its init at build time
// (-ldflags -X main.fault=NAME), to reach failures a real part cannot produce on demand: a
// kernel that will not panic, a disk that will not stay busy, a gate that will not fail when
// asked. Production images carry none: the init is built with an empty fault.
package fault

// Fault is one injected failure ("" for none).
type Fault string

// Faults.
const (
	None        Fault = ""
	ExitAtStart Fault = "exit-at-start" // the init exits at once: kernel panic
	HangInTrial Fault = "hang-in-trial" // arm the watchdog in a trial, then hang
	HealthFail  Fault = "health-fail"   // a health gate fails in a trial
	BusyVar     Fault = "busy-var"      // a loop device on a file in /var keeps it busy
	SlowTrial   Fault = "slow-trial"    // a health gate takes 15 s (a window to cut power in)
	// BenchWrite is for the slot-write benchmark: after its own write and verify, the init
	// writes the same bytes onto the same partition with dd oflag=direct and hashes them with
	// sha256sum (both packed in the image), timing both, and reports memory.
	BenchWrite Fault = "bench-write"
	// HangInReboot: after the ordered shutdown, hang instead of calling reboot(2), as a
	// kernel that locks up on its way down (seen under TCG: soft lockups after reboot(2)).
	HangInReboot Fault = "hang-in-reboot"
	// KubeletNoRegister: the kubelet runs (healthy) but with a kubeconfig whose API server does
	// not answer, so it never registers: the new slot's Ready gate must fail.
	KubeletNoRegister Fault = "kubelet-no-register"
)
