package sequence

import (
	"reflect"
	"testing"
)

func TestReadyLineRoundTrip(t *testing.T) {
	r := Ready{Version: "v1", Slot: "A", BootID: "x", KernelAtInitS: 2.5, KernelAtReadyS: 4, Warnings: 1, Endpoint: []string{"https://10.0.2.15:50000"}}
	got, err := ParseReady("[    4.1] noise " + r.Line() + "\r")
	if err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("ParseReady = %+v, %v; want %+v", got, err, r)
	}
	if _, err := ParseReady("keel init starting"); err == nil {
		t.Error("a non-ready line parsed")
	}
}
