package main

import (
	"encoding/pem"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"keel/disk"
	"keel/initramfs/release"
	"keel/installer"
)

// TestPush: mkimage push goes as the node's pulls go, over HTTPS checked against
// -registry-ca, plain HTTP only with -allow-http (real registries: go-containerregistry's).
func TestPush(t *testing.T) {
	dir := t.TempDir()
	slot := filepath.Join(dir, "slot.img")
	os.WriteFile(slot, []byte("slot bytes"), 0o644)
	img, err := release.Build(release.BuildOptions{SlotPath: slot, Slot: disk.Manifest{Version: "v3.0.0", Arch: "amd64"}})
	if err != nil {
		t.Fatal(err)
	}
	lp, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	quiet := registry.Logger(log.New(io.Discard, "", 0))
	tlsReg := httptest.NewTLSServer(registry.New(quiet))
	defer tlsReg.Close()
	plain := httptest.NewServer(registry.New(quiet))
	defer plain.Close()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsReg.Certificate().Raw}), 0o644)
	tlsHost := strings.TrimPrefix(tlsReg.URL, "https://")
	plainHost := strings.TrimPrefix(plain.URL, "http://")

	push := func(args ...string) error {
		return cmdPush(append([]string{"-image", filepath.Join(dir, "oci"), "-unsigned"}, args...))
	}
	if err := push("-ref", tlsHost+"/keel:v3.0.0"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("TLS registry without its CA: %v, want a certificate error", err)
	}
	if err := push("-ref", tlsHost+"/keel:v3.0.0", "-registry-ca", ca); err != nil {
		t.Fatalf("TLS registry with -registry-ca: %v", err)
	}
	ref, _ := installer.ParseReference(tlsHost+"/keel:v3.0.0", nil)
	got, err := remote.Image(ref, remote.WithTransport(tlsReg.Client().Transport))
	if err != nil {
		t.Fatal(err)
	}
	if gd, _ := got.Digest(); gd != mustDigest(t, img) {
		t.Fatalf("pushed %s, registry has %s", mustDigest(t, img), gd)
	}
	if err := push("-ref", plainHost+"/keel:v3.0.0"); err == nil || !strings.Contains(err.Error(), "plain HTTP") {
		t.Fatalf("plain-HTTP registry without -allow-http: %v, want a refusal", err)
	}
	if err := push("-ref", plainHost+"/keel:v3.0.0", "-allow-http"); err != nil {
		t.Fatalf("plain-HTTP registry with -allow-http: %v", err)
	}
	if err := push("-ref", tlsHost+"/keel:v3.0.0", "-registry-ca", filepath.Join(dir, "oci", "index.json")); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("a CA file without certificates: %v", err)
	}
}

func mustDigest(t *testing.T, img v1.Image) v1.Hash {
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
