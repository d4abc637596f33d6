package kubetest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"keel/initramfs/nodeimage"
	"keel/internal/testenv"
)

// Container images for test clusters, built locally (the nodes have no internet) and pushed
// to a registry on the host: a pause image for pod sandboxes, and a busybox image (Debian's
// static busybox) that workloads run shell commands in.

// BusyboxApplets are linked to busybox in the busybox image.
var BusyboxApplets = []string{"sh", "sleep", "wget", "nc", "cat", "echo", "date", "ls", "mkdir", "touch", "true", "false", "test", "hostname", "kill"}

// PushPause builds ./internal/testenv/kubetest/pause statically and pushes it as ref (e.g.
// "127.0.0.1:5000/pause:test").
func PushPause(t testing.TB, ref string) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "pause")
	if err := nodeimage.BuildStatic(context.Background(), root, "./internal/testenv/kubetest/pause", bin); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	push(t, ref, []string{"/pause"}, map[string][]byte{"pause": b}, nil)
}

// PushBusybox pushes an image of the host's static busybox as ref, with sh as its entrypoint.
func PushBusybox(t testing.TB, ref string) {
	t.Helper()
	p, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox missing (make deps installs busybox-static)")
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	links := map[string]string{}
	for _, a := range BusyboxApplets {
		links["bin/"+a] = "busybox"
	}
	push(t, ref, []string{"/bin/sh"}, map[string][]byte{"bin/busybox": b, "tmp/.keep": nil}, links)
}

func push(t testing.TB, ref string, entrypoint []string, files map[string][]byte, links map[string]string) {
	t.Helper()
	layerTar, err := tarOf(files, links)
	if err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Entrypoint: entrypoint, Env: []string{"PATH=/bin"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// tarOf is a layer: files (mode 0755, parents created) and symlinks.
func tarOf(files map[string][]byte, links map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	var names []string
	for n := range files {
		names = append(names, n)
	}
	for n := range links {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for d := filepath.Dir(n); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
				return nil, err
			}
		}
		if target, ok := links[n]; ok {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: n, Linkname: target, Mode: 0o777}); err != nil {
				return nil, err
			}
			continue
		}
		b := files[n]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o755, Size: int64(len(b))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}
