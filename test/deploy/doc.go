// Package deploy renders the Helm chart with Helm's own SDK and checks every manifest against the Kubernetes, KEDA and Prometheus Operator API types.
package deploy
