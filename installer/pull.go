package installer

import (
	"compress/flate"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Error classes of a pull; every failure wraps exactly one.
var (
	ErrReference    = errors.New("invalid image reference")
	ErrNotFound     = errors.New("image not found")
	ErrUnreachable  = errors.New("registry unreachable")
	ErrArch         = errors.New("image is for another architecture")
	ErrNotInstaller = errors.New("not an installer image")
	ErrUnsigned     = errors.New("image is not signed")
	ErrSignature    = errors.New("bad signature")
	ErrTooLarge     = errors.New("slot image too large for the partition")
	ErrDigest       = errors.New("digest mismatch")
	ErrTruncated    = errors.New("download truncated")
	ErrRegistry     = errors.New("registry error")
)

// Policy is what a node accepts.
type Policy struct {
	Arch          string // e.g. amd64
	TrustedKeys   []ed25519.PublicKey
	AllowUnsigned bool
	MaxSlotSize   int64 // the inactive partition's size
}

// Pulled is a verified installer image, its slot image written to a local file.
type Pulled struct {
	Ref      string
	Digest   string // of the OCI manifest
	Manifest Manifest
	SlotPath string
}

// ParseReference parses an image reference; plain HTTP is allowed for registries named by
// a private or loopback address (as go-containerregistry does) and for those in insecure.
func ParseReference(ref string, insecure bool) (name.Reference, error) {
	opts := []name.Option{name.StrictValidation}
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrReference, ref, err)
	}
	return r, nil
}

// PullOptions tune a pull.
type PullOptions struct {
	Insecure bool
	Dest     string // file to write the slot image to
	// Progress is called as the slot downloads (bytes so far, total).
	Progress func(done, total int64)
}

// Pull fetches ref, checks it against the policy before downloading the slot, then downloads
// the slot into o.Dest while checking its size and SHA-256. On any error o.Dest is removed.
func Pull(ctx context.Context, ref string, p Policy, o PullOptions) (_ Pulled, err error) {
	r, err := ParseReference(ref, o.Insecure)
	if err != nil {
		return Pulled{}, err
	}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: p.Arch})}
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return Pulled{}, classify(ref, err)
	}
	if desc.MediaType.IsIndex() {
		// remote.Get resolved nothing for our platform only if Image() below fails; check
		// the index explicitly for a clear error.
		idx, err := desc.ImageIndex()
		if err != nil {
			return Pulled{}, classify(ref, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return Pulled{}, classify(ref, err)
		}
		found := false
		for _, m := range im.Manifests {
			if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == p.Arch {
				found = true
			}
		}
		if !found {
			return Pulled{}, fmt.Errorf("%w: %s has no linux/%s manifest", ErrArch, ref, p.Arch)
		}
	}
	img, err := desc.Image()
	if err != nil {
		return Pulled{}, classify(ref, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return Pulled{}, classify(ref, err)
	}
	if cfg.Architecture != p.Arch || cfg.OS != "linux" {
		return Pulled{}, fmt.Errorf("%w: %s is %s/%s, this node is linux/%s", ErrArch, ref, cfg.OS, cfg.Architecture, p.Arch)
	}
	layers, err := img.Layers()
	if err != nil {
		return Pulled{}, classify(ref, err)
	}
	byType := map[string]v1.Layer{}
	for _, l := range layers {
		mt, err := l.MediaType()
		if err != nil {
			return Pulled{}, classify(ref, err)
		}
		byType[string(mt)] = l
	}
	ml, sl := byType[string(MediaManifest)], byType[string(MediaSlot)]
	if ml == nil || sl == nil {
		return Pulled{}, fmt.Errorf("%w: %s lacks the manifest or slot layer", ErrNotInstaller, ref)
	}
	mb, err := readLayer(ml, 64<<10)
	if err != nil {
		return Pulled{}, classify(ref, fmt.Errorf("manifest layer: %w", err))
	}
	if err := verifySignature(mb, byType[string(MediaSignature)], p); err != nil {
		return Pulled{}, err
	}
	var m Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return Pulled{}, fmt.Errorf("%w: manifest: %v", ErrNotInstaller, err)
	}
	if err := m.Slot.Validate(); err != nil || m.Slot.Version != m.Version {
		return Pulled{}, fmt.Errorf("%w: slot manifest: %v (version %q)", ErrNotInstaller, err, m.Slot.Version)
	}
	if m.Arch != p.Arch {
		return Pulled{}, fmt.Errorf("%w: manifest says %s, this node is %s", ErrArch, m.Arch, p.Arch)
	}
	if m.SlotSize <= 0 || (p.MaxSlotSize > 0 && m.SlotSize > p.MaxSlotSize) {
		return Pulled{}, fmt.Errorf("%w: %d bytes, the partition holds %d", ErrTooLarge, m.SlotSize, p.MaxSlotSize)
	}
	digest, err := img.Digest()
	if err != nil {
		return Pulled{}, classify(ref, err)
	}
	defer func() {
		if err != nil {
			os.Remove(o.Dest)
		}
	}()
	if err := fetchSlot(sl, m, o); err != nil {
		return Pulled{}, classify(ref, err)
	}
	return Pulled{Ref: ref, Digest: digest.String(), Manifest: m, SlotPath: o.Dest}, nil
}

