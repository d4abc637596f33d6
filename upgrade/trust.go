package upgrade

import (
	"fmt"
	"time"
)

// Trust is the boot's signature policy, against which a staged upgrade is checked again: a
// staged slot waits across reboots, and the config a reboot brings may have revoked the key
// that signed it, dropped it, let it expire or stopped allowing unsigned images (the rotation
// the README walks through). An image staged under the old policy must not be activated under
// the new one. Keys are named by installer.KeyID; a revoked key is simply absent.
type Trust struct {
	Keys          map[string]time.Time // key ID → expiry (zero: none)
	AllowUnsigned bool
}

// unsignedBy is the record's SignedBy for an image that carried no signature.
const unsignedBy = "unsigned (allowed by upgrade.allow_unsigned)"

// check says why u's image no longer counts as signed under t at now; nil when it does, or
// when t is nil (a caller that checks no signatures: the simulators).
func (t *Trust) check(u *Upgrade, now time.Time) error {
	if t == nil {
		return nil
	}
	if u.SignerKey == "" {
		if u.SignedBy != unsignedBy {
			// Signed, but by a key the record does not name: it cannot be checked again.
			return fmt.Errorf("signature check: the staged image's signing key (%s) is not recorded", u.SignedBy)
		}
		if t.AllowUnsigned {
			return nil
		}
		return fmt.Errorf("signature check: the staged image is unsigned and this boot's config does not allow unsigned images")
	}
	exp, ok := t.Keys[u.SignerKey]
	switch {
	case !ok:
		return fmt.Errorf("signature check: the staged image was signed by %s (key %s), which this boot's config no longer trusts (revoked or removed)", u.SignedBy, u.SignerKey)
	case !exp.IsZero() && now.After(exp):
		return fmt.Errorf("signature check: the staged image was signed by %s (key %s), which expired at %s", u.SignedBy, u.SignerKey, exp.UTC().Format(time.RFC3339))
	}
	return nil
}
