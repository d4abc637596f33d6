package api

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is keel.dev/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// UpgradePlan is the resource as the API server stores it.
type UpgradePlan struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              UpgradePlanSpec   `json:"spec"`
	Status            UpgradePlanStatus `json:"status,omitempty"`
}

// UpgradePlanList is a list of plans.
type UpgradePlanList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []UpgradePlan `json:"items"`
}

// DeepCopyObject copies through JSON: the types are JSON through and through, and a copy
// that cannot miss a field added later is worth more here than the nanoseconds a generated
// one saves (a plan is copied a few times per pass, not per node).
func (p *UpgradePlan) DeepCopyObject() runtime.Object { return jsonCopy(p) }

// DeepCopyObject copies through JSON (see UpgradePlan.DeepCopyObject).
func (l *UpgradePlanList) DeepCopyObject() runtime.Object { return jsonCopy(l) }

func jsonCopy[T any](v *T) *T {
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic("api: copy: " + err.Error()) // plain data: cannot happen
	}
	out := new(T)
	if err := json.Unmarshal(b, out); err != nil {
		panic("api: copy: " + err.Error())
	}
	return out
}

// AddToScheme registers the plan types.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &UpgradePlan{}, &UpgradePlanList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
