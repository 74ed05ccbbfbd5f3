package scaler

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"

	"github.com/flowscaler/flowscaler/policy"
	"github.com/flowscaler/flowscaler/sources"
)

// tracerName is the instrumentation scope of flowscaler's own spans.
const tracerName = "github.com/flowscaler/flowscaler/scaler"

// quietTracer records nothing: StreamIsActive checks every 500 ms, and a
// span tree per check would bury everything else. The stream's own server
// span gets an event per push instead.
var quietTracer trace.Tracer = noop.NewTracerProvider().Tracer(tracerName)

// messagingSystems is messaging.system per source kind, for the kinds the
// OpenTelemetry messaging conventions apply to. Redis has no registered
// value; "redis" is what its instrumentations use.
var messagingSystems = map[sources.Kind]string{
	sources.RedisList:              "redis",
	sources.RedisStream:            "redis",
	sources.ServiceBusQueue:        "servicebus",
	sources.ServiceBusSubscription: "servicebus",
}

// Attribute keys of flowscaler's own spans; messaging.* ones come from the
// semantic conventions.
const (
	attrNamespace      = attribute.Key("flowscaler.scaledobject.namespace")
	attrName           = attribute.Key("flowscaler.scaledobject.name")
	attrSource         = attribute.Key("flowscaler.source")
	attrConnection     = attribute.Key("flowscaler.connection")
	attrEntity         = attribute.Key("flowscaler.entity")
	attrDepth          = attribute.Key("flowscaler.queue.depth")
	attrDepthCapped    = attribute.Key("flowscaler.queue.depth_capped")
	attrInFlight       = attribute.Key("flowscaler.queue.in_flight")
	attrOldestAge      = attribute.Key("flowscaler.queue.oldest_age_seconds")
	attrMaxDeliveries  = attribute.Key("flowscaler.queue.max_deliveries")
	attrDeadLetter     = attribute.Key("flowscaler.queue.dead_letter")
	attrMetricsSource  = attribute.Key("flowscaler.metrics.source")
	attrMetric         = attribute.Key("flowscaler.metric")
	attrProcessing     = attribute.Key("flowscaler.processing_time_seconds")
	attrProcessingFrom = attribute.Key("flowscaler.processing_time_from")
	attrProcessingP95  = attribute.Key("flowscaler.processing_time_p95_seconds")
	attrArrivalRate    = attribute.Key("flowscaler.arrival_rate")
	attrBurstRate      = attribute.Key("flowscaler.burst_rate")
	attrConsumption    = attribute.Key("flowscaler.consumption_rate")
	attrFailureRate    = attribute.Key("flowscaler.failure_rate")
	attrReadyPods      = attribute.Key("flowscaler.ready_pods")
	attrSteadySlots    = attribute.Key("flowscaler.steady_slots")
	attrDrainSlots     = attribute.Key("flowscaler.drain_slots")
	attrRaw            = attribute.Key("flowscaler.raw_replicas")
	attrRecommended    = attribute.Key("flowscaler.recommended_replicas")
	attrPolicyReplicas = attribute.Key("flowscaler.policy_replicas")
	attrReplicas       = attribute.Key("flowscaler.replicas")
	attrActive         = attribute.Key("flowscaler.active")
	attrMode           = attribute.Key("flowscaler.mode")
	attrPanicking      = attribute.Key("flowscaler.panicking")
	attrStalled        = attribute.Key("flowscaler.stalled")
	attrReason         = attribute.Key("flowscaler.reason")
	attrStale          = attribute.Key("flowscaler.stale")
	attrReused         = attribute.Key("flowscaler.decision_reused")
)

// objectAttributes name the ScaledObject and its queue; they go on the
// server span and on every child span.
func objectAttributes(obj Object) []attribute.KeyValue {
	a := []attribute.KeyValue{
		attrNamespace.String(obj.Namespace),
		attrName.String(obj.Name),
		attrSource.String(string(obj.Query.Kind)),
		attrConnection.String(obj.Query.Connection),
		attrEntity.String(obj.Query.Name),
	}
	if sys, ok := messagingSystems[obj.Query.Kind]; ok {
		a = append(a, semconv.MessagingSystemKey.String(sys), semconv.MessagingDestinationName(obj.Query.Name))
		switch {
		case obj.Query.Group == "":
		case sys == "servicebus":
			// Service Bus has subscriptions of a topic, not consumer groups.
			a = append(a, semconv.MessagingDestinationSubscriptionName(obj.Query.Group))
		default:
			a = append(a, semconv.MessagingConsumerGroupName(obj.Query.Group))
		}
	}
	return a
}

