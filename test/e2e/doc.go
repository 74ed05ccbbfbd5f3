// Package e2e runs flowscaler with KEDA on a real Kubernetes control plane.
package e2e
