package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otelVars are every variable FromEnv looks at; each case starts with all
// of them empty so the machine's environment cannot leak in.
var otelVars = []string{
	"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER",
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
	"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
}

func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, k := range otelVars {
		t.Setenv(k, env[k])
	}
}

func TestFromEnv(t *testing.T) {
	tests := []struct {
		name         string
		env          map[string]string
		wantExporter string
		wantErr      string
	}{
		{name: "nothing set: off", env: nil},
		{name: "endpoint: OTLP over HTTP by default", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, wantExporter: "otlp http/protobuf"},
		{name: "traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, wantExporter: "otlp http/protobuf"},
		{name: "otlp exporter over grpc", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, wantExporter: "otlp grpc"},
		{name: "traces protocol wins", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, wantExporter: "otlp http/protobuf"},
		{name: "none beats an endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}},
		{name: "SDK disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}},
		{name: "unsupported exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"},
			wantErr: `OTEL_TRACES_EXPORTER = "zipkin": must be otlp or none (flowscaler exports traces over OTLP only)`},
		{name: "unsupported protocol", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
			wantErr: `OTEL_EXPORTER_OTLP_PROTOCOL = "http/json": must be grpc or http/protobuf`},
		{name: "unsupported traces protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"},
			wantErr: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = "udp": must be grpc or http/protobuf`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setEnv(t, tt.env)
			tr, err := FromEnv(context.Background(), "v1.2.3")
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if gotErr != tt.wantErr {
				t.Fatalf("error = %q, want %q", gotErr, tt.wantErr)
			}
			defer tr.Shutdown(context.Background())
			if tr.Exporter != tt.wantExporter {
				t.Errorf("exporter = %q, want %q", tr.Exporter, tt.wantExporter)
			}
			_, sdk := tr.Provider.(*sdktrace.TracerProvider)
			if sdk != (tt.wantExporter != "") {
				t.Errorf("provider %T: recording = %v, want %v", tr.Provider, sdk, tt.wantExporter != "")
			}
			if tr.Provider == nil {
				t.Error("provider is nil: off must be a no-op provider")
			}
		})
	}
}

// With only the endpoint set, a span reaches an OTLP/HTTP receiver on
// Shutdown, with flowscaler's resource and the environment's attributes.
func TestFromEnvExportsOverOTLP(t *testing.T) {
	var mu sync.Mutex
	var got []*collectortrace.ExportTraceServiceRequest
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		req := &collectortrace.ExportTraceServiceRequest{}
		if err := proto.Unmarshal(body, req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		_, _ = w.Write(b)
	}))
	defer receiver.Close()
	setEnv(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.URL,
		"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment.name=test",
	})
	tr, err := FromEnv(context.Background(), "v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	_, span := tr.Provider.Tracer("test").Start(context.Background(), "externalscaler.ExternalScaler/GetMetrics")
	span.End()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || len(got[0].ResourceSpans) != 1 {
		t.Fatalf("receiver got %d requests (%v), want 1 with one resource", len(got), got)
	}
	rs := got[0].ResourceSpans[0]
	res := map[string]string{}
	for _, kv := range rs.GetResource().GetAttributes() {
		res[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	want := map[string]string{"service.name": "flowscaler", "service.version": "v1.2.3", "deployment.environment.name": "test"}
	for k, v := range want {
		if res[k] != v {
			t.Errorf("resource %s = %q, want %q (all: %v)", k, res[k], v, res)
		}
	}
	var names []string
	for _, ss := range rs.GetScopeSpans() {
		for _, s := range ss.GetSpans() {
			names = append(names, s.GetName())
		}
	}
	if diff := cmp.Diff([]string{"externalscaler.ExternalScaler/GetMetrics"}, names); diff != "" {
		t.Errorf("exported spans (-want +got):\n%s", diff)
	}
}
