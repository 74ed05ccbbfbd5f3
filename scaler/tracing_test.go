package scaler

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	flowscalerv1 "github.com/flowscaler/flowscaler/proto/flowscaler/v1"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

// One GetMetrics call, carrying a caller's W3C trace context, against a
// real redis-server and a Prometheus that refuses connections: a server
// span continuing the caller's trace, with the queue read, the consumer
// metrics read (failed) and the decision under it.
func TestGetMetricsSpanTree(t *testing.T) {
	rs := redistest.Start(t)
	seedOldBacklog(t, rs.Client(t))
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	d := startDaemonWith(t, fmt.Sprintf(`
server: {readTimeout: 1s, readCacheTTL: 100ms}
connections:
  local: {type: redis, url: %q}
  prom: {type: prometheus, url: "http://127.0.0.1:1"}
`, rs.URL()), func(o *DaemonOptions) { o.TracerProvider = tp })

	const traceID, parentID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", fmt.Sprintf("00-%s-%s-01", traceID, parentID))
	r := &pb.ScaledObjectRef{Namespace: "shop", Name: "orders", ScalerMetadata: map[string]string{
		"source": "redis-stream", "connection": "local", "stream": "orders", "group": "workers",
		"processingTime": "2s", "targetAge": "10s", "concurrency": "2",
		"metrics": "prom", "processingSelector": `service="orders"`,
	}}
	m, err := d.client.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: r, MetricName: "flowscaler-shop-orders"})
	if err != nil {
		t.Fatal(err)
	}
	if v := m.MetricValues[0].MetricValue; v != 40 {
		t.Fatalf("GetMetrics = %d, want 40", v)
	}
	// The server span ends when the call's last event is handled, which may
	// be just after the client has its answer.
	waitFor(t, func() bool { return len(exp.GetSpans()) >= 4 })
	if _, err := d.health.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}

	spans := exp.GetSpans().Snapshots()
	server := findSpan(t, spans, "externalscaler.ExternalScaler/GetMetrics")
	if server.SpanKind() != trace.SpanKindServer {
		t.Errorf("server span kind = %v", server.SpanKind())
	}
	if got := server.Parent(); got.TraceID().String() != traceID || got.SpanID().String() != parentID || !got.IsRemote() {
		t.Errorf("server span parent = %v/%v remote %v; want the caller's %s/%s", got.TraceID(), got.SpanID(), got.IsRemote(), traceID, parentID)
	}
	var children []string
	for _, s := range spans {
		if s.Parent().SpanID() == server.SpanContext().SpanID() {
			children = append(children, s.Name())
		}
		if s.SpanContext().TraceID().String() != traceID {
			t.Errorf("span %q is in trace %v, want the caller's %s", s.Name(), s.SpanContext().TraceID(), traceID)
		}
		if strings.Contains(s.Name(), "Health") {
			t.Errorf("health check traced: %q", s.Name())
		}
	}
	sort.Strings(children)
	if diff := cmp.Diff([]string{"metrics.read", "policy.decide", "source.read"}, children); diff != "" {
		t.Errorf("children of the server span (-want +got):\n%s", diff)
	}

	object := map[attribute.Key]any{
		"flowscaler.scaledobject.namespace": "shop",
		"flowscaler.scaledobject.name":      "orders",
		"flowscaler.source":                 "redis-stream",
		"flowscaler.connection":             "local",
		"flowscaler.entity":                 "orders",
		"messaging.system":                  "redis",
		"messaging.destination.name":        "orders",
		"messaging.consumer.group.name":     "workers",
	}
	read := findSpan(t, spans, "source.read")
	if read.SpanKind() != trace.SpanKindClient {
		t.Errorf("source.read kind = %v, want client", read.SpanKind())
	}
	wantAttrs(t, read, object)
	wantAttrs(t, read, map[attribute.Key]any{
		"flowscaler.queue.depth": 100.0, "flowscaler.queue.in_flight": 0.0, "flowscaler.queue.depth_capped": false,
	})
	// The entries are two hours old: urgency is capped, so only the order matters.
	if age := attrs(read)["flowscaler.queue.oldest_age_seconds"]; age.AsFloat64() < 7000 {
		t.Errorf("oldest age = %v, want about 7200 s", age.Emit())
	}

	metricsRead := findSpan(t, spans, "metrics.read")
	wantAttrs(t, metricsRead, object)
	wantAttrs(t, metricsRead, map[attribute.Key]any{"flowscaler.metrics.source": "prometheus prom"})
	if metricsRead.Status().Code != otelcodes.Error || !strings.Contains(metricsRead.Status().Description, "127.0.0.1:1") {
		t.Errorf("metrics.read status = %+v, want an error naming the unreachable Prometheus", metricsRead.Status())
	}

	decide := findSpan(t, spans, "policy.decide")
	wantAttrs(t, decide, object)
	wantAttrs(t, decide, map[attribute.Key]any{
		"flowscaler.queue.depth":             100.0,
		"flowscaler.processing_time_seconds": 2.0,
		"flowscaler.processing_time_from":    "configured",
		"flowscaler.steady_slots":            0.0,
		"flowscaler.drain_slots":             80.0,
		"flowscaler.raw_replicas":            int64(40),
		"flowscaler.replicas":                int64(40),
		"flowscaler.active":                  true,
	})
	reason := attrs(decide)["flowscaler.reason"].AsString()
	if !strings.Contains(reason, "backlog 100") || !strings.Contains(reason, "processing time from configured 2s") {
		t.Errorf("decide reason = %q; want the backlog and the configured processing time", reason)
	}
	if _, ok := attrs(decide)["flowscaler.arrival_rate"]; ok {
		t.Error("decide has an arrival rate from a single reading; unknown must be absent")
	}
	wantAttrs(t, server, object)
	wantAttrs(t, server, map[attribute.Key]any{
		"flowscaler.replicas": int64(40), "flowscaler.stale": false, "flowscaler.reason": reason,
	})
}

