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
// not need.
func Tail(paths []string, n int) ([]string, error) {
	var out []string // newest first
	var partial []byte
	for i := len(paths) - 1; i >= 0 && len(out) < n; i-- {
		f, err := os.Open(paths[i])
		if err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("journal: %w", err)
		}
		end := st.Size()
		// A file's last line may lack its newline (cut by a power loss): it is a line still.
		first := true
		for end > 0 && len(out) < n {
			start := max(end-tailChunk, 0)
			buf := make([]byte, end-start)
			if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
				f.Close()
				return nil, fmt.Errorf("journal: %w", err)
			}
			buf = append(buf, partial...)
			if first {
				buf = bytes.TrimSuffix(buf, []byte("\n"))
				first = false
			}
			for len(out) < n {
				j := bytes.LastIndexByte(buf, '\n')
				if j < 0 {
					break
				}
				out = append(out, string(buf[j+1:]))
				buf = buf[:j]
			}
			partial = slices.Clone(buf)
			end = start
		}
		f.Close()
		// What is left is the file's first line (files are cut at line ends).
		if len(out) < n && st.Size() > 0 {
			out = append(out, string(partial))
		}
		partial = nil
	}
	slices.Reverse(out)
	return out, nil
}
