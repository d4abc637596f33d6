package upgrade

import (
	"strings"
	"unicode/utf8"
)

// The record must always fit one META copy (meta.MaxPayload, 512 KiB), or a write fails and
// the upgrade cannot be persisted (a registry's error page as a failure reason once did that
// after 7 failed pulls). Every text Step stores is therefore bounded: MaxText bytes per field
// after sanitizing, and Step refuses a request whose image reference is longer than
// MaxImageRef. TestRecordAlwaysFits encodes the largest record these bounds allow.
const (
	// MaxText bounds each free-text field: reasons, notes, warnings, lock and etcd texts.
	MaxText = 512
	// MaxImageRef bounds an image reference (OCI: a 255-byte name, a 128-byte tag, a digest).
	MaxImageRef = 512
)

// bound returns s as valid UTF-8 without control characters, cut to at most MaxText bytes
// (at a rune boundary, marked with an ellipsis).
func bound(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) <= MaxText {
		return s
	}
	const ellipsis = "…"
	cut := MaxText - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// appendNote adds a note to a "; "-separated text, bounded.
func appendNote(s, note string) string {
	switch {
	case note == "":
		return s
	case s == "":
		return bound(note)
	}
	return bound(s + "; " + note)
}
