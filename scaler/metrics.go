package scaler

import (
	"context"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Metrics are flowscaler's own series, registered on a registry the caller
// owns. Per-object series are labelled by namespace and ScaledObject only
// (never by message or key), and are deleted when the object is forgotten.
type Metrics struct {
	rpcTotal     *prometheus.CounterVec
	rpcDuration  *prometheus.HistogramVec
	stale        *prometheus.CounterVec
	sourceErrors *prometheus.CounterVec
	// objects are the per-object gauges: the decision, its inputs and
	// hints, the reason class and where the processing time came from.
	objects *objectSeries
	// ConfigReloads counts reloads by result ("ok" or "error").
	ConfigReloads *prometheus.CounterVec
	// ConfigLastReloadOK is 1 when the last reload attempt succeeded.
	ConfigLastReloadOK prometheus.Gauge
	// state counts the state store's failures and conflicts.
	state stateMetrics
}

var objectLabels = []string{"namespace", "scaledobject"}

// NewMetrics creates the series and registers them on reg (nil: unregistered,
// for tests and tools that do not export). The per-object gauges are not
// registered: Handler writes them after reg's families, and Gatherers
// adds them to a gatherer.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		rpcTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowscaler_grpc_requests_total", Help: "KEDA protocol calls by method and gRPC status code.",
		}, []string{"method", "code"}),
		rpcDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "flowscaler_grpc_request_duration_seconds", Help: "Latency of unary KEDA protocol calls.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"method"}),
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowscaler_stale_answers_total", Help: "Answers served from the last good decision because a source failed.",
		}, objectLabels),
		sourceErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowscaler_object_source_errors_total", Help: "Failed source reads seen by an object's evaluations.",
		}, objectLabels),
		objects: newObjectSeries(objectGaugeHelp,
			family{"flowscaler_decision_reason",
				"1 for the class of the current decision: scale-up, steady, holding, idle, stalled, clamped-max or stale."},
			family{"flowscaler_processing_time_from",
				"1 for where the processing time came from (measured, last-good or configured), 0 for the others."}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowscaler_config_reloads_total", Help: "Config reload attempts by result.",
		}, []string{"result"}),
		ConfigLastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowscaler_config_last_reload_successful", Help: "1 when the last config reload succeeded, 0 when the old config was kept.",
		}),
	}
	m.ConfigLastReloadOK.Set(1)
	m.state = newStateMetrics()
	if reg != nil {
		reg.MustRegister(m.rpcTotal, m.rpcDuration, m.stale, m.sourceErrors,
			m.ConfigReloads, m.ConfigLastReloadOK, m.state.errors, m.state.conflicts)
	}
	return m
}

// objectGaugeHelp names and explains each per-object gauge.
var objectGaugeHelp = [numGauges]family{
	gReplicas:        {"flowscaler_desired_replicas", "Replica target served to KEDA."},
	gActive:          {"flowscaler_active", "1 when visible plus in-flight work exceeds the activation depth."},
	gDepth:           {"flowscaler_queue_depth", "Visible backlog: list length or undelivered stream entries."},
	gInFlight:        {"flowscaler_in_flight", "Delivered but unacknowledged messages (stream pending entries)."},
	gOldestAge:       {"flowscaler_oldest_message_age_seconds", "Age of the oldest undelivered message; absent when unknown."},
	gArrivalRate:     {"flowscaler_arrival_rate", "Measured arrival rate in messages per second; absent until measurable."},
	gMaxDeliveries:   {"flowscaler_max_delivery_count", "Highest delivery count among the oldest pending messages."},
	gMaxReplicas:     {"flowscaler_max_replicas", "The object's maxReplicas: the ceiling of the target."},
	gPolicyReplicas:  {"flowscaler_policy_replicas", "flowscaler's own target; differs from flowscaler_desired_replicas only in shadow mode."},
	gHintConcurrency: {"flowscaler_hint_concurrency", "Recommended per-pod concurrent-message limit."},
	gHintPrefetch:    {"flowscaler_hint_prefetch", "Recommended per-pod prefetch."},
	gCooldown:        {"flowscaler_cooldown_seconds", "Scale-down stabilisation window in effect."},
	gProcessingTime: {"flowscaler_processing_time_seconds",
		"Processing time per message (W) the replica target was computed with: measured, last good or configured."},
	gProcessingP95: {"flowscaler_processing_time_p95_seconds",
		"95th-percentile processing time per message from consumer metrics; absent when unknown."},
	gConsumptionRate: {"flowscaler_consumption_rate",
		"Messages consumed per second, from consumer metrics or stream counters; absent when unknown."},
	gFailureRate: {"flowscaler_failure_rate",
		"Messages whose processing failed per second, from consumer metrics; absent when unknown."},
	gReadyPods: {"flowscaler_ready_pods", "Ready consumer pods, from consumer metrics; absent when unknown."},
	gDeadLetter: {"flowscaler_dead_letter_messages",
		"Dead-lettered messages of the queue (Service Bus: dead-letter and transfer-dead-letter subqueues); absent when the source has none."},
	gDeadLetterRate: {"flowscaler_dead_letter_rate",
		"Growth of the dead-lettered messages per second over the rate window; absent until measurable."},
	gScheduled: {"flowscaler_scheduled_messages",
		"Messages scheduled for later delivery, never counted as backlog; absent when unknown."},
}

