// Command mkimage builds keel images on the build host.
//
//	mkimage pki  -dir build/pki                       development CA, node and client certificates
//	mkimage disk -version v1 [-version-b v2] -out build/disk.img
//	mkimage slot -version v1 -out build/images        one slot image
//	mkimage key  -dir build/keys                      cosign key pair that signs installer images
//	mkimage image -version v2 -out build/installer-v2   installer image (OCI image layout)
//	mkimage push -image build/installer-v2 -ref 127.0.0.1:5000/keel:v2   push, sign with cosign
//	mkimage registry -addr 127.0.0.1:5000            a local registry to push to (kept in build/registry)
//	mkimage install-doc -image REF -out build/install/node.json   install mode's document
//	mkimage serve-install -dir build/install          serve it over HTTPS; prints the kernel arguments
//
// The Makefile drives it; every step prints what it made.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"keel/boot"
	"keel/config"
	"keel/initramfs/nodeimage"
	"keel/initramfs/release"
	"keel/netapi/client"
	"keel/pki"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "pki":
		err = cmdPKI(os.Args[2:])
	case "disk":
		err = cmdDisk(os.Args[2:])
	case "slot":
		err = cmdSlot(os.Args[2:])
	case "key":
		err = cmdKey(os.Args[2:])
	case "image":
		err = cmdImage(os.Args[2:])
	case "push":
		err = cmdPush(os.Args[2:])
	case "registry":
		err = cmdRegistry(os.Args[2:])
	case "install-doc":
		err = cmdInstallDoc(os.Args[2:])
	case "serve-install":
		err = cmdServeInstall(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mkimage pki|disk|slot|key|image|push|registry|install-doc|serve-install [flags] (-h for flags)")
	os.Exit(2)
}

// Addresses the node's server certificate is valid for: loopback (through QEMU's hostfwd)
// and the guest's address in QEMU user networking.
var devIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 2, 15), net.IPv6loopback}

func cmdPKI(args []string) error {
	fs := flag.NewFlagSet("pki", flag.ExitOnError)
	dir := fs.String("dir", "build/pki", "directory for the development PKI")
	port := fs.Int("port", 50000, "the dev node's endpoint port on 127.0.0.1 (make run's PORT), for keelctl's config")
	fs.Parse(args)
	written, err := pki.EnsureDev(*dir, devIPs, []string{"localhost", "keel"}, time.Now())
	if err != nil {
		return err
	}
	if len(written) == 0 {
		fmt.Printf("pki: %s up to date\n", *dir)
	}
	for _, w := range written {
		fmt.Println("pki: wrote", w)
	}
	// keelctl's config for the dev node: a context per role, admin current.
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	cfg := client.Config{Current: "dev", Contexts: map[string]client.Context{}}
	for name, role := range map[string]string{"dev": "admin", "dev-operator": "operator", "dev-reader": "reader"} {
		cfg.Contexts[name] = client.Context{Endpoint: fmt.Sprintf("127.0.0.1:%d", *port), CA: filepath.Join(abs, pki.FileCA),
			Cert: filepath.Join(abs, role+".crt"), Key: filepath.Join(abs, role+".key")}
	}
	path := filepath.Join(filepath.Dir(abs), "keelctl.json")
	if err := cfg.Save(path); err != nil {
		return err
	}
	fmt.Printf("pki: wrote %s (contexts dev, dev-operator, dev-reader): export %s=%s\n", path, client.ConfigEnv, path)
	return nil
}

func cmdSlot(args []string) error {
	fs := flag.NewFlagSet("slot", flag.ExitOnError)
	version := fs.String("version", "", "version baked into the slot (required)")
	out := fs.String("out", "build/images", "output directory")
	cache := fs.String("cache", "build/cache", "cache holding the unpacked kernel")
	fs.Parse(args)
	k, err := nodeimage.FindKernel(*cache)
	if err != nil {
		return err
	}
	s, err := nodeimage.BuildSlot(context.Background(), nodeimage.SlotOptions{RepoRoot: ".", Version: *version, Kernel: k, OutDir: *out, System: nodeSystem()})
	if err != nil {
		return err
	}
	fmt.Printf("slot: wrote %s (version %s)\n", s.Path, s.Manifest.Version)
	return nil
}

