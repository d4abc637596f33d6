package main

import (
	"net"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestRegistryKeepsImages: what `make registry` runs (the real docker-registry) still holds a
// pushed image after it was stopped and started again.
func TestRegistryKeepsImages(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	cmd, err := distribution(addr, dir)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := random.Image(1024, 1)
	ref, _ := name.NewTag(addr+"/keel:v1.0.0", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if _, err := remote.Head(ref); err == nil {
		t.Fatal("the registry still answers after it was stopped")
	}
	if cmd, err = distribution(addr, dir); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Fatalf("after a restart: digest %s, want %s", d, want)
	}
}
