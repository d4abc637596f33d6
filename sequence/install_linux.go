package sequence

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"

	"keel/config"
	"keel/install"
)

// Install mode (package install): the init booted from its kernel and initramfs alone with
// keel.install= on the command line. After the drivers, it brings the network up, gets its
// install document (from keel.config's URL, or pushed by an admin to the maintenance
// endpoint), installs onto the disk the arguments name and reboots into it. A refusal or
// failure is printed on the console and the machine stays up, changed as little as the failure
// allows (a refusal changes nothing): an operator reads why, fixes the document or the
// arguments, and boots it again, or pushes a corrected document.

// InstallPrefix starts install mode's console lines; InstallDone and InstallFailed its last.
const (
	InstallPrefix = "keel-install: "
	InstallDone   = InstallPrefix + "done "
	InstallFailed = InstallPrefix + "failed: "
)

const installWork = "/run/keel/install"

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

func (n *Node) installStep(step, msg string) {
	n.log.Info("install", "step", step, "msg", msg)
	fmt.Fprintf(n.opts.Console, "%s%s: %s\n", InstallPrefix, step, msg)
	n.publish("install", step, msg, nil)
}

func (n *Node) install(ctx context.Context) error {
	n.mu.Lock()
	c := n.cmdline
	n.mu.Unlock()
	a, err := install.ParseArgs(c)
	if err != nil {
		fmt.Fprintf(n.opts.Console, "%s%v\n", InstallFailed, err)
		return err
	}
	o := install.Options{Args: a, Run: n.Reaper.Run, SysRoot: "/sys", WorkDir: installWork, Step: n.installStep,
		Warn: func(err error) { n.warn("install: %v", err) }}
	if a.TokenHash != nil {
		return n.installPushed(ctx, o)
	}
	return n.installEnd(install.Run(ctx, o))
}

// installEnd reports how an install ended and reboots into a completed one.
func (n *Node) installEnd(res install.Result, err error) error {
	if err != nil {
		fmt.Fprintf(n.opts.Console, "%s%v\n", InstallFailed, err)
		return err
	}
	fmt.Fprintf(n.opts.Console, "%sversion=%s disk=%s digest=%s: rebooting into the installed system\n", InstallDone, res.Version, res.Disk.Dev, res.Digest)
	return n.Reboot("install complete")
}

// installPushed serves the maintenance endpoint and installs each document an admin pushes
// until one installs (a failed one can be corrected and pushed again). It runs in the
// background: the boot is done, the endpoint is how the node is reached.
func (n *Node) installPushed(ctx context.Context, o install.Options) error {
	m, tlsCfg, err := install.NewMaintenance(o.Args.TokenHash, func() ([]install.Disk, error) {
		return install.ListDisks("/sys", filepath.Join(installWork, "probe-api"))
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", config.DefaultAPIPort))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: m.Handler(), TLSConfig: tlsCfg}
	go func() {
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("install: maintenance endpoint stopped", "err", err)
		}
	}()
	n.mu.Lock()
	n.srv = srv // the shutdown closes it
	addrs := n.addrs
	n.mu.Unlock()
	where := fmt.Sprintf(":%d", config.DefaultAPIPort)
	if len(addrs) > 0 {
		where = net.JoinHostPort(addrs[0].Addr().String(), fmt.Sprint(config.DefaultAPIPort))
	}
	n.installStep("maintenance", fmt.Sprintf("waiting for the install document: POST https://%s/v1/install (bearer token; certificate public key sha256:%s, curl --pinnedpubkey sha256//%s)", where, m.PinHex, m.PinBase64))
	step := o.Step
	o.Step = func(s, msg string) { step(s, msg); m.Step(s, msg) }
	go func() {
		for {
			doc, err := m.Wait(ctx)
			if err != nil {
				return
			}
			o.Document = doc
			res, err := install.Run(ctx, o)
			m.End(err)
			if n.installEnd(res, err) == nil {
				return
			}
		}
	}()
	return nil
}
