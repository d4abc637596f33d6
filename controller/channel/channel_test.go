package channel

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"keel/installer"
)

func TestReleases(t *testing.T) {
	for _, tc := range []struct{ tags, want []string }{
		{nil, nil},
		{[]string{"latest", "sha256-ab.sig", "main", "v1.2.3-rc.1", "one", "v1", "1.2", "42", "20240101", "v1.2.3.4", "v01.2.3"}, nil},
		{[]string{"v1.2.0", "v1.10.0", "v1.9.9", "latest", "v2.0.0-rc.1", "v1.10.0-rc.2", "20240101"}, []string{"v1.10.0", "v1.9.9", "v1.2.0"}},
		// Without the v, ordered as the versions they are; equal ones keep their order.
		{[]string{"1.2.0", "v1.2", "v1.3.0", "2.0.0", "v1.2.0"}, []string{"2.0.0", "v1.3.0", "1.2.0", "v1.2.0"}},
	} {
		if got := Releases(tc.tags); !slices.Equal(got, tc.want) {
			t.Errorf("Releases(%v) = %v, want %v", tc.tags, got, tc.want)
		}
	}
}

// TestNoKeys: without trusted keys nothing is asked of the registry (there is none here).
func TestNoKeys(t *testing.T) {
	var r Resolver
	if _, err := r.Latest(context.Background(), "127.0.0.1:1/keel", []string{"amd64"}); !errors.Is(err, ErrNoKeys) {
		t.Fatalf("err = %v, want %v", err, ErrNoKeys)
	}
}

// TestRemembered: a resolution is reused for Refresh, a failed one for at most a minute; the
// registry (go-containerregistry's, in process) counts the tag listings.
func TestRemembered(t *testing.T) {
	var lists atomic.Int32
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			lists.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.NewTag(host+"/keel:v1.0.0", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Unix(1e9, 0)
	r := Resolver{TrustedKeys: []installer.TrustedKey{{Key: k.Public()}}, Insecure: []string{host}, Refresh: 5 * time.Minute,
		Now: func() time.Time { return now }}
	latest := func() error {
		_, err := r.Latest(context.Background(), host+"/keel", []string{"amd64"})
		return err
	}
	// v1.0.0 is not signed: no release, a failure remembered for a minute.
	if err := latest(); !errors.Is(err, ErrNoRelease) || !strings.Contains(err.Error(), "v1.0.0: image is not signed") {
		t.Fatalf("err = %v, want %v naming v1.0.0", err, ErrNoRelease)
	}
	now = now.Add(59 * time.Second)
	latest()
	if n := lists.Load(); n != 1 {
		t.Fatalf("%d listings within the minute, want 1", n)
	}
	now = now.Add(2 * time.Second)
	latest()
	if n := lists.Load(); n != 2 {
		t.Fatalf("%d listings after the minute, want 2", n)
	}
}

// TestMomentaryFailureAborts: a registry failing the newest tag for a moment (a 500, or a 404
// from a replica behind: a real registry does not do either on demand, hence the wrapper)
// fails the resolution, so the plan keeps its target, rather than passing over the tag and
// moving the target back to an older one.
func TestMomentaryFailureAborts(t *testing.T) {
	for _, code := range []int{http.StatusInternalServerError, http.StatusNotFound} {
		var olderAsked atomic.Int32
		var broken atomic.Bool
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case !broken.Load():
			case strings.HasSuffix(r.URL.Path, "/manifests/v1.2.0"):
				w.WriteHeader(code)
				return
			case strings.HasSuffix(r.URL.Path, "/manifests/v1.1.0"):
				olderAsked.Add(1)
			}
			reg.ServeHTTP(w, r)
		}))
		host := strings.TrimPrefix(srv.URL, "http://")
		for _, tag := range []string{"v1.1.0", "v1.2.0"} {
			img, _ := random.Image(64, 1)
			ref, _ := name.NewTag(host+"/keel:"+tag, name.Insecure)
			if err := remote.Write(ref, img); err != nil {
				t.Fatal(err)
			}
		}
		broken.Store(true)
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		r := Resolver{TrustedKeys: []installer.TrustedKey{{Key: k.Public()}}, Insecure: []string{host}}
		_, err := r.Latest(context.Background(), host+"/keel", []string{"amd64"})
		if err == nil || errors.Is(err, ErrNoRelease) || olderAsked.Load() != 0 {
			t.Errorf("newest tag answered %d: err %v, the older tag asked %d times; want a failure before the older tag", code, err, olderAsked.Load())
		}
		srv.Close()
	}
}
