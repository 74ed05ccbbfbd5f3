package sources

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	_ InstantQuerier = (*coalescedInstant)(nil)
	_ InstantQuerier = (*instrumentedInstant)(nil)
)

// CoalesceInstant wraps q so that each distinct PromQL (connection and
// expression) is evaluated at most once per c.TTL however many ScaledObjects
// ask, with the concurrency, deadline and grace rules of Coalesce. Every answer
// Prometheus gives is cached, empty or NaN ones included: those are
// answers, and asking again within c.TTL would get the same. Failures are
// not cached.
func CoalesceInstant(q InstantQuerier, c Cache, now func() time.Time) InstantQuerier {
	return &coalescedInstant{shared: newShared(q.Instant, func(p PromQL) string {
		return lengthPrefixed(p.Connection, p.Expr)
	}, c, now)}
}

type coalescedInstant struct {
	shared *shared[PromQL, Sample]
}

func (c *coalescedInstant) Instant(ctx context.Context, q PromQL) (Sample, error) {
	return c.shared.do(ctx, q)
}

// InstrumentInstant wraps q so that every query is timed and counted by
// result, on reg (flowscaler's own registry). Labels are the connection
// (from flowscaler's config, so bounded) and a result from a fixed set:
// ok, no_series, several_series, nan, out_of_range or error. Expressions
// are never labels. Instrumenting twice on one registry shares the series.
func InstrumentInstant(q InstantQuerier, reg prometheus.Registerer) (InstantQuerier, error) {
	if reg == nil {
		return nil, errors.New("instrument prometheus querier: nil registerer")
	}
	dur, err := registerOrExisting(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "flowscaler_prometheus_query_duration_seconds",
		Help:    "Time to evaluate one instant query on Prometheus, including failed ones.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"connection"}))
	if err != nil {
		return nil, err
	}
	total, err := registerOrExisting(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowscaler_prometheus_queries_total",
		Help: "Instant queries by result: ok, no_series, several_series, nan, out_of_range or error.",
	}, []string{"connection", "result"}))
	if err != nil {
		return nil, err
	}
	return &instrumentedInstant{next: q, duration: dur, total: total}, nil
}

type instrumentedInstant struct {
	next     InstantQuerier
	duration *prometheus.HistogramVec
	total    *prometheus.CounterVec
}

func (i *instrumentedInstant) Instant(ctx context.Context, q PromQL) (Sample, error) {
	start := time.Now()
	s, err := i.next.Instant(ctx, q)
	conn := q.Connection
	if errors.Is(err, ErrUnknownConnection) {
		conn = unconfiguredLabel
	}
	i.duration.WithLabelValues(conn).Observe(time.Since(start).Seconds())
	i.total.WithLabelValues(conn, queryResult(s, err)).Inc()
	return s, err
}

// queryResult is the bounded result label of one query.
func queryResult(s Sample, err error) string {
	if err != nil {
		return "error"
	}
	_, err = nonNegative(s)
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNoSeries):
		return "no_series"
	case errors.Is(err, ErrSeveralSeries):
		return "several_series"
	case errors.Is(err, ErrNotANumber):
		return "nan"
	}
	return "out_of_range"
}
