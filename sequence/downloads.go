package sequence

import (
	"errors"
	"os"
	"sync"
)

var errStopping = errors.New("the node is stopping its services: no downloads")

// openFiles are files PID 1 has open for the endpoint (an etcd snapshot being downloaded).
// closeAll ends them: a download must not keep a filesystem from being unmounted, and PID 1 is
// the one process the unmount's kill of what holds it cannot kill.
type openFiles struct {
	mu     sync.Mutex
	files  map[*openFile]struct{}
	closed bool // after closeAll: nothing more opens (the node is stopping)
}

// openFile is an *os.File whose Close also forgets it.
type openFile struct {
	*os.File
	o *openFiles
}

func (f *openFile) Close() error {
	f.o.mu.Lock()
	delete(f.o.files, f)
	f.o.mu.Unlock()
	return f.File.Close()
}

func (o *openFiles) open(path string) (*openFile, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil, errStopping
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if o.files == nil {
		o.files = map[*openFile]struct{}{}
	}
	of := &openFile{File: f, o: o}
	o.files[of] = struct{}{}
	return of, nil
}

// closeAll closes every file still open (their readers get an error) and refuses new ones.
func (o *openFiles) closeAll() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	for f := range o.files {
		f.File.Close()
	}
	o.files = nil
}
