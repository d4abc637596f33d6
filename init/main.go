// Command init is keel's PID 1. It wires the packages together and decides nothing itself:
// boot (sequence), then wait for a power request (signal or API), then the ordered shutdown
// and reboot(2).
//
// It never exits on its own once booted. If the boot fails fatally it exits on purpose: the
// kernel panics ("Attempted to kill init") and panic=N on the command line reboots the machine,
// into the committed slot once a trial slot has spent its tries. A node must never hang.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"keel/events"
	"keel/internal/fault"
	"keel/machine"
	"keel/sequence"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

// faultName is empty in production; test images set it (-X main.faultName=...) to reach failures a
// real part cannot produce on demand (see package keel/internal/fault).
var faultName = ""

func main() {
	initAt := machine.Uptime()
	ring := events.NewRing(20000, 4<<20)
	// The console: /dev/console, and the other console= devices once the boot has read the
	// command line (a screen and a serial line both).
	con := machine.NewConsole(os.Stdout)
	log := slog.New(slog.NewTextHandler(io.MultiWriter(con, ring), &slog.HandlerOptions{Level: slog.LevelInfo}))
	// Libraries that use the log package (u-root's DHCP client) land in the same log, at
	// debug level: they print whole DHCP packets, and their failures come back as errors.
	slog.SetDefault(log)
	slog.SetLogLoggerLevel(slog.LevelDebug)

	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "keel init: must run as PID 1")
		os.Exit(2)
	}
	// A real root before anything else: the re-executed init starts over from here.
	if first, err := machine.MoveRoot("/init"); err != nil {
		log.Warn("the root could not be made an ordinary mount: containers may fail to pivot_root into theirs", "err", err)
	} else if first > 0 {
		log.Info("root is a bind mount of the initramfs", "took", (initAt - first).Round(time.Millisecond))
		initAt = first
	}
	// Signal handler first: Ctrl-Alt-Del (SIGINT once CAD is off) or a `kill 1` may come at any
	// moment of the boot, and an unhandled one would be lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR2, syscall.SIGPWR)

	log.Info("keel init starting", "version", version, "kernel_uptime", initAt.Round(time.Millisecond))
	if fault.Fault(faultName) == fault.ExitAtStart {
		log.Error("fault injected: exiting at start")
		os.Exit(3)
	}
	node := sequence.New(sequence.Options{
		Version: version,
		Log:     log,
		Console: con,
		Modules: machine.BaseModules,
		Fault:   fault.Fault(faultName),
		InitLog: ring,
		Events:  events.New(5000, nil),
	}, initAt)
	ctx := context.Background()
	if err := node.Boot(ctx); err != nil {
		log.Error("boot failed; exiting so the kernel panics and reboots", "err", err)
		time.Sleep(200 * time.Millisecond) // let the console drain
		os.Exit(1)
	}
	go node.Reaper.Loop(ctx)

	var action machine.Action
	select {
	case s := <-sigs:
		// busybox convention: SIGUSR2 and SIGPWR power off; SIGINT (Ctrl-Alt-Del) and SIGTERM
		// reboot.
		action = machine.ActionReboot
		if s == syscall.SIGUSR2 || s == syscall.SIGPWR {
			action = machine.ActionPowerOff
		}
		log.Info("signal received", "signal", s.String(), "action", action.String())
	case action = <-node.PowerRequests():
	}
	node.RunShutdown(ctx, action, sequence.ShutdownOptions{})
	ring.Close()
	node.ArmRebootWatchdog(action)
	if err := machine.Reboot(action); err != nil {
		log.Error("reboot failed; exiting so the kernel panics and reboots", "err", err)
		os.Exit(1)
	}
}
