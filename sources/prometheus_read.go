package sources

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Prometheus is the Kind of a queue whose depth only an exporter can see
// (RabbitMQ, SQS or Kafka exporters): Query.Name is a PromQL expression
// that evaluates to the backlog in messages.
const Prometheus Kind = "prometheus"

var _ Reader = (*PrometheusReader)(nil)

// Metric names one consumer metric; the names are those of the config's
// query templates.
type Metric string

const (
	ProcessingMean  Metric = "processingMean"
	ProcessingP95   Metric = "processingP95"
	ConsumptionRate Metric = "consumptionRate"
	FailureRate     Metric = "failureRate"
	ReadyPods       Metric = "readyPods"
)

// MetricsQuery names the consumer metrics of one ScaledObject: rendered
// PromQL per metric ("" when not read) on one connection. It is comparable,
// and each expression is coalesced on its own, so objects that share a
// selector share every query.
type MetricsQuery struct {
	Connection string
	// ProcessingMean and ProcessingP95 evaluate to a processing time per
	// message in ProcessingUnit (milliseconds for the seed's histogram).
	ProcessingMean string
	ProcessingP95  string
	// ConsumptionRate and FailureRate evaluate to messages per second.
	ConsumptionRate string
	FailureRate     string
	// ReadyPods evaluates to the number of ready consumer pods.
	ReadyPods string
	// ProcessingUnit is the duration of one unit of the processing
	// queries' result; 0 means seconds.
	ProcessingUnit time.Duration
}

// String is the human form used in logs, e.g. "prometheus monitoring".
func (q MetricsQuery) String() string { return "prometheus " + q.Connection }

type metricExpr struct {
	metric Metric
	expr   string
}

// exprs lists the metrics that are read, in a fixed order.
func (q MetricsQuery) exprs() []metricExpr {
	var out []metricExpr
	for _, e := range []metricExpr{
		{ProcessingMean, q.ProcessingMean},
		{ProcessingP95, q.ProcessingP95},
		{ConsumptionRate, q.ConsumptionRate},
		{FailureRate, q.FailureRate},
		{ReadyPods, q.ReadyPods},
	} {
		if e.expr != "" {
			out = append(out, e)
		}
	}
	return out
}

// Metrics is one observation of a queue's consumers. Unknown values are
// NaN (rates, counts) or negative (durations), never 0, and Errors says why
// for every metric that was asked for and is unknown.
type Metrics struct {
	// At is when the metrics were read (the reader's clock).
	At time.Time
	// ProcessingMean is the mean processing time per message over the window; < 0 when unknown.
	ProcessingMean time.Duration
	// ProcessingP95 is the 95th percentile processing time; < 0 when unknown.
	ProcessingP95 time.Duration
	// ConsumptionRate is messages processed per second; NaN when unknown.
	ConsumptionRate float64
	// FailureRate is messages failed per second; NaN when unknown.
	FailureRate float64
	// ReadyPods is the number of ready consumer pods; NaN when unknown.
	ReadyPods float64
	// Errors holds, per metric asked for and unknown, why.
	Errors map[Metric]error
}

// PrometheusReader turns instant queries into queue readings (Kind
// Prometheus) and consumer metrics.
type PrometheusReader struct {
	q   InstantQuerier
	now func() time.Time
}

// NewPrometheusReader reads through q (usually instrumented and coalesced);
// now stamps Metrics.At and defaults to time.Now.
func NewPrometheusReader(q InstantQuerier, now func() time.Time) *PrometheusReader {
	if now == nil {
		now = time.Now
	}
	return &PrometheusReader{q: q, now: now}
}

// Read implements Reader for Kind Prometheus: Depth is the value of the
// expression in q.Name. A depth Prometheus cannot give (no series, NaN,
// several series, negative) is an error, never 0. In-flight work is not
// visible to the expression (0: count unacknowledged messages in it if
// they matter), the oldest age is unknown and there are no counters.
func (r *PrometheusReader) Read(ctx context.Context, q Query) (Reading, error) {
	if q.Kind != Prometheus {
		return Reading{}, fmt.Errorf("%s: kind %q is not %s", q, q.Kind, Prometheus)
	}
	s, err := r.q.Instant(ctx, PromQL{Connection: q.Connection, Expr: q.Name})
	if err != nil {
		return Reading{}, err
	}
	depth, err := nonNegative(s)
	if err != nil {
		return Reading{}, fmt.Errorf("prometheus %s: depth query %w", q.Connection, err)
	}
	return Reading{
		At:                s.At,
		Depth:             depth,
		OldestAge:         -1,
		OldestPendingIdle: -1,
		ProducedTotal:     math.NaN(),
		ConsumedTotal:     math.NaN(),
		DeadLetter:        math.NaN(),
		Scheduled:         math.NaN(),
	}, nil
}

// ReadMetrics runs q's queries concurrently and reports each metric or why
// it is unknown. The error is reserved for a query that could not be
// attempted at all (an unknown connection); an unreachable Prometheus
// shows as the same error on every metric.
func (r *PrometheusReader) ReadMetrics(ctx context.Context, q MetricsQuery) (Metrics, error) {
	m := Metrics{
		ProcessingMean:  -1,
		ProcessingP95:   -1,
		ConsumptionRate: math.NaN(),
		FailureRate:     math.NaN(),
		ReadyPods:       math.NaN(),
		Errors:          map[Metric]error{},
	}
	exprs := q.exprs()
	values := make([]float64, len(exprs))
	errs := make([]error, len(exprs))
	var wg sync.WaitGroup
	for i, e := range exprs {
		wg.Go(func() {
			s, err := r.q.Instant(ctx, PromQL{Connection: q.Connection, Expr: e.expr})
			if err == nil {
				values[i], err = nonNegative(s)
				if err != nil {
					err = fmt.Errorf("query %w", err)
				}
			}
			errs[i] = err
		})
	}
	wg.Wait()
	unit := q.ProcessingUnit
	if unit <= 0 {
		unit = time.Second
	}
	for i, e := range exprs {
		v, err := values[i], errs[i]
		if errors.Is(err, ErrUnknownConnection) {
			return Metrics{}, err
		}
		if err == nil && (e.metric == ProcessingMean || e.metric == ProcessingP95) && v == 0 {
			// A processing time of 0 is no measurement: no real consumer is
			// free, and W = 0 would erase the throughput term.
			err = fmt.Errorf("query %w: 0 is not a processing time", ErrOutOfRange)
		}
		if err != nil {
			m.Errors[e.metric] = err
			continue
		}
		switch e.metric {
		case ProcessingMean:
			m.ProcessingMean = scaleDuration(v, unit)
		case ProcessingP95:
			m.ProcessingP95 = scaleDuration(v, unit)
		case ConsumptionRate:
			m.ConsumptionRate = v
		case FailureRate:
			m.FailureRate = v
		case ReadyPods:
			m.ReadyPods = v
		}
	}
	m.At = r.now()
	return m, nil
}

// nonNegative is s's single value when it is finite and >= 0.
func nonNegative(s Sample) (float64, error) {
	v, err := s.Single()
	switch {
	case err != nil:
		return math.NaN(), err
	case math.IsInf(v, 0) || v < 0:
		return math.NaN(), fmt.Errorf("%w: %v, want a finite value >= 0", ErrOutOfRange, v)
	}
	return v, nil
}

// scaleDuration is v units as a Duration, rounded to the nanosecond and
// capped at the largest Duration.
func scaleDuration(v float64, unit time.Duration) time.Duration {
	ns := math.Round(v * float64(unit))
	if ns >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(ns)
}
