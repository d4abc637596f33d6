package main

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"keel/boot"
	"keel/config"
	"keel/initramfs/nodeimage"
	"keel/install"
	"keel/pki"
)

// cmdInstallDoc writes install mode's document: the node's config (from -config, or empty)
// trusting the cosign key of -keys, the endpoint's key material from -pki, the image to install.
func cmdInstallDoc(args []string) error {
	fs := flag.NewFlagSet("install-doc", flag.ExitOnError)
	image := fs.String("image", "", "installer image slot A is written from, as the node names it (required)")
	out := fs.String("out", "build/install/node.json", "document to write")
	cfgFile := fs.String("config", "", "the node's config.json (default: an empty config)")
	pkiDir := fs.String("pki", "build/pki", "development PKI (mkimage pki): the endpoint's CA and server key pair")
	keys := fs.String("keys", "build/keys", "cosign key directory (mkimage key); its public key becomes a trusted key")
	cosign := fs.String("cosign", "build/bin/cosign", "cosign binary (make cosign-bin)")
	kargs := fs.String("kernel-args", "", "kernel command line of the installed boot entries (default: "+boot.DefaultKernelArgs+")")
	var insecure listFlag
	fs.Var(&insecure, "insecure-registry", "a registry the node may reach over plain HTTP (host or host:port); repeatable")
	fs.Parse(args)
	if *image == "" {
		return fmt.Errorf("install-doc: -image is required")
	}
	var cfg config.Config
	if *cfgFile != "" {
		b, err := os.ReadFile(*cfgFile)
		if err != nil {
			return err
		}
		if cfg, err = config.Parse(b); err != nil {
			return fmt.Errorf("%s: %w", *cfgFile, err)
		}
	}
	pub, err := cosignOf(*cosign).EnsureKey(context.Background(), *keys)
	if err != nil {
		return err
	}
	cfg.Upgrade.TrustedKeys = append(cfg.Upgrade.TrustedKeys, config.TrustedKey{Name: "dev", PublicKey: pub})
	cfg.Upgrade.InsecureRegistries = append(cfg.Upgrade.InsecureRegistries, insecure...)
	doc, err := nodeimage.InstallDocument(*pkiDir, cfg, nil, *image, *kargs)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(*out, doc, 0o600); err != nil {
		return err
	}
	fmt.Printf("install-doc: wrote %s (image %s; it holds the node's private key: serve it over HTTPS only)\n", *out, *image)
	return nil
}

// cmdServeInstall serves the files of -dir over HTTPS with a provisioning CA of its own (kept
// in -pki, made once), sending the CA in its chain so that nodes can check it against the
// pin, and prints the kernel arguments that point install mode at it.
func cmdServeInstall(args []string) error {
	fs := flag.NewFlagSet("serve-install", flag.ExitOnError)
	dir := fs.String("dir", "build/install", "directory of install documents")
	addr := fs.String("addr", "127.0.0.1:8443", "listen address")
	guest := fs.String("guest-host", "10.0.2.2", "the address nodes reach this server at (QEMU's host is 10.0.2.2)")
	pkiDir := fs.String("pki", "build/pki/provisioning", "the provisioning server's CA and certificate")
	argsFile := fs.String("args-file", "", "also write the kernel arguments (without keel.install=) to this file")
	fs.Parse(args)
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	names := []string{"localhost"}
	if ip := net.ParseIP(*guest); ip != nil {
		ips = append(ips, ip)
	} else {
		names = append(names, *guest)
	}
	if _, err := pki.EnsureDev(*pkiDir, ips, names, time.Now()); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(*pkiDir, pki.FileServer), filepath.Join(*pkiDir, pki.FileServerKey))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(*pkiDir, pki.FileCA))
	if err != nil {
		return err
	}
	caKey, err := os.ReadFile(filepath.Join(*pkiDir, pki.FileCAKey))
	if err != nil {
		return err
	}
	ca, err := pki.LoadCA(caPEM, caKey)
	if err != nil {
		return err
	}
	cert.Certificate = append(cert.Certificate, ca.Cert.Raw)
	ln, err := tls.Listen("tcp", *addr, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return err
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	kargs := fmt.Sprintf("keel.config=https://%s/node.json keel.config.ca=sha256:%s", net.JoinHostPort(*guest, port), hex.EncodeToString(install.PinHash(ca.Cert)))
	if *argsFile != "" {
		if err := os.WriteFile(*argsFile, []byte(kargs+"\n"), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("serve-install: serving %s on https://%s\n  kernel arguments: keel.install=<disk> %s\n", *dir, ln.Addr(), kargs)
	return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("serve-install: %s %s from %s\n", r.Method, r.URL.Path, r.RemoteAddr)
		http.FileServer(http.Dir(*dir)).ServeHTTP(w, r)
	}))
}
