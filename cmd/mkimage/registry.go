package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// distributionBin is Debian's docker-registry (CNCF distribution; make deps installs it).
const distributionBin = "/usr/bin/docker-registry"

// distribution starts docker-registry serving plain HTTP on addr and storing under dir, and
// waits until it answers: `make registry`'s registry, whose images outlive it.
func distribution(addr, dir string) (*exec.Cmd, error) {
	if _, err := os.Stat(distributionBin); err != nil {
		return nil, fmt.Errorf("%s missing: make deps installs Debian's docker-registry (or -memory)", distributionBin)
	}
	data, err := filepath.Abs(filepath.Join(dir, "data"))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`# written by mkimage registry
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: keel-local-registry   # one instance: the upload state's signing secret need not be secret
`, data, addr)
	path := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(distributionBin, "serve", path)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := c.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return cmd, nil
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("docker-registry did not answer on %s: %v", addr, err)
		}
	}
}

func cmdRegistry(args []string) error {
	fs := flag.NewFlagSet("registry", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:5000", "listen address (a VM reaches the host's 127.0.0.1 as 10.0.2.2)")
	dir := fs.String("dir", "build/registry", "where the images are kept (they survive a restart)")
	memory := fs.Bool("memory", false, "an in-memory registry instead (go-containerregistry's; gone when it ends)")
	fs.Parse(args)
	if *memory {
		fmt.Printf("registry: serving an in-memory OCI registry on %s (Ctrl-C ends it)\n", *addr)
		return http.ListenAndServe(*addr, registry.New())
	}
	cmd, err := distribution(*addr, *dir)
	if err != nil {
		return err
	}
	fmt.Printf("registry: docker-registry on %s, images kept in %s (Ctrl-C ends it; the images stay)\n", *addr, *dir)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	stopped := make(chan struct{})
	go func() {
		<-sig
		close(stopped)
		cmd.Process.Signal(syscall.SIGTERM)
	}()
	err = cmd.Wait()
	select {
	case <-stopped: // asked to end: its exit status is the signal's
		return nil
	default:
		return fmt.Errorf("docker-registry: %w", err)
	}
}
