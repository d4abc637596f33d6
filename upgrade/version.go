package upgrade

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/semver"
)

// Versions are ordered as semantic versions (semver.org; a leading "v" optional, "v2" short for
// v2.0.0, build metadata ignored). A version that is not one cannot be ordered: installing it
// over a different version needs the request's "downgrade", since nothing can show that it is
// not one, and it never passes a rollback floor.

// canonical is v in x/mod's form ("v" prefixed), or false.
func canonical(v string) (string, bool) {
	s := v
	if !strings.HasPrefix(s, "v") {
		s = "v" + s
	}
	if !semver.IsValid(s) {
		return "", false
	}
	return s, true
}

// ValidVersion reports whether v is a semantic version (what upgrade.min_version must be).
func ValidVersion(v string) bool {
	_, ok := canonical(v)
	return ok
}

// CompareVersions orders a and b: -1, 0, +1; ok is false when either is not a semantic version.
func CompareVersions(a, b string) (int, bool) {
	ca, okA := canonical(a)
	cb, okB := canonical(b)
	if !okA || !okB {
		return 0, false
	}
	return semver.Compare(ca, cb), true
}

// ImageTag is the tag of an image reference ("" when it has none: by digest, or untagged).
func ImageTag(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	last := ref[strings.LastIndex(ref, "/")+1:]
	if i := strings.LastIndex(last, ":"); i >= 0 {
		return last[i+1:]
	}
	return ""
}

// ErrVersion is an image refused by the version policy.
var ErrVersion = errors.New("version check")

// VersionPolicy is what an image's version must satisfy on this node: agree with a
// version-like tag (a signed v1 pushed as :v9 is a substitution), never be below the rollback
// floor, and not be lower than the running version (From) unless the request says Downgrade.
// The pull checks it as soon as the image's signed manifest is read, before the slot streams;
// Step checks it again on the pulled result, before anything changes.
type VersionPolicy struct {
	From, Floor string
	Downgrade   bool
}

// Check applies the policy to image, whose signed manifest says version to.
func (p VersionPolicy) Check(image, to string) error {
	from := p.From
	if tag := ImageTag(image); tag != "" && ValidVersion(tag) {
		if c, ok := CompareVersions(tag, to); !ok || c != 0 {
			return fmt.Errorf("%w: the tag says %s but the image's signed manifest says %s (a signed image under another version's tag)", ErrVersion, tag, to)
		}
	}
	if p.Floor != "" {
		if c, ok := CompareVersions(to, p.Floor); !ok || c < 0 {
			return fmt.Errorf("%w: %s is below the rollback floor %s (upgrade.min_version; downgrade does not pass it)", ErrVersion, to, p.Floor)
		}
	}
	if p.Downgrade || to == from {
		return nil
	}
	c, ok := CompareVersions(to, from)
	if !ok {
		return fmt.Errorf("%w: %q and %q are not both semantic versions, so %s may be a downgrade: say \"downgrade\": true to install it", ErrVersion, from, to, to)
	}
	if c < 0 {
		return fmt.Errorf("%w: %s is older than the running %s: say \"downgrade\": true to install it", ErrVersion, to, from)
	}
	return nil
}

// checkVersion is the version policy applied to u's pulled image.
func checkVersion(u *Upgrade, floor string) error {
	return VersionPolicy{From: u.FromVersion, Floor: floor, Downgrade: u.Downgrade}.Check(u.Image, u.ToVersion)
}

// raiseFloor raises the record's rollback floor to v (from the config); it never lowers it.
func raiseFloor(r *Record, v string) {
	if v == "" || !ValidVersion(v) {
		return
	}
	if c, ok := CompareVersions(v, r.Floor); r.Floor == "" || (ok && c > 0) {
		r.Floor = v
	}
}
