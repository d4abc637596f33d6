// Command pause is the test clusters' pod sandbox image's program (what registry.k8s.io/pause
// does): it holds the pod's namespaces, reaps orphans as PID 1, and exits on SIGTERM/SIGINT.
// Built here because the tests' nodes have no internet.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
