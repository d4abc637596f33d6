package vmtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"keel/internal/testenv"
	"keel/netapi/client"
)

var (
	keelctlOnce sync.Once
	keelctlBin  string
	keelctlErr  error
)

// Keelctl builds cmd/keelctl once per test binary (into build/test-bin) and returns a command
// runner for this VM: a config whose context "admin" (current), "operator" and "reader" reach
// the VM's endpoint with the image's certificates.
func (vm *VM) Keelctl() *Keelctl {
	vm.t.Helper()
	keelctlOnce.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			keelctlErr = err
			return
		}
		dir, err := testenv.BuildDir()
		if err != nil {
			keelctlErr = err
			return
		}
		keelctlBin = filepath.Join(dir, "test-bin", "keelctl")
		cmd := exec.Command("go", "build", "-o", keelctlBin, "./cmd/keelctl")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			keelctlErr = fmt.Errorf("build keelctl: %v\n%s", err, out)
		}
	})
	if keelctlErr != nil {
		vm.t.Fatal(keelctlErr)
	}
	cfg := client.Config{Current: "admin", Contexts: map[string]client.Context{}}
	for _, role := range []string{"admin", "operator", "reader"} {
		p := vm.PKIDir()
		cfg.Contexts[role] = client.Context{Endpoint: "127.0.0.1:" + strconv.Itoa(vm.Port), CA: filepath.Join(p, "ca.crt"),
			Cert: filepath.Join(p, role+".crt"), Key: filepath.Join(p, role+".key")}
	}
	path := filepath.Join(vm.t.TempDir(), "keelctl.json")
	if err := cfg.Save(path); err != nil {
		vm.t.Fatal(err)
	}
	return &Keelctl{Bin: keelctlBin, Config: path, t: vm.t}
}

// Keelctl runs the keelctl binary against one VM.
type Keelctl struct {
	Bin, Config string
	t           testing.TB
}

// Command is keelctl with args, not started (its output to be collected by the caller).
func (k *Keelctl) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, k.Bin, args...)
	cmd.Env = append(os.Environ(), client.ConfigEnv+"="+k.Config, client.ContextEnv+"=")
	return cmd
}

// Run runs keelctl to its end: its exit code, stdout and stderr.
func (k *Keelctl) Run(ctx context.Context, args ...string) (int, string, string) {
	k.t.Helper()
	cmd := k.Command(ctx, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		k.t.Fatalf("keelctl %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}