func cmdDisk(args []string) error {
	fs := flag.NewFlagSet("disk", flag.ExitOnError)
	version := fs.String("version", "", "version in slot A (required)")
	versionB := fs.String("version-b", "", "version in slot B (default: B left empty)")
	out := fs.String("out", "build/disk.img", "disk image to write")
	cache := fs.String("cache", "build/cache", "cache holding the unpacked kernel")
	pkiDir := fs.String("pki", "build/pki", "development PKI (mkimage pki)")
	size := fs.Int64("size-mib", 1024, "disk size in MiB")
	keys := fs.String("keys", "build/keys", "cosign key directory (mkimage key); its public key becomes the node's trusted key")
	cosign := fs.String("cosign", "build/bin/cosign", "cosign binary (make cosign-bin)")
	var insecure listFlag
	fs.Var(&insecure, "insecure-registry", "a registry the node may reach over plain HTTP (host or host:port); repeatable")
	var add addFlag
	fs.Var(&add, "add", "DST=SRC: also pack host binary SRC (with its libraries) at DST; repeatable")
	args0 := fs.String("kernel-args", boot.DefaultKernelArgs, "kernel command line after slot= and panic=")
	fs.Parse(args)
	k, err := nodeimage.FindKernel(*cache)
	if err != nil {
		return err
	}
	ctx := context.Background()
	imgDir := filepath.Join(filepath.Dir(*out), "images")
	t0 := time.Now()
	a, err := nodeimage.BuildSlot(ctx, nodeimage.SlotOptions{RepoRoot: ".", Version: *version, Kernel: k, OutDir: imgDir, Binaries: add.binaries(), System: nodeSystem()})
	if err != nil {
		return err
	}
	fmt.Printf("slot: wrote %s (version %s)\n", a.Path, a.Manifest.Version)
	var b *nodeimage.Slot
	if *versionB != "" {
		s, err := nodeimage.BuildSlot(ctx, nodeimage.SlotOptions{RepoRoot: ".", Version: *versionB, Kernel: k, OutDir: imgDir, System: nodeSystem()})
		if err != nil {
			return err
		}
		b = &s
		fmt.Printf("slot: wrote %s (version %s)\n", s.Path, s.Manifest.Version)
	}
	pub, err := cosignOf(*cosign).EnsureKey(ctx, *keys)
	if err != nil {
		return err
	}
	cfg := config.Config{Upgrade: config.Upgrade{TrustedKeys: []config.TrustedKey{{Name: "dev", PublicKey: pub}}, InsecureRegistries: insecure}}
	err = nodeimage.BuildDisk(ctx, nodeimage.DiskOptions{
		Path: *out, Size: *size << 20, SlotA: a, SlotB: b, KernelArgs: *args0, PKIDir: *pkiDir,
		Config: cfg, WorkDir: filepath.Dir(*out),
	})
	if err != nil {
		return err
	}
	fmt.Printf("disk: wrote %s (%d MiB, kernel %s) in %s\n", *out, *size, k.Release, time.Since(t0).Round(time.Millisecond))
	return nil
}

func cmdKey(args []string) error {
	fs := flag.NewFlagSet("key", flag.ExitOnError)
	dir := fs.String("dir", "build/keys", "key directory")
	cosign := fs.String("cosign", "build/bin/cosign", "cosign binary (make cosign-bin)")
	fs.Parse(args)
	pub, err := cosignOf(*cosign).EnsureKey(context.Background(), *dir)
	if err != nil {
		return err
	}
	fmt.Printf("key: %s (cosign; the password is $COSIGN_PASSWORD, empty unless set)\n%s", filepath.Join(*dir, release.CosignKeyFile), pub)
	return nil
}

// cosignOf is the cosign binary, with the key's password from the environment as cosign
// itself reads it.
func cosignOf(bin string) release.Cosign {
	return release.Cosign{Bin: bin, Password: os.Getenv("COSIGN_PASSWORD")}
}

