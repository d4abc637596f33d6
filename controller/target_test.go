package controller

import "testing"

func TestTargetOf(t *testing.T) {
	for image, want := range map[string]string{
		"registry.local:5000/keel:v1.2.3": "v1.2.3",
		"r.io/keel:1.2.3-rc.1":            "1.2.3-rc.1",
		"r.io/keel:v2@sha256:" + sha:      "v2",
	} {
		got, err := TargetOf(image)
		if err != nil || got.Version != want || got.Image != image {
			t.Errorf("%s: %+v %v, want version %s", image, got, err, want)
		}
	}
	for _, image := range []string{"keel", "r.io/keel", "r.io/keel:latest", "r.io/keel@sha256:" + sha, "r.io/keel:v1..2", "", "R.IO/Keel:v1"} {
		if got, err := TargetOf(image); err == nil {
			t.Errorf("%q: accepted as %+v", image, got)
		}
	}
}

const sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
