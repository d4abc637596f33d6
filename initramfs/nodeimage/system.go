package nodeimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
)

// System is the content of a slot's system image (disk.SystemImageName): paths inside the
// image → host files. Links are symlinks inside it (path → target).
type System struct {
	Files map[string]string
	Links map[string]string
}

// Empty reports whether the system image would hold nothing.
func (s System) Empty() bool { return len(s.Files) == 0 && len(s.Links) == 0 }

// NodeBinaries are what a node's system image carries from build/bin (`make node-bins`), by
// their place in the image: etcd for control-plane nodes; the kubelet, containerd with its
// shim, runc and the CNI plugins for every Kubernetes node.
var NodeBinaries = map[string]string{
	"/bin/etcd":                    "etcd",
	"/bin/kubelet":                 "kubelet",
	"/bin/containerd":              "containerd",
	"/bin/containerd-shim-runc-v2": "containerd-shim-runc-v2",
	"/bin/runc":                    "runc",
	"/libexec/cni/bridge":          "cni/bridge",
	"/libexec/cni/host-local":      "cni/host-local",
	"/libexec/cni/loopback":        "cni/loopback",
}

// busyboxApplets are the few host tools the kubelet runs by name (mount(8) and umount(8) for
// tmpfs-backed volumes), from Debian's static busybox.
var busyboxApplets = []string{"mount", "umount"}

// NodeSystem is the system image of binDir's node binaries (names limits it to those, e.g.
// "etcd"). What is missing is reported, not
// fatal: an image without etcd cannot be a control-plane node, one without the kubelet cannot
// be a Kubernetes node, and the caller decides whether that matters.
func NodeSystem(binDir string, names ...string) (System, []string) {
	s := System{Files: map[string]string{}, Links: map[string]string{}}
	var missing []string
	for dst, src := range NodeBinaries {
		if len(names) > 0 && !slices.Contains(names, path.Base(dst)) {
			continue
		}
		p := filepath.Join(binDir, src)
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
			continue
		}
		s.Files[dst] = p
	}
	if _, ok := s.Files["/bin/kubelet"]; ok {
		if bb, err := exec.LookPath("busybox"); err == nil {
			s.Files["/bin/busybox"] = bb
			for _, a := range busyboxApplets {
				s.Links["/bin/"+a] = "busybox"
			}
		} else {
			missing = append(missing, "busybox (Debian's busybox-static)")
		}
	}
	return s, missing
}

// BuildSystemImage packs s as a squashfs (zstd) in cacheDir and returns its path. The image is
// reproducible (owners, times and xattrs are dropped) and named by a digest of its inputs, so
// versions built from the same binaries share one file and a rebuild costs nothing.
func BuildSystemImage(ctx context.Context, s System, cacheDir string) (string, error) {
	key, err := s.digest()
	if err != nil {
		return "", err
	}
	out := filepath.Join(cacheDir, "system-"+key[:16]+".squashfs")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	stage, err := os.MkdirTemp(cacheDir, "system-stage-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	for dst, src := range s.Files {
		p := filepath.Join(stage, filepath.Clean("/"+dst))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := copyFile(src, p, 0o755); err != nil {
			return "", err
		}
	}
	for dst, target := range s.Links {
		p := filepath.Join(stage, filepath.Clean("/"+dst))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := os.Symlink(target, p); err != nil {
			return "", err
		}
	}
	tmp := out + ".tmp"
	os.Remove(tmp)
	cmd := exec.CommandContext(ctx, "mksquashfs", stage, tmp, "-comp", "zstd", "-all-root", "-no-xattrs",
		"-mkfs-time", "0", "-all-time", "0", "-quiet", "-no-progress")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("mksquashfs (Debian's squashfs-tools; make deps): %w\n%s", err, b)
	}
	return out, os.Rename(tmp, out)
}

// digest names the inputs: every path with its file's size and modification time (the
// binaries are rebuilt, never edited in place), and every link.
func (s System) digest() (string, error) {
	h := sha256.New()
	for _, dst := range sortedKeys(s.Files) {
		fi, err := os.Stat(s.Files[dst])
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "f %s %s %d %d\n", dst, s.Files[dst], fi.Size(), fi.ModTime().UnixNano())
	}
	for _, dst := range sortedKeys(s.Links) {
		fmt.Fprintf(h, "l %s %s\n", dst, s.Links[dst])
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
