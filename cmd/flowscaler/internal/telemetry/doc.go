// Package telemetry builds flowscaler's OpenTelemetry tracer provider from the standard OTEL_* environment variables.
package telemetry