// Explain is traced too, and reads nothing: its span has no children.
func TestExplainCallIsTracedWithoutReads(t *testing.T) {
	rs := redistest.Start(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	d := startDaemonWith(t, daemonConfig(rs.URL(), "60s"), func(o *DaemonOptions) { o.TracerProvider = tp })
	rs.Client(t).RPush(context.Background(), "jobs", "a")
	r := &pb.ScaledObjectRef{Namespace: "shop", Name: "jobs", ScalerMetadata: map[string]string{"source": "redis-list", "connection": "local", "list": "jobs"}}
	if _, _, err := callKEDAWay(context.Background(), d.client, r); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(exp.GetSpans()) > 0 })
	exp.Reset()
	if _, err := flowscalerv1.NewDecisionServiceClient(d.conn).Explain(context.Background(), &flowscalerv1.ExplainRequest{All: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(exp.GetSpans()) > 0 })
	var names []string
	for _, s := range exp.GetSpans() {
		names = append(names, s.Name)
	}
	if diff := cmp.Diff([]string{"flowscaler.v1.DecisionService/Explain"}, names); diff != "" {
		t.Errorf("spans of an Explain call (-want +got):\n%s", diff)
	}
}

func findSpan(t *testing.T, spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	var names []string
	for _, s := range spans {
		names = append(names, s.Name())
		if s.Name() == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d spans named %q among %q, want exactly 1", len(found), name, names)
	}
	return found[0]
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	out := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		out[kv.Key] = kv.Value
	}
	return out
}

func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[attribute.Key]any) {
	t.Helper()
	got := attrs(s)
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("span %q lacks %s (want %v)", s.Name(), k, v)
			continue
		}
		if g.AsInterface() != v {
			t.Errorf("span %q: %s = %#v, want %#v", s.Name(), k, g.AsInterface(), v)
		}
	}
}

// A StreamIsActive stream is one span with an event per push; its periodic
// checks make no spans of their own.
func TestStreamIsActiveIsOneSpanWithAnEventPerPush(t *testing.T) {
	rs := redistest.Start(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	d := startDaemonWith(t, daemonConfig(rs.URL(), "60s"), func(o *DaemonOptions) { o.TracerProvider = tp })
	rs.Client(t).RPush(context.Background(), "jobs", "a")
	r := &pb.ScaledObjectRef{Namespace: "shop", Name: "jobs", ScalerMetadata: map[string]string{"source": "redis-list", "connection": "local", "list": "jobs"}}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := d.client.StreamIsActive(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := stream.Recv(); err != nil || !got.Result {
		t.Fatalf("first push = %v, %v; want active", got, err)
	}
	// Let the stream check a few more times (every 500 ms), then leave.
	time.Sleep(1200 * time.Millisecond)
	cancel()
	waitFor(t, func() bool { return len(exp.GetSpans()) > 0 })
	spans := exp.GetSpans()
	if len(spans) != 1 || spans[0].Name != "externalscaler.ExternalScaler/StreamIsActive" {
		var names []string
		for _, s := range spans {
			names = append(names, s.Name)
		}
		t.Fatalf("spans = %q, want the stream's span alone", names)
	}
	var pushes int
	for _, e := range spans[0].Events {
		if e.Name == "is_active sent" {
			pushes++
		}
	}
	if pushes != 1 {
		t.Errorf("%d push events, want 1 (activity did not change)", pushes)
	}
}
