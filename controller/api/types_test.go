package api

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRules(t *testing.T) {
	no := false
	s := UpgradePlanSpec{Image: "registry.example/keel:v2.0.0", Concurrency: 3, Preserve: &no,
		Windows: []Window{{Days: []string{"Saturday", "Sunday"}, Start: "01:00", End: "05:00", TimeZone: "Europe/Berlin"}}}
	r, err := s.Rules()
	if err != nil {
		t.Fatal(err)
	}
	if r.Concurrency != 3 || len(r.Windows) != 1 || len(r.Windows[0].Days) != 2 || r.Windows[0].Days[0] != time.Saturday || s.PreserveOrDefault() {
		t.Errorf("rules %+v", r)
	}
	if r, _ := (UpgradePlanSpec{Channel: "registry.example/keel"}).Rules(); r.Concurrency != 1 {
		t.Errorf("default concurrency: %d", r.Concurrency)
	}
	if !(UpgradePlanSpec{}).PreserveOrDefault() {
		t.Error("preserve defaults to true")
	}
	for _, c := range []struct {
		spec UpgradePlanSpec
		msg  string
	}{
		{UpgradePlanSpec{}, "spec.image or spec.channel is required"},
		{UpgradePlanSpec{Image: "a:v1", Channel: "b"}, "exclusive"},
		{UpgradePlanSpec{Channel: "registry.example:5000/keel:v1"}, "without a tag"},
		{UpgradePlanSpec{Image: "a:v1", Concurrency: -1}, "spec.concurrency"},
		{UpgradePlanSpec{Image: "a:v1", DrainTimeoutSeconds: -5}, "spec.drainTimeoutSeconds"},
		{UpgradePlanSpec{Image: "a:v1", HealthCheck: "ftp://x"}, "spec.healthCheck"},
		{UpgradePlanSpec{Image: "a:v1", Windows: []Window{{Days: []string{"Funday"}, Start: "01:00", End: "02:00"}}}, "spec.windows[0].days"},
		{UpgradePlanSpec{Image: "a:v1", Windows: []Window{{Start: "1am", End: "02:00"}}}, "spec.windows[0]"},
		{UpgradePlanSpec{Image: "a:v1", Windows: []Window{{Days: []string{"monday"}, Start: "01:00", End: "02:00"}}}, "spec.windows[0].days"},
		{UpgradePlanSpec{Image: "a:v1", Windows: []Window{{Start: "01:00", End: "01:00"}}}, "an empty window"},
		{UpgradePlanSpec{Image: "a:v1", Windows: []Window{{Start: "01:00", End: "02:00", TimeZone: "Nowhere/Land"}}}, "spec.windows[0]"},
	} {
		_, err := c.spec.Rules()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%+v: %v, want %q", c.spec, err, c.msg)
		}
	}
	// A channel on a registry with a port is not a tag.
	if _, err := (UpgradePlanSpec{Channel: "registry.example:5000/keel"}).Rules(); err != nil {
		t.Errorf("channel with a port: %v", err)
	}
}
