// Package deploy holds what an operator applies to run keel-controller in a cluster: its
// ServiceAccount and RBAC (rbac.yaml). The controller's integration test runs the binary with
// exactly these permissions.
package deploy

import _ "embed"

// RBAC is rbac.yaml.
//
//go:embed rbac.yaml
var RBAC []byte
