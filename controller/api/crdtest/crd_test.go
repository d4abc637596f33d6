package crdtest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"keel/controller/api"
	"keel/internal/testenv/kubetest"
)

var (
	crdGVR  = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	planGVR = schema.GroupVersionResource{Group: api.Group, Version: api.Version, Resource: "upgradeplans"}
)

func plan(name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": api.Group + "/" + api.Version, "kind": api.Kind,
		"metadata": map[string]any{"name": name}, "spec": spec,
	}}
}

// rules is what the controller's own check says of a spec.
func rules(t *testing.T, spec map[string]any) error {
	t.Helper()
	b, _ := json.Marshal(spec)
	var s api.UpgradePlanSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	_, err := s.Rules()
	return err
}

func TestUpgradePlanCRD(t *testing.T) {
	k := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dyn := dynamic.NewForConfigOrDie(k.Config)
	var crd unstructured.Unstructured
	if err := yaml.Unmarshal(api.CRD, &crd.Object); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(crdGVR).Create(ctx, &crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("install the CRD: %v", err)
	}
	for {
		got, err := dyn.Resource(crdGVR).Get(ctx, crd.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		established := false
		for _, c := range conds {
			m, _ := c.(map[string]any)
			established = established || m["type"] == "Established" && m["status"] == "True"
		}
		if established {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the CRD never became established")
		case <-time.After(100 * time.Millisecond):
		}
	}
	plans := dyn.Resource(planGVR)
	good := map[string]any{"image": "registry.example/keel:v2.0.0", "concurrency": int64(2),
		"windows": []any{map[string]any{"days": []any{"Saturday"}, "start": "01:00", "end": "05:00", "timeZone": "Europe/Berlin"}}}
	// The API server may take a moment to serve a new resource.
	var err error
	for i := 0; i < 50; i++ {
		if _, err = plans.Create(ctx, plan("fleet", good), metav1.CreateOptions{}); err == nil || !apierrors.IsNotFound(err) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("a valid plan: %v", err)
	}
	if err := rules(t, good); err != nil {
		t.Errorf("the schema took a spec Rules refuses: %v", err)
	}
	for _, c := range []struct {
		name string
		spec map[string]any
		msg  string
	}{
		{"image and channel", map[string]any{"image": "r/keel:v2", "channel": "r/keel"}, "exactly one of spec.image and spec.channel"},
		{"neither", map[string]any{"concurrency": int64(1)}, "exactly one of spec.image and spec.channel"},
		{"negative concurrency", map[string]any{"image": "r/keel:v2", "concurrency": int64(-1)}, "spec.concurrency"},
		{"bad start", map[string]any{"image": "r/keel:v2", "windows": []any{map[string]any{"start": "25:00", "end": "01:00"}}}, "spec.windows[0].start"},
		{"bad day", map[string]any{"image": "r/keel:v2", "windows": []any{map[string]any{"days": []any{"Funday"}, "start": "01:00", "end": "02:00"}}}, "spec.windows[0].days[0]"},
		{"no end", map[string]any{"image": "r/keel:v2", "windows": []any{map[string]any{"start": "01:00"}}}, "spec.windows[0].end"},
		{"empty window", map[string]any{"image": "r/keel:v2", "windows": []any{map[string]any{"start": "01:00", "end": "01:00"}}}, "an empty window"},
		{"health check scheme", map[string]any{"image": "r/keel:v2", "healthCheck": "ftp://x"}, "spec.healthCheck"},
		{"drain timeout", map[string]any{"image": "r/keel:v2", "drainTimeoutSeconds": int64(100000)}, "spec.drainTimeoutSeconds"},
	} {
		_, err := plans.Create(ctx, plan("bad-"+strings.ReplaceAll(c.name, " ", "-"), c.spec), metav1.CreateOptions{})
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want Invalid naming %s", c.name, err, c.msg)
		}
		if rules(t, c.spec) == nil {
			t.Errorf("%s: the API server refuses it but Rules accepts it", c.name)
		}
	}

	// The status subresource, and what `kubectl get upgradeplans` prints.
	got, err := plans.Get(ctx, "fleet", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Object["status"] = map[string]any{"target": "v2.0.0", "image": "r.example/keel:v2.0.0@sha256:aa", "phase": "Rolling", "done": int64(1), "total": int64(3)}
	if _, err := plans.UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update status: %v", err)
	}
	hc, err := rest.HTTPClientFor(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", k.Config.Host+"/apis/keel.dev/v1alpha1/upgradeplans", nil)
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var table struct {
		Columns []struct{ Name string } `json:"columnDefinitions"`
		Rows    []struct{ Cells []any } `json:"rows"`
	}
	if err := json.Unmarshal(body, &table); err != nil || len(table.Rows) != 1 {
		t.Fatalf("table: %v\n%s", err, body)
	}
	var cols []string
	for _, c := range table.Columns {
		cols = append(cols, c.Name)
	}
	cells := table.Rows[0].Cells
	// Image has priority 1: kubectl shows it with -o wide.
	if strings.Join(cols, ",") != "Name,Target,Done,Total,Phase,Age,Image" || cells[0] != "fleet" || cells[1] != "v2.0.0" || cells[2] != float64(1) || cells[3] != float64(3) || cells[4] != "Rolling" || cells[6] != "r.example/keel:v2.0.0@sha256:aa" {
		t.Errorf("kubectl get upgradeplans: columns %v, row %v", cols, cells)
	}
	t.Logf("kubectl get upgradeplans: %v / %v", cols, cells[:5])
}
