package sources

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var _ Reader = (*instrumented)(nil)

// Instrument wraps r so that every read is timed and every failed read
// counted, on reg (flowscaler's own registry, never the global one).
//
// Labels are the Query's kind and connection only: both come from
// flowscaler's config and so are bounded, while key and group names come
// from every ScaledObject in the cluster and are not.
//
// Instrumenting two Readers on one registry shares the metrics rather than
// failing, so a reader rebuilt on config reload keeps its series.
func Instrument(r Reader, reg prometheus.Registerer) (Reader, error) {
	if reg == nil {
		return nil, errors.New("instrument source reader: nil registerer")
	}
	dur, err := registerOrExisting(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "flowscaler_source_read_duration_seconds",
		Help: "Time to read one queue from its broker, including failed reads.",
		// Reads are sub-millisecond on a local broker and bounded by the
		// KEDA poll timeout (seconds) on a slow one.
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"kind", "connection"}))
	if err != nil {
		return nil, err
	}
	errs, err := registerOrExisting(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowscaler_source_read_errors_total",
		Help: "Queue reads that failed.",
	}, []string{"kind", "connection"}))
	if err != nil {
		return nil, err
	}
	return &instrumented{next: r, duration: dur, errors: errs}, nil
}

// registerOrExisting registers c, or returns the identical collector that is
// already registered.
func registerOrExisting[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	var zero C
	return zero, fmt.Errorf("instrument source reader: %w", err)
}

// unconfiguredLabel is the connection label of reads naming a connection
// that is not configured; the parentheses keep it apart from plausible
// connection names.
const unconfiguredLabel = "(unconfigured)"

type instrumented struct {
	next     Reader
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
}

func (i *instrumented) Read(ctx context.Context, q Query) (Reading, error) {
	start := time.Now()
	rd, err := i.next.Read(ctx, q)
	conn := q.Connection
	if errors.Is(err, ErrUnknownConnection) {
		// The name comes from a ScaledObject, not our config: keep it out
		// of the label set so typos cannot grow it without bound.
		conn = unconfiguredLabel
	}
	i.duration.WithLabelValues(string(q.Kind), conn).Observe(time.Since(start).Seconds())
	if err != nil {
		i.errors.WithLabelValues(string(q.Kind), conn).Inc()
	}
	return rd, err
}
