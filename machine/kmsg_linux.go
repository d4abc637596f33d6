package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KmsgRecord is one kernel log record from /dev/kmsg.
type KmsgRecord struct {
	Seq      uint64 `json:"seq"`
	Level    int    `json:"level"` // 0 emerg … 7 debug
	Facility int    `json:"facility"`
	Micros   uint64 `json:"ts_us"` // since boot
	Message  string `json:"message"`
}

// ParseKmsg parses "PRI,SEQ,TS,FLAGS[,...];MESSAGE\n[ KEY=VALUE\n...]".
func ParseKmsg(b []byte) (KmsgRecord, error) {
	s := string(b)
	head, msg, ok := strings.Cut(s, ";")
	if !ok {
		return KmsgRecord{}, errors.New("kmsg: no ';'")
	}
	msg, _, _ = strings.Cut(msg, "\n")
	f := strings.Split(head, ",")
	if len(f) < 3 {
		return KmsgRecord{}, fmt.Errorf("kmsg: header %q", head)
	}
	pri, err1 := strconv.Atoi(f[0])
	seq, err2 := strconv.ParseUint(f[1], 10, 64)
	ts, err3 := strconv.ParseUint(f[2], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return KmsgRecord{}, fmt.Errorf("kmsg: header %q: %w", head, err)
	}
	return KmsgRecord{Seq: seq, Level: pri & 7, Facility: pri >> 3, Micros: ts, Message: msg}, nil
}

// ReadKmsg calls fn for every record in the kernel's buffer, oldest first; with follow it
// then waits for new ones until ctx ends or fn returns an error.
func ReadKmsg(ctx context.Context, follow bool, fn func(KmsgRecord) error) error {
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("kmsg: %w", err)
	}
	defer f.Close()
	fd := int(f.Fd())
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case err == nil:
			if r, perr := ParseKmsg(buf[:n]); perr == nil {
				if err := fn(r); err != nil {
					return err
				}
			}
			continue
		case errors.Is(err, unix.EPIPE):
			continue // records were overwritten while we read: go on with the next
		case errors.Is(err, unix.EAGAIN):
			if !follow {
				return nil
			}
		default:
			return fmt.Errorf("kmsg: read: %w", err)
		}
		// Wait for more, waking up now and then to notice ctx.
		for {
			if ctx.Err() != nil {
				return nil
			}
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			k, err := unix.Poll(p, 500)
			if err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("kmsg: poll: %w", err)
			}
			if k > 0 {
				break
			}
		}
	}
}
