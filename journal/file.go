package journal

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// A File is best effort: a write that fails (a full /var, a read-only or vanished filesystem)
// drops that output from the file only, and the writer never sees an error. A service must
// never notice: if the writer behind its stdout pipe returned an error, os/exec would stop
// reading the pipe and the service's next write would kill it with SIGPIPE; and PID 1's log
// must never stall on a disk.

// Defaults of the log file limits.
const (
	DefaultMaxBytes = 10 << 20
	DefaultKeep     = 2
	// logRetry is how long a log file that failed is left alone before it is tried again.
	logRetry = 10 * time.Second
)

// File is dir/NAME.log, rotated when a write would take it past max bytes: NAME.log
// becomes NAME.log.1, NAME.log.1 becomes .2, ..., keeping keep old files.
type File struct {
	dir, name string
	max       int64
	keep      int
	log       *slog.Logger

	mu       sync.Mutex
	f        *os.File
	size     int64
	failedAt time.Time // last failure; nothing is tried for logRetry after it
	dropped  int64     // bytes that did not reach the file since the last failure was logged
}

// NewFile returns dir/NAME.log (made on the first write) with its limits: max bytes a file
// (DefaultMaxBytes if 0), keep old files (DefaultKeep if 0).
func NewFile(dir, name string, max int64, keep int, log *slog.Logger) *File {
	if max <= 0 {
		max = DefaultMaxBytes
	}
	if keep <= 0 {
		keep = DefaultKeep
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &File{dir: dir, name: name, max: max, keep: keep, log: log}
}

func (l *File) path(i int) string {
	p := filepath.Join(l.dir, l.name+".log")
	if i > 0 {
		p += "." + strconv.Itoa(i)
	}
	return p
}

// Write appends p; it never fails (see File).
func (l *File) Write(p []byte) (int, error) {
	l.write(p)
	return len(p), nil
}

func (l *File) write(p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.failedAt.IsZero() && time.Since(l.failedAt) < logRetry {
		l.dropped += int64(len(p))
		return
	}
	if err := l.writeLocked(p); err != nil {
		l.fail(err, len(p))
		return
	}
	if !l.failedAt.IsZero() {
		l.log.Info("log file writable again", "name", l.name, "bytes_lost", l.dropped)
		l.failedAt, l.dropped = time.Time{}, 0
	}
}

// writeLocked appends p, rotating first whenever the file would pass max; p is split after a
// newline where it can be, so that lines stay whole within a file (a pipe read may carry many).
func (l *File) writeLocked(p []byte) error {
	for len(p) > 0 {
		if l.f == nil {
			if err := l.open(); err != nil {
				return err
			}
		}
		room := l.max - l.size
		chunk := p
		if int64(len(p)) > room {
			cut := bytes.LastIndexByte(p[:max(room, 0)], '\n')
			switch {
			case cut >= 0:
				chunk = p[:cut+1]
			case l.size > 0:
				// Nothing whole fits: start a new file and try again there.
				if err := l.rotate(); err != nil {
					return err
				}
				continue
			default:
				chunk = p[:room] // one line longer than a whole file: split it
			}
		}
		n, err := l.f.Write(chunk)
		l.size += int64(n)
		if err != nil {
			return err
		}
		p = p[len(chunk):]
		if len(p) > 0 {
			if err := l.rotate(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *File) open() error {
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(l.path(0), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.f, l.size = f, st.Size()
	if l.size < l.max {
		return nil
	}
	// Full from an earlier boot or process: rotate, and start a new file.
	if err := l.rotate(); err != nil {
		return err
	}
	f, err = os.OpenFile(l.path(0), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	l.f, l.size = f, 0
	return nil
}

// rotate closes the file and shifts the old ones; the next write opens a new NAME.log.
func (l *File) rotate() error {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	os.Remove(l.path(l.keep))
	for i := l.keep - 1; i >= 0; i-- {
		if err := os.Rename(l.path(i), l.path(i+1)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("rotate %s: %w", l.path(i), err)
		}
	}
	l.size = 0
	return nil
}

// fail closes the file (it is reopened on the next try) and says so once per failure spell.
func (l *File) fail(err error, n int) {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	if l.failedAt.IsZero() {
		l.log.Warn("log file not writable; output kept in memory only, retried every "+logRetry.String(),
			"name", l.name, "file", l.path(0), "err", err)
	}
	l.failedAt = time.Now()
	l.dropped += int64(n)
}

// Sync flushes the file to the disk (best effort).
func (l *File) Sync() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Sync()
	}
}

// Close closes the file; a later write opens it again.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	return nil
}
