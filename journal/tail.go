package journal

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
)

// tailChunk is how much of a file is read at a time, from its end.
const tailChunk = 64 << 10

// Tail returns the last n lines (n > 0) of the files paths, taken as one log (oldest file
// first), oldest line first. It reads from the ends of the files, never a whole log it does
// not need, and a line longer than a chunk costs its length once.
func Tail(paths []string, n int) ([]string, error) {
	var out []string // newest first
	for i := len(paths) - 1; i >= 0 && len(out) < n; i-- {
		lines, err := tailFile(paths[i], n-len(out))
		if err != nil {
			return nil, err
		}
		out = append(out, lines...)
	}
	slices.Reverse(out)
	return out, nil
}

// tailFile returns up to n lines from the end of one file, newest first. A file's last line
// may lack its newline (cut by a power loss): it is a line still.
func tailFile(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	var out []string
	var pieces [][]byte // the line being read, its later parts first
	line := func(head []byte) string {
		var b bytes.Buffer
		b.Write(head)
		for k := len(pieces) - 1; k >= 0; k-- {
			b.Write(pieces[k])
		}
		pieces = pieces[:0]
		return b.String()
	}
	end := st.Size()
	for first := true; end > 0 && len(out) < n; first = false {
		start := max(end-tailChunk, 0)
		buf := make([]byte, end-start)
		if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
			return nil, fmt.Errorf("journal: %w", err)
		}
		if first {
			buf = bytes.TrimSuffix(buf, []byte("\n"))
		}
		for len(out) < n {
			j := bytes.LastIndexByte(buf, '\n')
			if j < 0 {
				break
			}
			out = append(out, line(buf[j+1:]))
			buf = buf[:j]
		}
		pieces = append(pieces, buf)
		end = start
	}
	// What is left is the file's first line (files are cut at line ends).
	if len(out) < n && st.Size() > 0 {
		out = append(out, line(nil))
	}
	return out, nil
}
