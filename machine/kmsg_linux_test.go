package machine

import (
	"context"
	"testing"
)

func TestParseKmsg(t *testing.T) {
	r, err := ParseKmsg([]byte("6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n"))
	if err != nil || r.Seq != 339 || r.Level != 6 || r.Facility != 0 || r.Micros != 5140900 || r.Message != "NET: Registered protocol family 10" {
		t.Fatalf("%+v %v", r, err)
	}
	if r, _ := ParseKmsg([]byte("30,1,2,c;x")); r.Facility != 3 || r.Level != 6 {
		t.Errorf("facility/level: %+v", r)
	}
	for _, bad := range []string{"no separator", "a,b;c", "1,2;x"} {
		if _, err := ParseKmsg([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestReadKmsgHost reads this machine's real kernel log (root only).
func TestReadKmsgHost(t *testing.T) {
	n := 0
	err := ReadKmsg(context.Background(), false, func(KmsgRecord) error { n++; return nil })
	if err != nil {
		t.Skip(err)
	}
	if n == 0 {
		t.Error("no kernel log records")
	}
}
