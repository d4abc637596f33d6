package reconciler

import (
	"context"
	"fmt"
	"time"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiext "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"keel/controller/api"
)

// InstallCRD creates the UpgradePlan CRD, or updates it to this controller's version, and
// waits until the API server serves it.
func InstallCRD(ctx context.Context, cfg *rest.Config) error {
	var want apiextv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(api.CRD, &want); err != nil {
		return fmt.Errorf("the embedded CRD: %w", err)
	}
	cs, err := apiext.NewForConfig(cfg)
	if err != nil {
		return err
	}
	crds := cs.ApiextensionsV1().CustomResourceDefinitions()
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("install CRD %s: %w", want.Name, err)
		}
		have, err := crds.Get(ctx, want.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = crds.Create(ctx, &want, metav1.CreateOptions{})
		case err == nil:
			want.ResourceVersion = have.ResourceVersion
			_, err = crds.Update(ctx, &want, metav1.UpdateOptions{})
		}
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			continue // another replica got there first: read it again
		}
		if err != nil {
			return fmt.Errorf("install CRD %s: %w", want.Name, err)
		}
		break
	}
	for {
		c, err := crds.Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("CRD %s: %w", want.Name, err)
		}
		for _, cond := range c.Status.Conditions {
			if cond.Type == apiextv1.Established && cond.Status == apiextv1.ConditionTrue {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not established: %w", want.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
