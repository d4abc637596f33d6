// Package disk knows the node's disk: the GPT layout (which partitions, where), the slot
// image and its manifest, building a whole disk image on the host, and finding partitions by
// GPT name on the running node.
//
// layout.go and manifest.go are pure; image.go and find_linux.go do I/O.
package disk

import (
	"errors"
	"fmt"
)

// GPT partition names: the node finds its partitions by these, never by number.
const (
	PartEFI       = "EFI"
	PartBootA     = "BOOT-A"
	PartBootB     = "BOOT-B"
	PartMeta      = "META"
	PartState     = "STATE"
	PartEphemeral = "EPHEMERAL"
)

// Kind is what a partition holds, which decides its GPT type.
type Kind int

// Partition kinds.
const (
	KindLinux Kind = iota // Linux filesystem data (slots, STATE, EPHEMERAL)
	KindESP               // EFI system partition
	KindRaw               // raw data with no filesystem (META)
)

// MiB is the alignment unit of every partition.
const MiB = 1 << 20

// Spec asks for one partition. Size 0 means "the rest of the disk" (last partition only).
type Spec struct {
	Name string
	Size int64
	Kind Kind
}

// DefaultSpecs is the layout of design.md.
var DefaultSpecs = []Spec{
	{PartEFI, 64 * MiB, KindESP},
	{PartBootA, 256 * MiB, KindLinux},
	{PartBootB, 256 * MiB, KindLinux},
	{PartMeta, 1 * MiB, KindRaw},
	{PartState, 64 * MiB, KindLinux},
	{PartEphemeral, 0, KindLinux},
}

// Part is one planned partition. Start and Size are bytes from the start of the disk.
type Part struct {
	Number int // 1-based GPT entry number
	Name   string
	Kind   Kind
	Start  int64
	Size   int64
}

// Layout is a planned disk.
type Layout struct {
	Size  int64
	Parts []Part
}

// ErrLayout wraps every planning failure.
var ErrLayout = errors.New("disk layout")

// Plan places specs on a disk of size bytes: 1 MiB aligned, the first at 1 MiB (after the
// protective MBR and primary GPT), leaving the last MiB for the backup GPT.
func Plan(size int64, specs []Spec) (Layout, error) {
	if size%MiB != 0 {
		return Layout{}, fmt.Errorf("%w: disk size %d is not a multiple of 1 MiB", ErrLayout, size)
	}
	end := size - MiB // backup GPT
	l := Layout{Size: size}
	off := int64(MiB)
	seen := map[string]bool{}
	for i, s := range specs {
		if s.Name == "" || len(s.Name) > 36 { // GPT names are 36 UTF-16 code units
			return Layout{}, fmt.Errorf("%w: partition %d: bad name %q", ErrLayout, i+1, s.Name)
		}
		if seen[s.Name] {
			return Layout{}, fmt.Errorf("%w: duplicate partition name %q", ErrLayout, s.Name)
		}
		seen[s.Name] = true
		sz := s.Size
		switch {
		case sz < 0 || sz%MiB != 0:
			return Layout{}, fmt.Errorf("%w: %s: size %d is not a positive multiple of 1 MiB", ErrLayout, s.Name, sz)
		case sz == 0 && i != len(specs)-1:
			return Layout{}, fmt.Errorf("%w: %s: only the last partition may take the rest", ErrLayout, s.Name)
		case sz == 0:
			sz = end - off
		}
		if sz <= 0 || off+sz > end {
			return Layout{}, fmt.Errorf("%w: %s does not fit: needs %d MiB at %d MiB on a %d MiB disk",
				ErrLayout, s.Name, max(sz, 0)/MiB, off/MiB, size/MiB)
		}
		l.Parts = append(l.Parts, Part{Number: i + 1, Name: s.Name, Kind: s.Kind, Start: off, Size: sz})
		off += sz
	}
	return l, nil
}

// Find returns the planned partition with that GPT name.
func (l Layout) Find(name string) (Part, bool) {
	for _, p := range l.Parts {
		if p.Name == name {
			return p, true
		}
	}
	return Part{}, false
}
