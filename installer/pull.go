package installer

import (
	"compress/flate"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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
	ErrInsecure     = errors.New("registry refused: plain HTTP")
	ErrCertificate  = errors.New("registry certificate not trusted")
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
	Arch        string // e.g. amd64
	TrustedKeys []TrustedKey
	// AllowUnsigned accepts an image that carries no signature at all; one whose signatures
	// do not count (untrusted, revoked or expired key, another image's) is refused anyway.
	AllowUnsigned bool
	MaxSlotSize   int64     // the inactive partition's size
	Now           time.Time // for key expiry; zero: the clock
}

// Pulled is a verified installer image.
type Pulled struct {
	Ref      string
	Digest   string // of the OCI manifest: Ref@Digest names exactly these bytes
	Manifest Manifest
	Signed   SignedBy
}

// ParseReference parses an image reference. insecure lists the registries that may be
// reached over plain HTTP (host or host:port); every other registry is HTTPS only, whatever
// its address.
func ParseReference(ref string, insecure []string) (name.Reference, error) {
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrReference, ref, err)
	}
	if Insecure(r.Context().RegistryStr(), insecure) {
		// name.Insecure lets go-containerregistry fall back to http after https.
		return name.ParseReference(ref, name.StrictValidation, name.Insecure)
	}
	return r, nil
}

// Insecure reports whether host (host or host:port) is listed: an entry without a port
// matches every port of its host.
func Insecure(host string, list []string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	for _, e := range list {
		if strings.EqualFold(e, host) || strings.EqualFold(e, h) {
			return true
		}
	}
	return false
}

// PullOptions tune a pull.
type PullOptions struct {
	// Insecure lists the registries that may be reached over plain HTTP.
	Insecure []string
	// RootCAs verify registries' certificates; nil: the system's bundle.
	RootCAs *x509.CertPool
	// Transport, if set, is used instead of one made of Insecure and RootCAs (it must guard
	// plain HTTP the same way: installer.Transport): a caller checking many images keeps its
	// connections.
	Transport http.RoundTripper
	// Progress is called as the slot streams (bytes so far, total).
	Progress func(done, total int64)
	// Version, if set, judges the version the signed manifest declares before the slot is
	// read (the node's version policy: a refused downgrade costs a manifest, not a slot).
	Version func(version string) error
}

// httpGuard refuses plain-HTTP requests to registries not listed as insecure.
// go-containerregistry falls back to http for registries on private and loopback addresses
// whatever its caller says; a man in the middle could then serve any older signed image.
type httpGuard struct {
	rt       http.RoundTripper
	insecure []string
}

// Transport is how keel talks to registries: TLS 1.2 or later checked against roots (nil:
// the system's bundle), plain HTTP only to the registries listed in insecure.
func Transport(insecure []string, roots *x509.CertPool) http.RoundTripper {
	return &httpGuard{insecure: insecure, rt: &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	}}
}

func (g *httpGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" && !Insecure(req.URL.Host, g.insecure) {
		return nil, fmt.Errorf("%w: %s is not in upgrade.insecure_registries", ErrInsecure, req.URL.Host)
	}
	return g.rt.RoundTrip(req)
}

// Pull fetches ref and checks it against the policy before it reads the slot, then reads the
// whole slot, checking its size and SHA-256, and keeps none of it: a bad image is found out
// before anything on the node changes, and memory holds buffers, not the slot. Open streams
// the same bytes again (by digest) when they are written.
func Pull(ctx context.Context, ref string, p Policy, o PullOptions) (Pulled, error) {
	im, err := resolve(ctx, ref, p, o, true)
	if err != nil {
		return Pulled{}, err
	}
	if o.Version != nil {
		if err := o.Version(im.m.Version); err != nil {
			return Pulled{}, err
		}
	}
	rc, err := im.slot()
	if err != nil {
		return Pulled{}, classify(ref, err)
	}
	defer rc.Close()
	h := sha256.New()
	pw := &progressWriter{total: im.m.SlotSize, fn: o.Progress}
	n, err := io.Copy(io.MultiWriter(h, pw), rc)
	if err != nil {
		return Pulled{}, classify(ref, fmt.Errorf("slot layer after %d bytes: %w", n, err))
	}
	if err := checkSlot(n, hex.EncodeToString(h.Sum(nil)), im.m); err != nil {
		return Pulled{}, err
	}
	if err := rc.drain(); err != nil {
		return Pulled{}, classify(ref, err)
	}
	return Pulled{Ref: ref, Digest: im.digest, Manifest: im.m, Signed: im.signed}, nil
}

