// Package crdtest checks the UpgradePlan CRD (controller/api/crd.yaml) against a real
// kube-apiserver: it installs, its schema and CEL rules refuse what UpgradePlanSpec.Rules
// refuses, and `kubectl get upgradeplans` shows target, done/total and phase. An integration
// package (make test-integration): it needs build/bin's kube-apiserver and etcd.
package crdtest
