package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The part of the ext4 superblock (at byte 1024 of the filesystem) that tells whether the last
// unmount was clean:
//
//	offset  size  field
//	0x38    2     s_magic            0xEF53
//	0x3A    2     s_state            bit 0x1 valid (cleanly unmounted), 0x2 errors detected
//	0x60    4     s_feature_incompat bit 0x4 RECOVER: the journal must be replayed
//	0x68    16    s_uuid             the filesystem's UUID (new with every mkfs)
//
// A journaled filesystem sets RECOVER while mounted and clears it on a clean unmount, so a
// power cut leaves it set.
const (
	ext4SuperOff     = 1024
	ext4Magic        = 0xEF53
	ext4StateErrors  = 0x2
	ext4IncompatRecv = 0x4
)

// ErrNotExt4 means the bytes hold no ext4 superblock.
var ErrNotExt4 = errors.New("not an ext4 filesystem")

// Ext4Health is what the superblock says about the last unmount.
type Ext4Health struct {
	NeedsRecovery bool // journal not replayed: the filesystem was not cleanly unmounted
	Errors        bool // the kernel recorded errors
	UUID          string
}

// Clean reports a clean unmount with no recorded errors.
func (h Ext4Health) Clean() bool { return !h.NeedsRecovery && !h.Errors }

// ReadExt4Health reads the superblock of the filesystem at the start of r.
func ReadExt4Health(r io.ReaderAt) (Ext4Health, error) {
	sb := make([]byte, 0x78)
	if _, err := r.ReadAt(sb, ext4SuperOff); err != nil {
		return Ext4Health{}, fmt.Errorf("read ext4 superblock: %w", err)
	}
	return ParseExt4Health(sb)
}

// ParseExt4Health decodes the first 0x78 bytes of a superblock.
func ParseExt4Health(sb []byte) (Ext4Health, error) {
	if len(sb) < 0x78 || binary.LittleEndian.Uint16(sb[0x38:]) != ext4Magic {
		return Ext4Health{}, ErrNotExt4
	}
	u := sb[0x68:0x78]
	return Ext4Health{
		Errors:        binary.LittleEndian.Uint16(sb[0x3A:])&ext4StateErrors != 0,
		NeedsRecovery: binary.LittleEndian.Uint32(sb[0x60:])&ext4IncompatRecv != 0,
		UUID:          fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]),
	}, nil
}
