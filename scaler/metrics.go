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
	replicas     *prometheus.GaugeVec
	active       *prometheus.GaugeVec
	depth        *prometheus.GaugeVec
	inFlight     *prometheus.GaugeVec
	oldestAge    *prometheus.GaugeVec
	arrivalRate  *prometheus.GaugeVec
	maxDeliv     *prometheus.GaugeVec
	maxReplicas  *prometheus.GaugeVec
	policyRepl   *prometheus.GaugeVec
	reason       *prometheus.GaugeVec
	hintConc     *prometheus.GaugeVec
	hintPrefetch *prometheus.GaugeVec
	cooldown     *prometheus.GaugeVec
	// The inputs consumer metrics feed into a decision.
	processingTime  *prometheus.GaugeVec
	processingP95   *prometheus.GaugeVec
	processingFrom  *prometheus.GaugeVec
	consumptionRate *prometheus.GaugeVec
	failureRate     *prometheus.GaugeVec
	readyPods       *prometheus.GaugeVec
	// Dead-lettered and scheduled messages, for sources that count them.
	deadLetter     *prometheus.GaugeVec
	deadLetterRate *prometheus.GaugeVec
	scheduled      *prometheus.GaugeVec
	// ConfigReloads counts reloads by result ("ok" or "error").
	ConfigReloads *prometheus.CounterVec
	// ConfigLastReloadOK is 1 when the last reload attempt succeeded.
	ConfigLastReloadOK prometheus.Gauge
}

var objectLabels = []string{"namespace", "scaledobject"}

// NewMetrics creates the series and registers them on reg (nil: unregistered,
// for tests and tools that do not export).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, objectLabels)
	}
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
		replicas:    gauge("flowscaler_desired_replicas", "Replica target served to KEDA."),
		active:      gauge("flowscaler_active", "1 when visible plus in-flight work exceeds the activation depth."),
		depth:       gauge("flowscaler_queue_depth", "Visible backlog: list length or undelivered stream entries."),
		inFlight:    gauge("flowscaler_in_flight", "Delivered but unacknowledged messages (stream pending entries)."),
		oldestAge:   gauge("flowscaler_oldest_message_age_seconds", "Age of the oldest undelivered message; absent when unknown."),
		arrivalRate: gauge("flowscaler_arrival_rate", "Measured arrival rate in messages per second; absent until measurable."),
		maxDeliv:    gauge("flowscaler_max_delivery_count", "Highest delivery count among the oldest pending messages."),
		maxReplicas: gauge("flowscaler_max_replicas", "The object's maxReplicas: the ceiling of the target."),
		policyRepl:  gauge("flowscaler_policy_replicas", "flowscaler's own target; differs from flowscaler_desired_replicas only in shadow mode."),
		reason: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flowscaler_decision_reason", Help: "1 for the class of the current decision: scale-up, steady, holding, idle, stalled, clamped-max or stale.",
		}, append(objectLabels, "reason")),
		hintConc:     gauge("flowscaler_hint_concurrency", "Recommended per-pod concurrent-message limit."),
		hintPrefetch: gauge("flowscaler_hint_prefetch", "Recommended per-pod prefetch."),
		cooldown:     gauge("flowscaler_cooldown_seconds", "Scale-down stabilisation window in effect."),
		processingTime: gauge("flowscaler_processing_time_seconds",
			"Processing time per message (W) the replica target was computed with: measured, last good or configured."),
		processingP95: gauge("flowscaler_processing_time_p95_seconds",
			"95th-percentile processing time per message from consumer metrics; absent when unknown."),
		processingFrom: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flowscaler_processing_time_from",
			Help: "1 for where the processing time came from (measured, last-good or configured), 0 for the others.",
		}, append(append([]string(nil), objectLabels...), "from")),
		consumptionRate: gauge("flowscaler_consumption_rate",
			"Messages consumed per second, from consumer metrics or stream counters; absent when unknown."),
		failureRate: gauge("flowscaler_failure_rate",
			"Messages whose processing failed per second, from consumer metrics; absent when unknown."),
		readyPods: gauge("flowscaler_ready_pods", "Ready consumer pods, from consumer metrics; absent when unknown."),
		deadLetter: gauge("flowscaler_dead_letter_messages",
			"Dead-lettered messages of the queue (Service Bus: dead-letter and transfer-dead-letter subqueues); absent when the source has none."),
		deadLetterRate: gauge("flowscaler_dead_letter_rate",
			"Growth of the dead-lettered messages per second over the rate window; absent until measurable."),
		scheduled: gauge("flowscaler_scheduled_messages",
			"Messages scheduled for later delivery, never counted as backlog; absent when unknown."),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowscaler_config_reloads_total", Help: "Config reload attempts by result.",
		}, []string{"result"}),
		ConfigLastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowscaler_config_last_reload_successful", Help: "1 when the last config reload succeeded, 0 when the old config was kept.",
		}),
	}
	m.ConfigLastReloadOK.Set(1)
	if reg != nil {
		reg.MustRegister(m.rpcTotal, m.rpcDuration, m.stale, m.sourceErrors, m.replicas, m.active, m.depth,
			m.inFlight, m.oldestAge, m.arrivalRate, m.maxDeliv, m.maxReplicas, m.policyRepl, m.reason, m.hintConc, m.hintPrefetch, m.cooldown,
			m.processingTime, m.processingP95, m.processingFrom, m.consumptionRate, m.failureRate, m.readyPods,
			m.deadLetter, m.deadLetterRate, m.scheduled,
			m.ConfigReloads, m.ConfigLastReloadOK)
	}
	return m
}