func (m *Metrics) observeDecision(ev Evaluation) {
	d := ev.Decision
	m.objects.update(ev.Object.Namespace, ev.Object.Name, func(v *objectValues) {
		v.set(gReplicas, float64(d.Replicas))
		v.set(gActive, b2f(d.Active))
		v.set(gDepth, ev.Reading.Depth)
		v.set(gInFlight, ev.Reading.InFlight)
		v.set(gMaxDeliveries, float64(ev.Reading.MaxDeliveries))
		v.setKnown(gOldestAge, ev.Reading.OldestAge.Seconds(), ev.Reading.OldestAge >= 0)
		v.setKnown(gArrivalRate, d.Terms.ArrivalRate, !math.IsNaN(d.Terms.ArrivalRate))
		v.set(gHintConcurrency, float64(d.Hints.Concurrency))
		v.set(gHintPrefetch, float64(d.Hints.Prefetch))
		v.set(gCooldown, d.Hints.Cooldown.Seconds())
		v.set(gMaxReplicas, float64(ev.Object.Params.MaxReplicas))
		v.set(gPolicyReplicas, float64(d.Terms.PolicyReplicas))
		v.reason = reasonClass(ev)
		observeConsumers(v, ev)
		v.setKnown(gDeadLetter, ev.Reading.DeadLetter, !math.IsNaN(ev.Reading.DeadLetter))
		v.setKnown(gDeadLetterRate, ev.DeadLetters.Rate, !math.IsNaN(ev.Reading.DeadLetter) && !math.IsNaN(ev.DeadLetters.Rate))
		v.setKnown(gScheduled, ev.Reading.Scheduled, !math.IsNaN(ev.Reading.Scheduled))
	})
}

// reasonClasses are the values of flowscaler_decision_reason's reason label:
// a fixed set, so the series count stays bounded.
var reasonClasses = []string{"scale-up", "steady", "holding", "idle", "stalled", "clamped-max", "stale"}

// reasonClass sorts a decision into one of reasonClasses, the first that applies.
func reasonClass(ev Evaluation) string {
	d := ev.Decision
	switch {
	case ev.Stale:
		return "stale"
	case d.Terms.Stalled != "":
		return "stalled"
	case !d.Active:
		return "idle"
	case d.Replicas >= ev.Object.Params.MaxReplicas && d.Terms.Raw > ev.Object.Params.MaxReplicas:
		return "clamped-max"
	case !d.Terms.HeldUntil.IsZero():
		return "holding"
	case d.Replicas > ev.Previous:
		return "scale-up"
	}
	return "steady"
}

// observeConsumers exports the consumer-metric inputs of a decision. The
// processing time is always known (configured at worst); the rest only
// when measured or last good.
func observeConsumers(v *objectValues, ev Evaluation) {
	d := ev.Decision
	v.set(gProcessingTime, d.Terms.ProcessingTime.Seconds())
	v.setKnown(gConsumptionRate, d.Terms.ConsumptionRate, !math.IsNaN(d.Terms.ConsumptionRate))
	from := fromConfigured
	if d.Terms.ProcessingFrom == fromMeasured {
		from = fromMeasured
	}
	var ci ConsumerInputs
	if ev.Consumers != nil {
		ci = *ev.Consumers
		from = ci.ProcessingTime.From
	}
	v.from = from
	v.setKnown(gProcessingP95, ci.ProcessingP95.Value, usable(ci.ProcessingP95))
	v.setKnown(gFailureRate, ci.FailureRate.Value, usable(ci.FailureRate))
	v.setKnown(gReadyPods, ci.ReadyPods.Value, usable(ci.ReadyPods))
}

func (m *Metrics) staleAnswer(o Object) {
	m.stale.WithLabelValues(o.Namespace, o.Name).Inc()
	m.objects.update(o.Namespace, o.Name, func(v *objectValues) { v.reason = "stale" })
}

func (m *Metrics) sourceFailure(o Object) {
	m.sourceErrors.WithLabelValues(o.Namespace, o.Name).Inc()
}

func (m *Metrics) forget(o Object) {
	m.objects.delete(o.Namespace, o.Name)
	l := prometheus.Labels{"namespace": o.Namespace, "scaledobject": o.Name}
	m.stale.Delete(l)
	m.sourceErrors.Delete(l)
}

// UnaryInterceptor records latency and status codes of unary calls.
func (m *Metrics) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	method := shortMethod(info.FullMethod)
	m.rpcDuration.WithLabelValues(method).Observe(time.Since(start).Seconds())
	m.rpcTotal.WithLabelValues(method, status.Code(err).String()).Inc()
	return resp, err
}

// StreamInterceptor records how streams end.
func (m *Metrics) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	err := h(srv, ss)
	m.rpcTotal.WithLabelValues(shortMethod(info.FullMethod), status.Code(err).String()).Inc()
	return err
}

func shortMethod(full string) string {
	for i := len(full) - 1; i >= 0; i-- {
		if full[i] == '/' {
			return full[i+1:]
		}
	}
	return full
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
