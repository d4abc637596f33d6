package boot

import (
	"errors"
	"fmt"
	"strings"
)

// Slot names one of the two boot partitions. The zero value is no slot.
type Slot string

// The two slots. Their names are also the GRUB menu entry ids and the kernel's slot= value.
const (
	SlotA Slot = "A"
	SlotB Slot = "B"
)

// ErrSlot means a string that names no slot.
var ErrSlot = errors.New("boot: not a slot")

// ParseSlot accepts "A" or "B" (case-insensitive).
func ParseSlot(s string) (Slot, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "A":
		return SlotA, nil
	case "B":
		return SlotB, nil
	}
	return "", fmt.Errorf("%w: %q", ErrSlot, s)
}

// Other returns the slot that is not s.
func (s Slot) Other() Slot {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// Partition is the GPT name of the slot's partition.
func (s Slot) Partition() string { return "BOOT-" + string(s) }

func (s Slot) String() string { return string(s) }

// Entries is what grubenv says GRUB will boot.
type Entries struct {
	// Committed is saved_entry, or A when it is unset (grub.cfg's default).
	Committed Slot
	// CommittedSet tells whether saved_entry was present at all.
	CommittedSet bool
	// Next is the slot under trial (armed), empty when none.
	Next Slot
	// Tries is how many more boots of Next GRUB will make (1 when trial_tries is unset).
	Tries int
}

// EntriesOf reads the bootloader contract out of an environment. A value that names no slot
// is an error rather than a guess: grub.cfg would fall back to A, and the caller must know.
func EntriesOf(e Env) (Entries, error) {
	out := Entries{Committed: SlotA}
	if v, ok := e.Get(KeySavedEntry); ok {
		s, err := ParseSlot(v)
		if err != nil {
			return out, fmt.Errorf("grubenv %s: %w", KeySavedEntry, err)
		}
		out.Committed, out.CommittedSet = s, true
	}
	if v, ok := e.Get(KeyNextEntry); ok {
		s, err := ParseSlot(v)
		if err != nil {
			return out, fmt.Errorf("grubenv %s: %w", KeyNextEntry, err)
		}
		out.Next, out.Tries = s, 1
		if v, ok := e.Get(KeyTrialTries); ok {
			switch v {
			case "2", "3":
				out.Tries = int(v[0] - '0')
			}
		}
	}
	return out, nil
}
