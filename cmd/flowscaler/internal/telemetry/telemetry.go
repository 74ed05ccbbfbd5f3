package telemetry

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Tracing is the process's tracer provider and how to flush it.
type Tracing struct {
	// Provider records nothing when tracing is off.
	Provider trace.TracerProvider
	// Exporter is "otlp grpc" or "otlp http/protobuf"; "" when tracing is off.
	Exporter string
	shutdown func(context.Context) error
}

// Shutdown exports the spans still buffered and stops the exporter.
func (t Tracing) Shutdown(ctx context.Context) error {
	if t.shutdown == nil {
		return nil
	}
	return t.shutdown(ctx)
}

// FromEnv reads the OpenTelemetry environment. Tracing is on when
// OTEL_TRACES_EXPORTER is "otlp", or when it is unset and an OTLP endpoint
// is (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
// it is off with "none", with OTEL_SDK_DISABLED=true, and when nothing is
// set, so that a plain start exports nothing and dials nothing. The
// protocol is OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
// OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" or "http/protobuf" (the
// specification's default). The exporters read the rest of OTEL_EXPORTER_OTLP_*
// (endpoint, headers, certificates, timeout, compression), the SDK reads
// OTEL_TRACES_SAMPLER* and OTEL_BSP_*, and the resource OTEL_SERVICE_NAME
// and OTEL_RESOURCE_ATTRIBUTES over the defaults service.name=flowscaler
// and service.version=version.
func FromEnv(ctx context.Context, version string) (Tracing, error) {
	off := Tracing{Provider: noop.NewTracerProvider()}
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return off, nil
	}
	switch exporter := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); exporter {
	case "none":
		return off, nil
	case "":
		if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return off, nil
		}
	case "otlp":
	default:
		return off, fmt.Errorf("OTEL_TRACES_EXPORTER = %q: must be otlp or none (flowscaler exports traces over OTLP only)", exporter)
	}

	protoVar, protocol := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protoVar, protocol = "OTEL_EXPORTER_OTLP_PROTOCOL", os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exp sdktrace.SpanExporter
	var err error
	switch protocol {
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	case "", "http/protobuf":
		protocol = "http/protobuf"
		exp, err = otlptracehttp.New(ctx)
	default:
		return off, fmt.Errorf("%s = %q: must be grpc or http/protobuf", protoVar, protocol)
	}
	if err != nil {
		return off, fmt.Errorf("OTLP trace exporter (%s): %w", protocol, err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("flowscaler"), semconv.ServiceVersion(version)),
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return off, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return Tracing{Provider: tp, Exporter: "otlp " + protocol, shutdown: tp.Shutdown}, nil
}