// readQueue is the queue read, in a client span.
func (s *Server) readQueue(ctx context.Context, tr trace.Tracer, obj Object) (sources.Reading, error) {
	ctx, span := tr.Start(ctx, "source.read", trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	r, err := s.reader.Read(ctx, obj.Query)
	if !span.IsRecording() {
		return r, err
	}
	span.SetAttributes(objectAttributes(obj)...)
	if err != nil {
		failed(span, err)
		return r, err
	}
	span.SetAttributes(
		attrDepth.Float64(r.Depth),
		attrDepthCapped.Bool(r.DepthCapped),
		attrInFlight.Float64(r.InFlight),
		attrMaxDeliveries.Int64(r.MaxDeliveries),
	)
	if r.OldestAge >= 0 {
		span.SetAttributes(attrOldestAge.Float64(r.OldestAge.Seconds()))
	}
	setKnownAttr(span, attrDeadLetter, r.DeadLetter)
	return r, nil
}

// readConsumerMetrics is the consumer-metrics read, in a client span. A
// metric that could not be read is an event; the span fails when nothing
// could be read.
func (s *Server) readConsumerMetrics(ctx context.Context, tr trace.Tracer, obj Object) (sources.Metrics, error) {
	ctx, span := tr.Start(ctx, "metrics.read", trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	m, err := s.metricsReader.ReadMetrics(ctx, *obj.Metrics)
	if !span.IsRecording() {
		return m, err
	}
	span.SetAttributes(objectAttributes(obj)...)
	span.SetAttributes(attrMetricsSource.String(obj.Metrics.String()))
	if err != nil {
		failed(span, err)
		return m, err
	}
	if m.ProcessingMean >= 0 {
		span.SetAttributes(attrProcessing.Float64(m.ProcessingMean.Seconds()))
	}
	if m.ProcessingP95 >= 0 {
		span.SetAttributes(attrProcessingP95.Float64(m.ProcessingP95.Seconds()))
	}
	setKnownAttr(span, attrConsumption, m.ConsumptionRate)
	setKnownAttr(span, attrFailureRate, m.FailureRate)
	setKnownAttr(span, attrReadyPods, m.ReadyPods)
	metrics := make([]string, 0, len(m.Errors))
	for metric := range m.Errors {
		metrics = append(metrics, string(metric))
	}
	sort.Strings(metrics)
	for _, metric := range metrics {
		span.AddEvent("metric unavailable", trace.WithAttributes(attrMetric.String(metric),
			semconv.ExceptionMessage(m.Errors[sources.Metric(metric)].Error())))
	}
	q := obj.Metrics
	asked := 0
	for _, expr := range []string{q.ProcessingMean, q.ProcessingP95, q.ConsumptionRate, q.FailureRate, q.ReadyPods} {
		if expr != "" {
			asked++
		}
	}
	if asked > 0 && len(metrics) == asked {
		span.SetStatus(otelcodes.Error, fmt.Sprintf("no metric could be read: %s: %v", metrics[0], m.Errors[sources.Metric(metrics[0])]))
	}
	return m, nil
}

// decide runs the policy in an internal span carrying its inputs, the
// terms of the formula and the outcome; note is appended to the Reason.
func decide(ctx context.Context, tr trace.Tracer, obj Object, in policy.Inputs, st policy.State, now time.Time, note string) (policy.Decision, policy.State) {
	_, span := tr.Start(ctx, "policy.decide")
	defer span.End()
	dec, next := policy.Decide(obj.Params, in, st, now)
	dec.Reason += note
	if !span.IsRecording() {
		// Building ~20 attributes for a span nobody records would be much
		// of a call's garbage when tracing is off.
		return dec, next
	}
	t := dec.Terms
	span.SetAttributes(objectAttributes(obj)...)
	span.SetAttributes(
		attrDepth.Float64(in.Depth),
		attrInFlight.Float64(in.InFlight),
		attrProcessing.Float64(t.ProcessingTime.Seconds()),
		attrProcessingFrom.String(t.ProcessingFrom),
		attrSteadySlots.Float64(t.SteadySlots),
		attrDrainSlots.Float64(t.DrainSlots),
		attrRaw.Int(t.Raw),
		attrRecommended.Int(t.Recommended),
		attrPolicyReplicas.Int(t.PolicyReplicas),
		attrReplicas.Int(dec.Replicas),
		attrActive.Bool(dec.Active),
		attrMode.String(dec.Mode),
		attrPanicking.Bool(t.Panicking),
		attrReason.String(dec.Reason),
	)
	if in.OldestAge >= 0 {
		span.SetAttributes(attrOldestAge.Float64(in.OldestAge.Seconds()))
	}
	setKnownAttr(span, attrArrivalRate, t.ArrivalRate)
	setKnownAttr(span, attrBurstRate, t.BurstRate)
	setKnownAttr(span, attrConsumption, t.ConsumptionRate)
	setKnownAttr(span, attrFailureRate, in.FailureRate)
	if t.Stalled != "" {
		span.SetAttributes(attrStalled.String(t.Stalled))
	}
	return dec, next
}

// outcome puts the answer on the caller's span (the gRPC server span).
func outcome(span trace.Span, ev Evaluation) {
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(
		attrReplicas.Int(ev.Decision.Replicas),
		attrActive.Bool(ev.Decision.Active),
		attrReason.String(ev.Decision.Reason),
		attrStale.Bool(ev.Stale),
	)
}

func failed(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(otelcodes.Error, err.Error())
}

// setKnownAttr sets a rate only when it is known: an absent attribute is
// honest, a 0 would not be.
func setKnownAttr(span trace.Span, k attribute.Key, v float64) {
	if !math.IsNaN(v) {
		span.SetAttributes(k.Float64(v))
	}
}

// pushed records a StreamIsActive push as an event on the stream's span.
func pushed(ctx context.Context, ev Evaluation) {
	trace.SpanFromContext(ctx).AddEvent("is_active sent", trace.WithAttributes(
		attrActive.Bool(ev.Decision.Active),
		attrReplicas.Int(ev.Decision.Replicas),
		attrReason.String(ev.Decision.Reason),
	))
}

// serverTracing makes a server span per call of KEDA's service and of
// flowscaler's own, continuing W3C trace context and baggage from the
// caller. Health checks (probes every few seconds) are not traced, and no
// metrics are recorded: /metrics has them.
func serverTracing(tp trace.TracerProvider) stats.Handler {
	return otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelgrpc.WithPropagators(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})),
		otelgrpc.WithFilter(func(info *stats.RPCTagInfo) bool {
			return !strings.HasPrefix(info.FullMethodName, "/"+healthpb.Health_ServiceDesc.ServiceName+"/")
		}),
	)
}
