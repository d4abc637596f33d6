package reconciler

import (
	"context"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"keel/controller"
	"keel/netapi"
)

// cachedHealth is controller.Health from the manager's caches (a node and its pods, read
// once per pass per upgraded node without a request to the API server) and the plan's
// HTTP check.
type cachedHealth struct {
	c     client.Reader
	http  *http.Client
	check string
}

func (h cachedHealth) Healthy(ctx context.Context, node string, st netapi.Status) (bool, string) {
	var n corev1.Node
	if err := h.c.Get(ctx, client.ObjectKey{Name: node}, &n); err != nil {
		return false, err.Error()
	}
	var pods corev1.PodList
	if err := h.c.List(ctx, &pods, client.MatchingFields{podNodeField: node}); err != nil {
		return false, err.Error()
	}
	if ok, why := controller.Gate(&n, st, pods.Items); !ok {
		return false, why
	}
	if h.check == "" {
		return true, ""
	}
	c := h.http
	if c == nil {
		c = http.DefaultClient
	}
	return controller.HTTPCheck(ctx, c, h.check)
}