func cmdImage(args []string) error {
	fs := flag.NewFlagSet("image", flag.ExitOnError)
	version := fs.String("version", "", "version the image installs (required; also its tag)")
	out := fs.String("out", "", "OCI image layout directory to write (default build/installer-VERSION)")
	cache := fs.String("cache", "build/cache", "cache holding the unpacked kernel")
	fs.Parse(args)
	if *out == "" {
		*out = filepath.Join("build", "installer-"+*version)
	}
	k, err := nodeimage.FindKernel(*cache)
	if err != nil {
		return err
	}
	s, err := nodeimage.BuildSlot(context.Background(), nodeimage.SlotOptions{RepoRoot: ".", Version: *version, Kernel: k, OutDir: filepath.Join("build", "images"), System: nodeSystem()})
	if err != nil {
		return err
	}
	img, err := release.Build(release.BuildOptions{SlotPath: s.Path, Slot: s.Manifest})
	if err != nil {
		return err
	}
	// An OCI image layout keeps the manifest byte for byte (a docker-save tarball would be
	// re-serialized on read, changing the digest and the layers' media types).
	if err := os.RemoveAll(*out); err != nil {
		return err
	}
	lp, err := layout.Write(*out, empty.Index)
	if err != nil {
		return err
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": *version})); err != nil {
		return err
	}
	d, _ := img.Digest()
	fmt.Printf("image: wrote %s (version %s, %s; mkimage push signs it)\n", *out, *version, d)
	return nil
}

func cmdPush(args []string) error {
	fs := flag.NewFlagSet("push", flag.ExitOnError)
	image := fs.String("image", "", "OCI image layout from mkimage image")
	ref := fs.String("ref", "", "where to push, e.g. 127.0.0.1:5000/keel:v2")
	key := fs.String("key", "build/keys/cosign.key", "cosign private key that signs the pushed image")
	cosign := fs.String("cosign", "build/bin/cosign", "cosign binary (make cosign-bin)")
	unsigned := fs.Bool("unsigned", false, "push without signing")
	allowHTTP := fs.Bool("allow-http", false, "the registry may be plain HTTP (make registry)")
	caFile := fs.String("registry-ca", "", "PEM bundle the registry's certificate is checked against")
	fs.Parse(args)
	idx, err := layout.ImageIndexFromPath(*image)
	if err != nil {
		return err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	if len(im.Manifests) != 1 {
		return fmt.Errorf("%s holds %d images, want 1", *image, len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		return err
	}
	// The push goes as the node's pulls go: HTTPS checked against -registry-ca (or the
	// system's bundle), plain HTTP only with -allow-http.
	o := release.PushOptions{Key: *key, AllowHTTP: *allowHTTP, CAFile: *caFile}
	if !*unsigned {
		c := cosignOf(*cosign)
		o.Cosign = &c
	}
	byDigest, err := release.Push(context.Background(), img, *ref, o)
	if err != nil {
		return err
	}
	fmt.Printf("push: %s (%s)\n", *ref, byDigest)
	if !*unsigned {
		fmt.Printf("push: signed %s with %s (cosign)\n", byDigest, *key)
	}
	return nil
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// addFlag collects -add DST=SRC pairs.
type addFlag map[string]string

func (a *addFlag) String() string { return fmt.Sprint(map[string]string(*a)) }

func (a *addFlag) Set(v string) error {
	dst, src, ok := strings.Cut(v, "=")
	if !ok || !strings.HasPrefix(dst, "/") || src == "" {
		return fmt.Errorf("want DST=SRC with an absolute DST, got %q", v)
	}
	if *a == nil {
		*a = addFlag{}
	}
	(*a)[dst] = src
	return nil
}

// binaries is the default set plus the added ones (nil when none were added: the default).
func (a addFlag) binaries() map[string]string {
	if len(a) == 0 {
		return nil
	}
	m := nodeimage.DefaultBinaries()
	for k, v := range a {
		m[k] = v
	}
	return m
}

// nodeSystem is the system image every image carries: etcd, the kubelet, containerd, runc and
// the CNI plugins from build/bin (`make node-bins`). What is missing is left out with a
// warning: without etcd the image cannot be a control-plane node, without the kubelet not a
// Kubernetes node.
func nodeSystem() nodeimage.System {
	s, missing := nodeimage.NodeSystem("build/bin")
	for _, m := range missing {
		fmt.Fprintf(os.Stderr, "mkimage: %s missing (make node-bins): left out of the system image\n", m)
	}
	return s
}
