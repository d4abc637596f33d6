package machine

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

func TestExtraConsoles(t *testing.T) {
	for _, c := range []struct {
		cmdline, active string
		want            []string
	}{
		{"quiet", "", nil},
		{"console=ttyS0,115200", "ttyS0", nil},
		{"console=tty0 console=ttyS0,115200n8", "tty0 ttyS0", []string{"tty0"}},
		{"console=tty0 console=ttyS0,115200n8", "", []string{"tty0"}},
		{"console=ttyS0 console=tty0", "ttyS0 tty0", []string{"ttyS0"}},
		{"console=ttyS1 console=tty0 console=ttyS0", "", []string{"ttyS1", "tty0"}},
		{"console=tty0 console=tty0 console=ttyS0", "", []string{"tty0"}},
		{"console=ttyS0 console=null console=ttyS0", "", nil},
		{"console=../sda console=hvc0 console=ttyAMA0", "", []string{"hvc0"}},
		// One 8250 console: the kernel took ttyS1, so ttyS0 is the extra one.
		{"console=ttyS1 console=ttyS0,115200", "ttyS1", []string{"ttyS0"}},
	} {
		if got := ExtraConsoles(c.cmdline, c.active); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q (active %q): %v, want %v", c.cmdline, c.active, got, c.want)
		}
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func TestConsoleWritesEverywhere(t *testing.T) {
	var main, screen bytes.Buffer
	c := NewConsole(&main)
	errs := c.Attach([]string{"tty0", "ttyS9"}, func(dev string) (io.WriteCloser, error) {
		if dev == "/dev/tty0" {
			return nopCloser{&screen}, nil
		}
		return nil, errors.New("no such device")
	})
	if len(errs) != 1 {
		t.Errorf("errs = %v", errs)
	}
	c.Write([]byte("keel: ready\n"))
	if main.String() != "keel: ready\n" || screen.String() != "keel: ready\n" {
		t.Errorf("main %q screen %q", main.String(), screen.String())
	}
}
