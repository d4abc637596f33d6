package netapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// Streams are NDJSON everywhere: one JSON value per line, flushed as it happens.

// MaxStreams bounds concurrent follow streams; one more gets 429.
const MaxStreams = 32

// streamWriteTimeout is how long one line may take to reach a client before the stream is
// dropped: a slow reader must not pin the node's memory or a handler forever.
const streamWriteTimeout = 10 * time.Second

// queryTail parses ?tail=N: how many lines of history (default def; 0: none, only new ones).
func queryTail(r *http.Request, def int) (int, bool) {
	v := r.URL.Query().Get("tail")
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 100000 {
		return 0, false
	}
	return n, true
}

func queryFollow(r *http.Request) (bool, bool) {
	switch r.URL.Query().Get("follow") {
	case "", "0", "false":
		return false, true
	case "1", "true":
		return true, true
	}
	return false, false
}

// acquireStream takes a stream slot, or answers 429.
func (s *Server) acquireStream(w http.ResponseWriter) bool {
	select {
	case s.streams <- struct{}{}:
		return true
	default:
		WriteError(w, http.StatusTooManyRequests, "too_many_streams", "too many open follow streams; try again later")
		return false
	}
}

func (s *Server) releaseStream() { <-s.streams }

// lineWriter writes NDJSON lines with a deadline per line.
type lineWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newLineWriter(w http.ResponseWriter) *lineWriter {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// Send the headers now: a follow stream may have nothing to say for a long time, and the
	// client must know it is connected.
	rc.Flush()
	return &lineWriter{w: w, rc: rc}
}

// raw writes an already-encoded JSON line.
func (l *lineWriter) raw(line string) error {
	l.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if _, err := l.w.Write(append([]byte(line), '\n')); err != nil {
		return err
	}
	return l.rc.Flush()
}

func (l *lineWriter) value(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return l.raw(string(b))
}
