// Package channel resolves an UpgradePlan's channel — a repository of keel installer images
// tagged by version — to its newest release that a trusted key signed: the target of a plan
// that keeps its nodes updated. The image is checked as a node checks it (installer.Inspect:
// the cosign signature, the signed manifest's version against the tag), short of the slot.
package channel

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/mod/semver"

	"keel/installer"
	"keel/upgrade"
)

// Release is a channel's resolved target.
type Release struct {
	// Image is repo:version@sha256:…: pinned to the digest the tag named when it was checked,
	// so every node installs those bytes even if the tag is moved later.
	Image   string
	Version string
	Key     string // the trusted key that signed it
	// Skipped are the newer tags passed over, each with why (unsigned, another key's, ...).
	Skipped []string
}

// Errors a resolution wraps.
var (
	// ErrNoKeys: the controller was given no trusted keys, so no release can be trusted.
	ErrNoKeys = errors.New("channel plans need the controller's trusted keys (-trusted-key)")
	// ErrNoRelease: no tag of the repository is a release signed by a trusted key.
	ErrNoRelease = errors.New("no signed release")
)

// MaxCandidates bounds how many tags, newest first, one resolution checks: a repository
// full of unsigned pushes costs a few manifests, not one request per tag.
const MaxCandidates = 10

// Resolver resolves channels and remembers each answer for Refresh. Safe for concurrent use.
type Resolver struct {
	TrustedKeys []installer.TrustedKey
	Insecure    []string       // registries reached over plain HTTP
	RootCAs     *x509.CertPool // nil: the system's bundle
	// Log hears each resolution once (the release and the tags passed over, or the failure).
	Log *slog.Logger
	// Refresh is how long a resolution is reused (default 5 min); a failed one at most 1 min.
	Refresh time.Duration
	// Timeout bounds one resolution (default 1 min): a registry that hangs delays one pass by
	// that much, once per remembered failure, not every pass.
	Timeout time.Duration
	Now     func() time.Time

	mu    sync.Mutex
	cache map[string]cached
	rt    http.RoundTripper // one transport for every check: its connections are kept
}

type cached struct {
	rel Release
	err error
	at  time.Time
}

// Latest is the newest release of repo whose image is signed by a trusted key for every one
// of archs (the plan's nodes' architectures).
func (r *Resolver) Latest(ctx context.Context, repo string, archs []string) (Release, error) {
	now := r.now()
	key := repo + " " + strings.Join(archs, ",")
	r.mu.Lock()
	c, ok := r.cache[key]
	r.mu.Unlock()
	ttl := r.Every()
	if ok && c.err != nil {
		ttl = min(ttl, time.Minute)
	}
	if ok && now.Sub(c.at) < ttl {
		return c.rel, c.err
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	rel, err := r.resolve(rctx, repo, archs)
	cancel()
	if ctx.Err() == nil { // a cancelled pass says nothing about the channel; a slow registry does
		r.mu.Lock()
		if r.cache == nil {
			r.cache = map[string]cached{}
		}
		r.cache[key] = cached{rel: rel, err: err, at: r.now()} // from its end: a slow one is not retried at once
		r.mu.Unlock()
		if r.Log != nil {
			if err != nil {
				r.Log.Warn("channel: not resolved", "channel", repo, "err", err)
			} else {
				r.Log.Info("channel: newest signed release", "channel", repo, "version", rel.Version, "image", rel.Image, "key", rel.Key, "passed_over", rel.Skipped)
			}
		}
	}
	return rel, err
}

func (r *Resolver) transport() http.RoundTripper {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rt == nil {
		r.rt = installer.Transport(r.Insecure, r.RootCAs)
	}
	return r.rt
}

// Every is how often a resolution is made again: Refresh, default 5 min.
func (r *Resolver) Every() time.Duration {
	if r.Refresh > 0 {
		return r.Refresh
	}
	return 5 * time.Minute
}

func (r *Resolver) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Resolver) resolve(ctx context.Context, repo string, archs []string) (Release, error) {
	if len(r.TrustedKeys) == 0 {
		return Release{}, ErrNoKeys
	}
	if len(archs) == 0 {
		return Release{}, errors.New("channel: no architecture to check images for")
	}
	opts := []name.Option{name.StrictValidation}
	if rp, err := name.NewRepository(repo, opts...); err == nil && installer.Insecure(rp.RegistryStr(), r.Insecure) {
		opts = append(opts, name.Insecure)
	}
	rp, err := name.NewRepository(repo, opts...)
	if err != nil {
		return Release{}, fmt.Errorf("channel %q: %w", repo, err)
	}
	tags, err := remote.List(rp, remote.WithContext(ctx), remote.WithTransport(r.transport()))
	if err != nil {
		return Release{}, fmt.Errorf("channel %s: list tags: %w", repo, err)
	}
	var skipped []string
	for i, tag := range Releases(tags) {
		if i == MaxCandidates {
			break
		}
		ref := repo + ":" + tag
		rel, why, err := r.check(ctx, ref, tag, archs)
		if err != nil {
			return Release{}, fmt.Errorf("channel %s: %w", repo, err)
		}
		if why != "" {
			skipped = append(skipped, tag+": "+why)
			continue
		}
		rel.Skipped = skipped
		return rel, nil
	}
	why := ""
	if len(skipped) > 0 {
		why = " (" + strings.Join(skipped, "; ") + ")"
	}
	return Release{}, fmt.Errorf("channel %s: %w among the newest %d release tags of its %d tags%s", repo, ErrNoRelease, min(len(Releases(tags)), MaxCandidates), len(tags), why)
}

