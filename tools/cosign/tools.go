//go:build tools

// Package tools pins cosign, which signs installer images (make push, the tests) and checks
// that keel's verifier reads cosign's own signatures. It runs on the build host only; the node
// verifies signatures with keel/installer.
package tools

import (
	_ "github.com/sigstore/cosign/v2/cmd/cosign"
)
