// Command mkimage builds keel images on the build host.
//
//	mkimage pki  -dir build/pki                       development CA, node and client certificates
//	mkimage disk -version v1 [-version-b v2] -out build/disk.img
//	mkimage slot -version v1 -out build/images        one slot image (for installer images)
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
	"time"

	"keel/config"
	"keel/nodeimage"
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
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mkimage pki|disk|slot [flags] (-h for flags)")
	os.Exit(2)
}

// Addresses the node's server certificate is valid for: loopback (through QEMU's hostfwd)
// and the guest's address in QEMU user networking.
var devIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 2, 15), net.IPv6loopback}

func cmdPKI(args []string) error {
	fs := flag.NewFlagSet("pki", flag.ExitOnError)
	dir := fs.String("dir", "build/pki", "directory for the development PKI")
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
	s, err := nodeimage.BuildSlot(context.Background(), nodeimage.SlotOptions{RepoRoot: ".", Version: *version, Kernel: k, OutDir: *out})
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
	args0 := fs.String("kernel-args", nodeimage.DefaultKernelArgs, "kernel command line after slot= and panic=")
	fs.Parse(args)
	k, err := nodeimage.FindKernel(*cache)
	if err != nil {
		return err
	}
	ctx := context.Background()
	imgDir := filepath.Join(filepath.Dir(*out), "images")
	t0 := time.Now()
	a, err := nodeimage.BuildSlot(ctx, nodeimage.SlotOptions{RepoRoot: ".", Version: *version, Kernel: k, OutDir: imgDir})
	if err != nil {
		return err
	}
	fmt.Printf("slot: wrote %s (version %s)\n", a.Path, a.Manifest.Version)
	var b *nodeimage.Slot
	if *versionB != "" {
		s, err := nodeimage.BuildSlot(ctx, nodeimage.SlotOptions{RepoRoot: ".", Version: *versionB, Kernel: k, OutDir: imgDir})
		if err != nil {
			return err
		}
		b = &s
		fmt.Printf("slot: wrote %s (version %s)\n", s.Path, s.Manifest.Version)
	}
	err = nodeimage.BuildDisk(ctx, nodeimage.DiskOptions{
		Path: *out, Size: *size << 20, SlotA: a, SlotB: b, KernelArgs: *args0, PKIDir: *pkiDir,
		Config: config.Config{}, WorkDir: filepath.Dir(*out),
	})
	if err != nil {
		return err
	}
	fmt.Printf("disk: wrote %s (%d MiB, kernel %s) in %s\n", *out, *size, k.Release, time.Since(t0).Round(time.Millisecond))
	return nil
}
