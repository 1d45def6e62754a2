//go:build tools

// Package tools keeps kube-apiserver's packages in this module's graph so that
// `go mod tidy` records every module its build needs in go.sum.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