func (m *Metrics) observeDecision(ev Evaluation) {
	l := prometheus.Labels{"namespace": ev.Object.Namespace, "scaledobject": ev.Object.Name}
	d := ev.Decision
	m.replicas.With(l).Set(float64(d.Replicas))
	m.active.With(l).Set(b2f(d.Active))
	m.depth.With(l).Set(ev.Reading.Depth)
	m.inFlight.With(l).Set(ev.Reading.InFlight)
	m.maxDeliv.With(l).Set(float64(ev.Reading.MaxDeliveries))
	setKnown(m.oldestAge, l, ev.Reading.OldestAge.Seconds(), ev.Reading.OldestAge >= 0)
	setKnown(m.arrivalRate, l, d.Terms.ArrivalRate, !math.IsNaN(d.Terms.ArrivalRate))
	m.hintConc.With(l).Set(float64(d.Hints.Concurrency))
	m.hintPrefetch.With(l).Set(float64(d.Hints.Prefetch))
	m.cooldown.With(l).Set(d.Hints.Cooldown.Seconds())
	m.maxReplicas.With(l).Set(float64(ev.Object.Params.MaxReplicas))
	m.policyRepl.With(l).Set(float64(d.Terms.PolicyReplicas))
	m.setReason(ev.Object, reasonClass(ev))
	m.observeConsumers(l, ev)
	setKnown(m.deadLetter, l, ev.Reading.DeadLetter, !math.IsNaN(ev.Reading.DeadLetter))
	setKnown(m.deadLetterRate, l, ev.DeadLetters.Rate, !math.IsNaN(ev.Reading.DeadLetter) && !math.IsNaN(ev.DeadLetters.Rate))
	setKnown(m.scheduled, l, ev.Reading.Scheduled, !math.IsNaN(ev.Reading.Scheduled))
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

func (m *Metrics) setReason(o Object, class string) {
	for _, c := range reasonClasses {
		m.reason.WithLabelValues(o.Namespace, o.Name, c).Set(b2f(c == class))
	}
}

// observeConsumers exports the consumer-metric inputs of a decision. The
// processing time is always known (configured at worst); the rest only
// when measured or last good.
func (m *Metrics) observeConsumers(l prometheus.Labels, ev Evaluation) {
	d := ev.Decision
	m.processingTime.With(l).Set(d.Terms.ProcessingTime.Seconds())
	setKnown(m.consumptionRate, l, d.Terms.ConsumptionRate, !math.IsNaN(d.Terms.ConsumptionRate))
	from := fromConfigured
	if d.Terms.ProcessingFrom == fromMeasured {
		from = fromMeasured
	}
	var ci ConsumerInputs
	if ev.Consumers != nil {
		ci = *ev.Consumers
		from = ci.ProcessingTime.From
	}
	for _, f := range []string{fromMeasured, fromLastGood, fromConfigured} {
		m.processingFrom.With(prometheus.Labels{"namespace": l["namespace"], "scaledobject": l["scaledobject"], "from": f}).Set(b2f(f == from))
	}
	setKnown(m.processingP95, l, ci.ProcessingP95.Value, usable(ci.ProcessingP95))
	setKnown(m.failureRate, l, ci.FailureRate.Value, usable(ci.FailureRate))
	setKnown(m.readyPods, l, ci.ReadyPods.Value, usable(ci.ReadyPods))
}

// setKnown exports a value only when it is known: an absent series is honest,
// a 0 would be a lie that alerts and dashboards believe.
func setKnown(g *prometheus.GaugeVec, l prometheus.Labels, v float64, known bool) {
	if known {
		g.With(l).Set(v)
		return
	}
	g.Delete(l)
}

func (m *Metrics) staleAnswer(o Object) {
	m.stale.WithLabelValues(o.Namespace, o.Name).Inc()
	m.setReason(o, "stale")
}

func (m *Metrics) sourceFailure(o Object) {
	m.sourceErrors.WithLabelValues(o.Namespace, o.Name).Inc()
}

func (m *Metrics) forget(o Object) {
	l := prometheus.Labels{"namespace": o.Namespace, "scaledobject": o.Name}
	for _, v := range []*prometheus.GaugeVec{m.replicas, m.active, m.depth, m.inFlight, m.oldestAge,
		m.arrivalRate, m.maxDeliv, m.maxReplicas, m.policyRepl, m.hintConc, m.hintPrefetch, m.cooldown,
		m.processingTime, m.processingP95, m.consumptionRate, m.failureRate, m.readyPods,
		m.deadLetter, m.deadLetterRate, m.scheduled} {
		v.Delete(l)
	}
	m.processingFrom.DeletePartialMatch(l)
	m.reason.DeletePartialMatch(l)
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
