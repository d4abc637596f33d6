// Package testenv holds what every test harness of keel shares: where the repository and its
// build outputs are, and free loopback ports. The harnesses themselves live beside it: vmtest
// (QEMU), kubetest (etcd + kube-apiserver), etcdtest (etcd clusters of separate processes).
// Only tests import them.
package testenv

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// RepoRoot finds the keel module root above the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module keel\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("testenv: no keel go.mod above the working directory")
		}
		dir = parent
	}
}

// BuildDir is build/ under the repository root, where make and the harnesses keep outputs.
func BuildDir() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "build"), nil
}

// Bin is the path of a binary in build/bin, built by `make k8s-bins` (or `make etcd-bin`).
func Bin(name string) (string, error) {
	dir, err := BuildDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "bin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("testenv: %s not built: run `make k8s-bins`", p)
	}
	return p, nil
}

// FreePort returns a TCP port free on 127.0.0.1 at the time of asking (0 if none could be
// had, which the caller's listen then reports).
func FreePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