// check inspects ref for each arch: a release, or why this tag is not one (a refusal a node
// would make too), or an error that says nothing about the tag (the registry unreachable:
// falling back to an older tag then would move the target backwards on a network fault).
func (r *Resolver) check(ctx context.Context, ref, tag string, archs []string) (Release, string, error) {
	rel := Release{Version: tag}
	named := ""
	for _, arch := range archs {
		in, err := installer.Inspect(ctx, ref, installer.Policy{Arch: arch, TrustedKeys: r.TrustedKeys, Now: r.now()},
			installer.PullOptions{Insecure: r.Insecure, RootCAs: r.RootCAs, Transport: r.transport()})
		switch {
		case err == nil:
		case skippable(err):
			return Release{}, err.Error(), nil
		default:
			return Release{}, "", err
		}
		if c, ok := upgrade.CompareVersions(tag, in.Manifest.Version); !ok || c != 0 {
			return Release{}, fmt.Sprintf("the tag says %s but the image's signed manifest says %s", tag, in.Manifest.Version), nil
		}
		if named != "" && in.Named != named {
			return Release{}, "", fmt.Errorf("%s moved while it was checked (%s, then %s)", ref, named, in.Named)
		}
		named, rel.Key = in.Named, in.Signed.Key
	}
	rel.Image = ref + "@" + named
	return rel, "", nil
}

// skippable are the refusals that are about what the registry holds under a tag, for good:
// no signature of a trusted key, not an installer image, not for these nodes. Not a 404 nor
// a digest that does not match: a registry replica behind, or a body cut short, says those
// for a moment, and skipping then would move the target to an older tag.
func skippable(err error) bool {
	for _, e := range []error{installer.ErrUnsigned, installer.ErrSignature, installer.ErrNotInstaller, installer.ErrArch, installer.ErrTooLarge} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Releases are the tags that name a release, newest first: MAJOR.MINOR.PATCH, "v" optional,
// without a pre-release part (v1.2.3 and 1.2.3; not v1.3.0-rc.1: a channel that keeps nodes
// updated does not install candidates, name one with spec.image; not the short forms v1,
// 1.2, nor 20240101 or a build number, which would sort above every release). Tags of the
// same version (v1.2.3, 1.2.3) keep their order.
func Releases(tags []string) []string {
	var out []string
	for _, t := range tags {
		c := t
		if !strings.HasPrefix(c, "v") {
			c = "v" + c
		}
		if semver.IsValid(c) && semver.Canonical(c) == c && semver.Prerelease(c) == "" {
			out = append(out, t)
		}
	}
	slices.SortStableFunc(out, func(a, b string) int {
		c, _ := upgrade.CompareVersions(b, a)
		return c
	})
	return out
}