func readLayer(l v1.Layer, limit int64) ([]byte, error) {
	rc, err := l.Compressed() // verifies the layer digest as it reads
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return readLimited(rc, limit)
}

func verifySignature(mb []byte, sigLayer v1.Layer, p Policy) error {
	if sigLayer == nil {
		if p.AllowUnsigned {
			return nil
		}
		return fmt.Errorf("%w: and this node's config does not allow unsigned images", ErrUnsigned)
	}
	sb, err := readLayer(sigLayer, 4<<10)
	if err != nil {
		return fmt.Errorf("%w: signature layer: %v", ErrSignature, err)
	}
	var s Signature
	if err := json.Unmarshal(sb, &s); err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	sig, err := base64.StdEncoding.DecodeString(s.Signature)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	for _, k := range p.TrustedKeys {
		if ed25519.Verify(k, mb, sig) {
			return nil
		}
	}
	if p.AllowUnsigned {
		return nil // a signature we cannot check is no worse than none
	}
	return fmt.Errorf("%w: key %s is not trusted by this node, or the manifest was altered", ErrSignature, s.KeyID)
}

// fetchSlot downloads and decompresses the slot into o.Dest, never writing more than the
// manifest's size, and checks the size and SHA-256.
func fetchSlot(l v1.Layer, m Manifest, o PullOptions) error {
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	if err != nil {
		return fmt.Errorf("%w: slot layer: %v", ErrTruncated, err)
	}
	f, err := os.Create(o.Dest)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	pw := &progressWriter{total: m.SlotSize, fn: o.Progress}
	n, err := io.Copy(io.MultiWriter(f, h, pw), io.LimitReader(zr, m.SlotSize+1))
	if err != nil {
		return fmt.Errorf("slot layer after %d bytes: %w", n, err)
	}
	if n != m.SlotSize {
		if n < m.SlotSize {
			return fmt.Errorf("%w: slot has %d of %d bytes", ErrTruncated, n, m.SlotSize)
		}
		return fmt.Errorf("%w: slot is larger than the %d bytes the manifest declares", ErrDigest, m.SlotSize)
	}
	// Drain to the end so the layer digest is verified too.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("slot layer: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.SlotSHA256 {
		return fmt.Errorf("%w: slot sha256 %s, manifest says %s", ErrDigest, got, m.SlotSHA256)
	}
	return f.Sync()
}

type progressWriter struct {
	done, total int64
	last        time.Time
	fn          func(done, total int64)
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	if p.fn != nil && (time.Since(p.last) > 200*time.Millisecond || p.done == p.total) {
		p.last = time.Now()
		p.fn(p.done, p.total)
	}
	return len(b), nil
}

// classify maps transport errors onto the error classes, keeping the original text.
func classify(ref string, err error) error {
	var known = []error{ErrReference, ErrNotFound, ErrUnreachable, ErrArch, ErrNotInstaller, ErrUnsigned, ErrSignature, ErrTooLarge, ErrDigest, ErrTruncated}
	for _, k := range known {
		if errors.Is(err, k) {
			return err
		}
	}
	var te *transport.Error
	if errors.As(err, &te) {
		if te.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %s: %v", ErrNotFound, ref, err)
		}
		for _, d := range te.Errors {
			if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode || d.Code == transport.BlobUnknownErrorCode {
				return fmt.Errorf("%w: %s: %v", ErrNotFound, ref, err)
			}
		}
		return fmt.Errorf("%w: %s: %v", ErrRegistry, ref, err)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, ref, err)
	}
	var ce flate.CorruptInputError
	if errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) || errors.As(err, &ce) {
		return fmt.Errorf("%w: %s: %v", ErrDigest, ref, err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: %v", ErrTruncated, ref, err)
	}
	// go-containerregistry reports a blob whose bytes do not match its digest with an error
	// of an internal type; its text is all there is to go on.
	if msg := err.Error(); strings.Contains(msg, "error verifying") || strings.Contains(msg, "digest") {
		return fmt.Errorf("%w: %s: %v", ErrDigest, ref, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrRegistry, ref, err)
}
