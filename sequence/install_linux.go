package sequence

import (
	"context"
	"fmt"

	"keel/install"
)

// Install mode (package install): the init booted from its kernel and initramfs alone with
// keel.install= on the command line. After the drivers, it brings the network up, installs
// onto the disk the arguments name and reboots into it. A refusal or failure is printed on
// the console and the machine stays up, changed as little as the failure allows (a refusal
// changes nothing): an operator reads why, fixes the document or the arguments, and boots it
// again.

// InstallPrefix starts install mode's console lines; InstallDone and InstallFailed its last.
const (
	InstallPrefix = "keel-install: "
	InstallDone   = InstallPrefix + "done "
	InstallFailed = InstallPrefix + "failed: "
)

// installing reports whether this boot is install mode.
func (n *Node) installing() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return install.Requested(n.cmdline)
}

// installPhases follow the early ones (mounts, command line, drivers) in install mode.
func (n *Node) installPhases() []phase {
	return []phase{
		{"network", false, n.network},
		{"names", false, n.names},
		{"install", false, n.install},
	}
}

func (n *Node) install(ctx context.Context) error {
	n.mu.Lock()
	c := n.cmdline
	n.mu.Unlock()
	err := func() error {
		a, err := install.ParseArgs(c)
		if err != nil {
			return err
		}
		res, err := install.Run(ctx, install.Options{
			Args: a, Run: n.Reaper.Run, SysRoot: "/sys", WorkDir: "/run/keel/install",
			Step: func(step, msg string) {
				n.log.Info("install", "step", step, "msg", msg)
				fmt.Fprintf(n.opts.Console, "%s%s: %s\n", InstallPrefix, step, msg)
				n.publish("install", step, msg, nil)
			},
			Warn: func(err error) { n.warn("install: %v", err) },
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(n.opts.Console, "%sversion=%s disk=%s digest=%s: rebooting into the installed system\n", InstallDone, res.Version, res.Disk.Dev, res.Digest)
		return n.Reboot("install complete")
	}()
	if err != nil {
		fmt.Fprintf(n.opts.Console, "%s%v\n", InstallFailed, err)
	}
	return err
}