// Inspect checks ref as Pull does, short of the slot's bytes: the signature, the image and
// its signed manifest, from a few kilobytes. What the cluster controller decides with (which
// version a channel's newest signed image is); the node that installs it pulls it in full.
func Inspect(ctx context.Context, ref string, p Policy, o PullOptions) (Inspected, error) {
	im, err := resolve(ctx, ref, p, o, true)
	if err != nil {
		return Inspected{}, err
	}
	return Inspected{Pulled: Pulled{Ref: ref, Digest: im.digest, Manifest: im.m, Signed: im.signed}, Named: im.named}, nil
}

// Inspected is an image checked without its slot.
type Inspected struct {
	Pulled
	// Named is the digest ref resolves to: an index's for a multi-arch tag (the digest a
	// signature of the tag names), else Digest. repo:tag@Named pins what was checked.
	Named string
}

// Slot is an installer image's slot, streaming: at most the manifest's size and one byte more
// (so that a longer slot shows), decompressed. The reader checks neither size nor digest at
// its end: the caller hashes what it reads (it writes it, and verifies the written copy).
type Slot struct {
	io.Reader
	Manifest Manifest
	Digest   string
	close    func() error
}

// Close ends the download.
func (s *Slot) Close() error { return s.close() }

// Open fetches ref, which must name the digest a Pull verified (REPO@sha256:...), checks it
// against the policy as Pull does but for the signature (the bytes behind a digest cannot
// change; the signature, or a key's validity, could, and the write must not fail on that
// after the node has stopped its services), and returns its slot as a stream.
func Open(ctx context.Context, ref string, p Policy, o PullOptions) (*Slot, error) {
	im, err := resolve(ctx, ref, p, o, false)
	if err != nil {
		return nil, err
	}
	rc, err := im.slot()
	if err != nil {
		return nil, classify(ref, err)
	}
	return &Slot{Reader: &classifying{r: rc, ref: ref}, Manifest: im.m, Digest: im.digest, close: rc.Close}, nil
}

// classifying maps a stream's errors onto the error classes.
type classifying struct {
	r   io.Reader
	ref string
}

func (c *classifying) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if err != nil && err != io.EOF {
		err = classify(c.ref, err)
	}
	return n, err
}

func checkSlot(n int64, sum string, m Manifest) error {
	if n != m.SlotSize {
		if n < m.SlotSize {
			return fmt.Errorf("%w: slot has %d of %d bytes", ErrTruncated, n, m.SlotSize)
		}
		return fmt.Errorf("%w: slot is larger than the %d bytes the manifest declares", ErrDigest, m.SlotSize)
	}
	if sum != m.SlotSHA256 {
		return fmt.Errorf("%w: slot sha256 %s, manifest says %s", ErrDigest, sum, m.SlotSHA256)
	}
	return nil
}

// image is an installer image whose manifest, signature and sizes were checked.
type image struct {
	m      Manifest
	digest string
	named  string   // the digest the reference resolves to (an index's, for a multi-arch tag)
	layer  v1.Layer // the slot's
	signed SignedBy
}

