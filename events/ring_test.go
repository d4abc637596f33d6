package events

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestRingBounds(t *testing.T) {
	tests := []struct {
		name              string
		maxLines, maxByte int
		write             []string
		want              []string
	}{
		{"under", 3, 0, []string{"a", "b"}, []string{"a", "b"}},
		{"lines wrap", 3, 0, []string{"a", "b", "c", "d", "e"}, []string{"c", "d", "e"}},
		{"bytes", 10, 5, []string{"aa", "bb", "cc"}, []string{"bb", "cc"}},
		{"one huge line kept", 10, 2, []string{"aa", "huge-line"}, []string{"huge-line"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRing(tc.maxLines, tc.maxByte)
			for _, w := range tc.write {
				r.Append(w)
			}
			if got := r.Tail(0); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Tail = %q, want %q", got, tc.want)
			}
			_, b := r.Len()
			if sum := len(strings.Join(tc.want, "")); b != sum {
				t.Errorf("bytes = %d, want %d", b, sum)
			}
		})
	}
}

func TestWriteSplitsLines(t *testing.T) {
	r := NewRing(10, 0)
	fmt.Fprint(r, "one\ntwo\nthree")
	if got := r.Tail(2); !reflect.DeepEqual(got, []string{"two", "three"}) {
		t.Errorf("Tail(2) = %q", got)
	}
}

func TestFollowLosesNothingAtTheSeam(t *testing.T) {
	r := NewRing(100, 0)
	r.Append("old")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 50 {
			r.Append(fmt.Sprint(i))
		}
	}()
	tail, c, cancel := r.Follow(0, 100)
	wg.Wait()
	cancel()
	var got []string
	got = append(got, tail...)
	for l := range c {
		got = append(got, l)
	}
	if len(got) != 51 || got[0] != "old" || got[50] != "49" {
		t.Errorf("followed %d lines: first %q last %q", len(got), got[0], got[len(got)-1])
	}
}

func TestCloseEndsFollowers(t *testing.T) {
	r := NewRing(10, 0)
	_, c, cancel := r.Follow(0, 1)
	r.Close()
	if _, ok := <-c; ok {
		t.Error("channel open after Close")
	}
	cancel() // safe after Close
	r.Append("dropped")
	if n, _ := r.Len(); n != 0 {
		t.Errorf("append after Close kept %d lines", n)
	}
}
