// Package flowscalerv1 is flowscaler's own gRPC API (flowscaler.proto): decisions explained and consumer hints; `make proto` generates the rest of the package.
package flowscalerv1
