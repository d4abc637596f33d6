package controller

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"keel/upgrade"
)

// TargetOf is the target a plan's image names: its tag is the version it installs. The tag
// must be a semantic version, as keel's images are tagged: the controller orders nodes'
// versions against it, and each node checks the tag against the image's signed manifest, so
// a tag cannot claim a version the image does not carry.
func TargetOf(image string) (Target, error) {
	ref, err := name.ParseReference(image, name.StrictValidation)
	if err != nil {
		// StrictValidation: "keel" alone would silently mean docker.io/library/keel:latest.
		return Target{}, fmt.Errorf("spec.image %q: %w", image, err)
	}
	tag := ""
	switch r := ref.(type) {
	case name.Tag:
		tag = r.TagStr()
	case name.Digest:
		// repo:TAG@sha256:…: the digest pins the image, the tag still names its version.
		if before, _, ok := strings.Cut(image, "@"); ok {
			if t, err := name.NewTag(before, name.StrictValidation); err == nil {
				tag = t.TagStr()
			}
		}
	}
	if tag == "" || !upgrade.ValidVersion(tag) {
		return Target{}, fmt.Errorf("spec.image %q: its tag must be the semantic version it installs (as repo:v1.2.3 or repo:v1.2.3@sha256:…)", image)
	}
	return Target{Image: image, Version: tag}, nil
}