// resolve fetches ref's manifest and small layers and checks everything but the slot's bytes.
// The signature is checked first, from the manifests alone: nothing else the registry serves
// (the image config, the keel manifest) is read before a trusted key vouches for it. verify
// false skips that check for a reference pinned by digest to an image verified before (the
// write pass: the bytes behind a digest cannot change).
func resolve(ctx context.Context, ref string, p Policy, o PullOptions, verify bool) (*image, error) {
	r, err := ParseReference(ref, o.Insecure)
	if err != nil {
		return nil, err
	}
	if _, pinned := r.(name.Digest); !verify && !pinned {
		return nil, fmt.Errorf("%w: %q: an image opened without its signature check must be named by digest", ErrReference, ref)
	}
	rt := o.Transport
	if rt == nil {
		rt = Transport(o.Insecure, o.RootCAs)
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(rt), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: p.Arch})}
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return nil, transportError(ref, err)
	}
	// The digests a signature may name: the one the reference resolves to (an index, when
	// the tag names one, as `cosign sign` of a multi-arch tag signs), and this platform's image.
	digests := []v1.Hash{desc.Digest}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, classify(ref, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, classify(ref, err)
		}
		var platform *v1.Hash
		for _, m := range im.Manifests {
			if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == p.Arch {
				platform = &m.Digest
				break
			}
		}
		if platform == nil {
			return nil, fmt.Errorf("%w: %s has no linux/%s manifest", ErrArch, ref, p.Arch)
		}
		digests = append(digests, *platform)
	}
	signed := SignedBy{Key: "verified before (pinned by digest)"}
	if verify {
		if signed, err = verifyCosign(r.Context(), digests, p, ropts); err != nil {
			return nil, err
		}
	}
	img, err := desc.Image()
	if err != nil {
		return nil, classify(ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, classify(ref, err)
	}
	if digest != digests[len(digests)-1] {
		return nil, fmt.Errorf("%w: %s resolved to %s, its index names %s", ErrDigest, ref, digest, digests[len(digests)-1])
	}
	// Even signed, a manifest's sizes are not read on trust: go-containerregistry reads the
	// config whole, so a huge one would be PID 1's memory.
	mf, err := img.Manifest()
	if err != nil {
		return nil, classify(ref, err)
	}
	if mf.Config.Size > 64<<10 || len(mf.Layers) > 8 {
		return nil, fmt.Errorf("%w: %s: a config of %d bytes and %d layers (an installer image has a small config and 2 layers)", ErrNotInstaller, ref, mf.Config.Size, len(mf.Layers))
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, classify(ref, err)
	}
	if cfg.Architecture != p.Arch || cfg.OS != "linux" {
		return nil, fmt.Errorf("%w: %s is %s/%s, this node is linux/%s", ErrArch, ref, cfg.OS, cfg.Architecture, p.Arch)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, classify(ref, err)
	}
	byType := map[string]v1.Layer{}
	for _, l := range layers {
		mt, err := l.MediaType()
		if err != nil {
			return nil, classify(ref, err)
		}
		byType[string(mt)] = l
	}
	ml, sl := byType[string(MediaManifest)], byType[string(MediaSlot)]
	if ml == nil || sl == nil {
		return nil, fmt.Errorf("%w: %s lacks the manifest or slot layer", ErrNotInstaller, ref)
	}
	mb, err := readLayer(ml, 64<<10)
	if err != nil {
		return nil, classify(ref, fmt.Errorf("manifest layer: %w", err))
	}
	var m Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrNotInstaller, err)
	}
	if err := m.Slot.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotInstaller, err)
	}
	if m.Slot.Version != m.Version {
		return nil, fmt.Errorf("%w: the slot's manifest says version %q, the image's %q", ErrNotInstaller, m.Slot.Version, m.Version)
	}
	if m.Arch != p.Arch {
		return nil, fmt.Errorf("%w: manifest says %s, this node is %s", ErrArch, m.Arch, p.Arch)
	}
	if m.SlotSize <= 0 || (p.MaxSlotSize > 0 && m.SlotSize > p.MaxSlotSize) {
		return nil, fmt.Errorf("%w: %d bytes, the partition holds %d", ErrTooLarge, m.SlotSize, p.MaxSlotSize)
	}
	if len(m.SlotSHA256) != 64 {
		return nil, fmt.Errorf("%w: slot sha256 %q", ErrNotInstaller, m.SlotSHA256)
	}
	return &image{m: m, digest: digest.String(), named: desc.Digest.String(), layer: sl, signed: signed}, nil
}

// slotReader is the slot layer decompressed, limited to the manifest's size and one byte.
type slotReader struct {
	io.Reader
	raw io.ReadCloser // the compressed blob (its digest is checked as it is read to its end)
	zr  *gzip.Reader
}

func (im *image) slot() (*slotReader, error) {
	rc, err := im.layer.Compressed() // verifies the layer digest as it reads
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(rc)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("%w: slot layer: %v", ErrTruncated, err)
	}
	return &slotReader{Reader: io.LimitReader(zr, im.m.SlotSize+1), raw: rc, zr: zr}, nil
}

// drain reads the blob to its end, so that its digest is verified too.
func (s *slotReader) drain() error {
	if _, err := io.Copy(io.Discard, s.raw); err != nil {
		return fmt.Errorf("slot layer: %w", err)
	}
	return nil
}

func (s *slotReader) Close() error { return s.raw.Close() }

func readLayer(l v1.Layer, limit int64) ([]byte, error) {
	rc, err := l.Compressed() // verifies the layer digest as it reads
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return readLimited(rc, limit)
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

// transportError names why a registry could not be reached: nothing answered; its
// certificate is not trusted (the fix is its CA in registry_ca, not plain HTTP); or it speaks
// only plain HTTP, which the guard refused.
func transportError(ref string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, ref, oe)
	}
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	var cv *tls.CertificateVerificationError
	if errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) || errors.As(err, &cv) {
		return fmt.Errorf("%w: %s: %w (give the registry's CA in upgrade.registry_ca)", ErrCertificate, ref, err)
	}
	if errors.Is(err, ErrInsecure) {
		return fmt.Errorf("%w: %s answers only plain HTTP, refused: list its host in upgrade.insecure_registries if that is intended (%w)", ErrInsecure, ref, err)
	}
	return classify(ref, err)
}

// classify maps transport errors onto the error classes, keeping the original text.
func classify(ref string, err error) error {
	var known = []error{ErrReference, ErrNotFound, ErrUnreachable, ErrInsecure, ErrCertificate, ErrArch, ErrNotInstaller, ErrUnsigned, ErrSignature, ErrTooLarge, ErrDigest, ErrTruncated}
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
