// Package boot holds the bootloader contract: the GRUB environment block (grubenv), the
// A/B slots, and what the kernel command line says about the boot in progress.
//
// Everything here is pure: bytes in, bytes out. Reading and writing the block on the ESP is
// the caller's job (see EnvFile for the in-place rewrite GRUB expects).
package boot

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// The GRUB environment block, as grub-editenv creates it and GRUB's save_env rewrites it:
//
//	offset  size       content
//	0       25         "# GRUB Environment Block\n"
//	25      variable   lines "key=value\n"; other "#" lines are comments and ignored
//	...     rest       '#' padding up to EnvSize
//
// GRUB never changes the file's size: save_env writes the same blocks in place, so the block
// must stay exactly EnvSize bytes. In values GRUB escapes '\\' and '\n' with a backslash.
const (
	EnvSize   = 1024
	envHeader = "# GRUB Environment Block\n"
)

// Env keys of the bootloader contract (grub.cfg reads them).
const (
	KeySavedEntry = "saved_entry" // the committed slot: booted every time
	KeyNextEntry  = "next_entry"  // the slot under trial: booted while tries remain
	// KeyTrialTries counts the boots of next_entry GRUB may still make: it spends one before
	// each boot of it, and clears next_entry itself before the last. Unset with next_entry set
	// is one try (what a one-shot was).
	KeyTrialTries = "trial_tries"
)

// TrialTries is how many boots a slot under trial gets: a power cut or reset during the trial
// of a healthy slot costs one and the trial resumes; a slot that panics or hangs falls back
// after all of them. Within upgrade.MaxBoots (the reboot into it, a resumed trial, the
// fallback). grub.cfg counts down from at most 3.
const TrialTries = 2

var (
	// ErrEnvHeader means the block does not start with GRUB's header.
	ErrEnvHeader = errors.New("grubenv: missing header")
	// ErrEnvSize means the block is not EnvSize bytes, or the variables do not fit in it.
	ErrEnvSize = errors.New("grubenv: wrong size")
	// ErrEnvKey means a key GRUB could not read back.
	ErrEnvKey = errors.New("grubenv: invalid key")
)

// Env is a decoded GRUB environment block. The zero value is an empty environment.
// An empty value means unset: GRUB leaves "next_entry=" behind after the last try of a trial.
type Env struct {
	vars map[string]string
}

// ParseEnv decodes a GRUB environment block. It accepts any size (GRUB does) as long as the
// header is there; Encode always produces EnvSize bytes.
func ParseEnv(b []byte) (Env, error) {
	if !bytes.HasPrefix(b, []byte(envHeader)) {
		return Env{}, ErrEnvHeader
	}
	e := Env{vars: map[string]string{}}
	rest := b[len(envHeader):]
	for len(rest) > 0 {
		line := rest
		next := []byte(nil)
		if i := indexUnescapedNewline(rest); i >= 0 {
			line, next = rest[:i], rest[i+1:]
		} else {
			// A last line without newline is padding or garbage: GRUB ignores it too.
			break
		}
		rest = next
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		eq := bytes.IndexByte(line, '=')
		if eq <= 0 {
			continue // GRUB skips lines without a key
		}
		e.vars[string(line[:eq])] = unescape(line[eq+1:])
	}
	return e, nil
}

// indexUnescapedNewline finds the first '\n' not preceded by an escaping backslash.
func indexUnescapedNewline(b []byte) int {
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++ // skip the escaped byte
		case '\n':
			return i
		}
	}
	return -1
}

func unescape(b []byte) string {
	var sb strings.Builder
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+1 < len(b) {
			i++
		}
		sb.WriteByte(b[i])
	}
	return sb.String()
}

func escape(s string) string {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' || s[i] == '\n' {
			sb.WriteByte('\\')
		}
		sb.WriteByte(s[i])
	}
	return sb.String()
}

// Get returns the value of key; ok is false when the key is unset or its value is empty.
func (e Env) Get(key string) (value string, ok bool) {
	v := e.vars[key]
	return v, v != ""
}

// Set returns a copy of e with key set to value. An empty value keeps the key with no value,
// as GRUB does; it reads as unset.
func (e Env) Set(key, value string) (Env, error) {
	if !validKey(key) {
		return Env{}, fmt.Errorf("%w: %q", ErrEnvKey, key)
	}
	n := Env{vars: make(map[string]string, len(e.vars)+1)}
	for k, v := range e.vars {
		n.vars[k] = v
	}
	n.vars[key] = value
	return n, nil
}

// Keys returns the keys present (set or empty), sorted.
func (e Env) Keys() []string {
	keys := make([]string, 0, len(e.vars))
	for k := range e.vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validKey accepts what GRUB's environment parser reads back as one key.
func validKey(k string) bool {
	if k == "" || k[0] == '#' {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c == '=' || c == '\n' || c == '\\' || c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// Encode returns the block as exactly EnvSize bytes, keys in sorted order so that the same
// environment always encodes to the same bytes.
func (e Env) Encode() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(EnvSize)
	b.WriteString(envHeader)
	for _, k := range e.Keys() {
		if !validKey(k) {
			return nil, fmt.Errorf("%w: %q", ErrEnvKey, k)
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(escape(e.vars[k]))
		b.WriteByte('\n')
	}
	if b.Len() > EnvSize {
		return nil, fmt.Errorf("%w: %d bytes of variables do not fit in %d", ErrEnvSize, b.Len(), EnvSize)
	}
	for b.Len() < EnvSize {
		b.WriteByte('#')
	}
	return b.Bytes(), nil
}
