// Package install is install mode: the init, booted from its kernel and initramfs alone (PXE,
// an ISO or USB stick; QEMU's -kernel), puts keel on a disk of the machine and reboots into
// it. The kernel command line names the target disk and where the node's install document
// (its config, key material and installer image) comes from:
//
//	keel.install=SEL[,SEL...]   which disk: /dev/NAME, model=GLOB, serial=GLOB, min-size=N,
//	                            max-size=N (N in bytes or with K/M/G/T), wipe
//	keel.config=https://...     the install document
//	keel.config.ca=sha256:HEX   the pinned CA: SHA-256 of its SubjectPublicKeyInfo (kubeadm's
//	                            discovery hash), required for https
//	keel.install.token=sha256:HEX  instead of keel.config: serve the maintenance endpoint
//	                            (maintenance.go) and wait for an admin to push the document
//	                            with the token of that hash
//
// args.go, content.go and document.go are pure; fetch.go talks HTTPS; install_linux.go does
// the disk work.
package install

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"

	"keel/boot"
)

// Kernel command line keys of install mode.
const (
	ArgInstall  = "keel.install"
	ArgConfig   = "keel.config"
	ArgConfigCA = "keel.config.ca"
	ArgToken    = "keel.install.token"
)

// ErrArgs wraps every command line error.
var ErrArgs = errors.New("install arguments")

// Selector picks the target disk among the machine's disks. Every field set must match.
type Selector struct {
	Dev     string // /dev/NAME: exactly this disk
	Model   string // shell pattern over the disk's model (sysfs device/model)
	Serial  string // shell pattern over its serial
	MinSize int64
	MaxSize int64 // 0: no bound
}

// Args are install mode's command line.
type Args struct {
	Select Selector
	// Wipe allows installing over a disk that holds data (a partition table, a filesystem,
	// any bytes in its first MiB, or a complete keel install).
	Wipe   bool
	Config string // https URL of the install document
	CAHash []byte // SHA-256 of the pinned CA's SubjectPublicKeyInfo
	// TokenHash, instead of Config: the node serves a maintenance endpoint and waits for an
	// admin to push the document with the token whose SHA-256 this is.
	TokenHash []byte
}

// Requested reports whether the command line asks for install mode.
func Requested(c boot.Cmdline) bool {
	_, ok := c[ArgInstall]
	return ok
}

// ParseArgs reads install mode's arguments from the command line.
func ParseArgs(c boot.Cmdline) (Args, error) {
	var a Args
	v, ok := c[ArgInstall]
	if !ok {
		return a, fmt.Errorf("%w: no %s=", ErrArgs, ArgInstall)
	}
	for _, f := range strings.Split(v, ",") {
		if f == "" {
			continue
		}
		k, val, hasVal := strings.Cut(f, "=")
		switch {
		case !hasVal && strings.HasPrefix(f, "/dev/"):
			if a.Select.Dev != "" {
				return a, fmt.Errorf("%w: %s names two disks (%s, %s)", ErrArgs, ArgInstall, a.Select.Dev, f)
			}
			if path.Clean(f) != f || strings.Count(f, "/") < 2 {
				return a, fmt.Errorf("%w: %s: %q is not a device path", ErrArgs, ArgInstall, f)
			}
			a.Select.Dev = f
		case !hasVal && f == "wipe":
			a.Wipe = true
		case hasVal && (k == "model" || k == "serial"):
			if _, err := path.Match(val, ""); err != nil || val == "" {
				return a, fmt.Errorf("%w: %s: %s=%q is not a pattern", ErrArgs, ArgInstall, k, val)
			}
			if k == "model" {
				a.Select.Model = val
			} else {
				a.Select.Serial = val
			}
		case hasVal && (k == "min-size" || k == "max-size"):
			n, err := ParseSize(val)
			if err != nil {
				return a, fmt.Errorf("%w: %s: %s: %w", ErrArgs, ArgInstall, k, err)
			}
			if k == "min-size" {
				a.Select.MinSize = n
			} else {
				a.Select.MaxSize = n
			}
		default:
			return a, fmt.Errorf("%w: %s: unknown selector %q (want /dev/NAME, model=, serial=, min-size=, max-size=, wipe)", ErrArgs, ArgInstall, f)
		}
	}
	if a.Select.MaxSize != 0 && a.Select.MaxSize < a.Select.MinSize {
		return a, fmt.Errorf("%w: %s: max-size is below min-size", ErrArgs, ArgInstall)
	}
	a.Config = c[ArgConfig]
	tok, hasToken := c[ArgToken]
	switch {
	case a.Config == "" && hasToken:
		h, err := parseHash(tok)
		if err != nil {
			return a, fmt.Errorf("%w: %s=%q: %w (the SHA-256 of the token an admin sends: printf %%s TOKEN | sha256sum)", ErrArgs, ArgToken, tok, err)
		}
		a.TokenHash = h
		return a, nil
	case a.Config == "":
		return a, fmt.Errorf("%w: no %s= (the install document's https URL) and no %s= (wait for an admin to push it)", ErrArgs, ArgConfig, ArgToken)
	case hasToken:
		return a, fmt.Errorf("%w: %s= and %s= both given: the document comes from one place", ErrArgs, ArgConfig, ArgToken)
	case !strings.HasPrefix(a.Config, "https://"):
		// The document carries the node's private key: never over plain HTTP.
		return a, fmt.Errorf("%w: %s=%q: must be an https URL", ErrArgs, ArgConfig, a.Config)
	}
	b, err := parseHash(c[ArgConfigCA])
	if err != nil {
		return a, fmt.Errorf("%w: %s=%q: %w of the CA's public key (openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum)", ErrArgs, ArgConfigCA, c[ArgConfigCA], err)
	}
	a.CAHash = b
	return a, nil
}

// parseHash reads sha256:HEX.
func parseHash(v string) ([]byte, error) {
	h, ok := strings.CutPrefix(v, "sha256:")
	b, err := hex.DecodeString(h)
	if !ok || err != nil || len(b) != 32 {
		return nil, errors.New("want sha256:<64 hex digits>")
	}
	return b, nil
}

// ParseSize reads a byte count with an optional K, M, G or T suffix (powers of 1024).
func ParseSize(s string) (int64, error) {
	mult := int64(1)
	if n := len(s); n > 0 {
		switch strings.ToUpper(s[n-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult != 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (bytes, or with K/M/G/T)", s)
	}
	return v * mult, nil
}
