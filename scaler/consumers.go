package scaler

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/flowscaler/flowscaler/policy"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

// MetricsReader reads the consumer metrics of one object; the server sees
// Prometheus through this alone.
type MetricsReader interface {
	ReadMetrics(ctx context.Context, q sources.MetricsQuery) (sources.Metrics, error)
}

// prometheusKeys are the trigger metadata keys that read Prometheus: the
// consumer metrics of any source, and the depth of `source: prometheus`.
var prometheusKeys = map[string]bool{
	"metrics":            true,
	"processingSelector": true,
	"processingQuery":    true,
	"processingP95Query": true,
	"consumptionQuery":   true,
	"failureQuery":       true,
	"readyPodsQuery":     true,
	"metricsWindow":      true,
	"processingUnit":     true,
	"depthQuery":         true,
}

// metricsQueryKeys pair each whole-query metadata key with the config
// template it replaces and the MetricsQuery field it fills.
var metricsQueryKeys = []struct {
	key      string
	template func(config.Queries) string
	field    func(*sources.MetricsQuery) *string
}{
	{"processingQuery", func(q config.Queries) string { return q.ProcessingMean }, func(m *sources.MetricsQuery) *string { return &m.ProcessingMean }},
	{"processingP95Query", func(q config.Queries) string { return q.ProcessingP95 }, func(m *sources.MetricsQuery) *string { return &m.ProcessingP95 }},
	{"consumptionQuery", func(q config.Queries) string { return q.ConsumptionRate }, func(m *sources.MetricsQuery) *string { return &m.ConsumptionRate }},
	{"failureQuery", func(q config.Queries) string { return q.FailureRate }, func(m *sources.MetricsQuery) *string { return &m.FailureRate }},
	{"readyPodsQuery", func(q config.Queries) string { return q.ReadyPods }, func(m *sources.MetricsQuery) *string { return &m.ReadyPods }},
}

// parseMetrics resolves the consumer-metrics keys into a MetricsQuery, or
// nil when the object reads none. Metrics are read when `metrics` names a
// prometheus connection, or, for `source: prometheus`, from the source's
// own connection as soon as a selector or a query is given. Each metric
// comes from the object's whole query (processingQuery, …) or else from
// the config's template rendered with processingSelector and the window.
func parseMetrics(cfg *config.Config, md map[string]string, q sources.Query) (*sources.MetricsQuery, []error) {
	var errs []error
	var given []string
	for _, k := range sortedKeys(md) {
		if prometheusKeys[k] && k != "metrics" && k != "depthQuery" {
			given = append(given, k)
		}
	}
	conn, named := md["metrics"]
	switch {
	case named:
	case q.Kind == sources.Prometheus && len(given) > 0:
		conn = q.Connection
	case len(given) > 0:
		return nil, []error{fmt.Errorf("metrics = \"\": required with %s: the name of a prometheus connection (%s)",
			strings.Join(given, ", "), connectionNames(cfg))}
	default:
		return nil, nil
	}
	c, ok := cfg.Connections[conn]
	switch {
	case conn == "":
		errs = append(errs, fmt.Errorf("metrics = \"\": must name a prometheus connection (%s)", connectionNames(cfg)))
	case !ok:
		errs = append(errs, fmt.Errorf("metrics = %q: must name a prometheus connection in flowscaler's config (%s)", conn, connectionNames(cfg)))
	case c.Type != "prometheus":
		errs = append(errs, fmt.Errorf("metrics = %q: is a %s connection: consumer metrics need a prometheus connection", conn, c.Type))
	}

	mq := &sources.MetricsQuery{Connection: conn, ProcessingUnit: cfg.Queries.Unit()}
	window := time.Duration(cfg.Queries.Window)
	if v, ok := md["metricsWindow"]; ok {
		d, err := config.ParseDuration(v)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("metricsWindow = %q: %w", v, err))
		case d < time.Second:
			errs = append(errs, fmt.Errorf("metricsWindow = %q: must be >= 1s", v))
		default:
			window = d
		}
	}
	if v, ok := md["processingUnit"]; ok {
		u, err := config.ParseProcessingUnit(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("processingUnit = %q: %w", v, err))
		}
		mq.ProcessingUnit = u
	}
	rawSel := md["processingSelector"]
	sel, selErr := config.CanonicalSelector(rawSel)
	if rawSel != "" && selErr != nil {
		errs = append(errs, fmt.Errorf("processingSelector = %q: %w", rawSel, selErr))
	}
	var needSelector []string
	for _, k := range metricsQueryKeys {
		if whole := md[k.key]; whole != "" {
			if err := config.CheckPromQL(whole); err != nil {
				errs = append(errs, fmt.Errorf("%s = %q: %w", k.key, whole, err))
			}
			*k.field(mq) = whole
			continue
		}
		tmpl := k.template(cfg.Queries)
		switch {
		case tmpl == "":
		case rawSel == "":
			needSelector = append(needSelector, k.key)
		case selErr == nil:
			expr, err := config.RenderQuery(tmpl, sel, window)
			if err != nil {
				errs = append(errs, fmt.Errorf("processingSelector = %q: the config's template for %s %w", rawSel, k.key, err))
			}
			*k.field(mq) = expr
		}
	}
	if len(needSelector) > 0 {
		errs = append(errs, fmt.Errorf("processingSelector = \"\": required to read consumer metrics: label matchers such as service=\"order-processor\" that select the consumers' series (or give %s as whole queries)",
			strings.Join(needSelector, ", ")))
	}
	return mq, errs
}

// The ways a consumer metric can enter a decision.
const (
	fromMeasured   = "measured"
	fromLastGood   = "last-good"
	fromConfigured = "configured"
	fromUnknown    = "unknown"
)

// MetricInput is one consumer metric as a decision used it.
type MetricInput struct {
	// Value is seconds for processing times, per second for rates, pods for
	// ready pods; NaN when unknown.
	Value float64
	// From is "measured", "last-good", "configured" (processing time only)
	// or "unknown"; "" when the object does not read this metric.
	From string
	// Age is how old a last-good value was when it was used.
	Age time.Duration
	// Why says why the value is not freshly measured; "" when it is.
	Why string
}

// ConsumerInputs are the consumer metrics behind one decision.
type ConsumerInputs struct {
	Source          string // e.g. "prometheus monitoring"
	ProcessingTime  MetricInput
	ProcessingP95   MetricInput
	ConsumptionRate MetricInput
	FailureRate     MetricInput
	ReadyPods       MetricInput
}

// lastGood is a metric's latest fresh value and when the server saw it.
type lastGood struct {
	value float64
	at    time.Time
	ok    bool
}

// consumerMemory is what an object remembers of its consumer metrics.
type consumerMemory map[sources.Metric]lastGood

// merge turns one read of consumer metrics into the inputs of a decision.
// A metric read fresh is used and remembered. One that could not be read
// is replaced by its last good value while that is at most staleAfter old;
// after that the processing time falls back to configured and every other
// metric is unknown. Nothing unknown ever becomes 0.
func (mem consumerMemory) merge(q sources.MetricsQuery, m sources.Metrics, readErr error, now time.Time, staleAfter, configured time.Duration) ConsumerInputs {
	ci := ConsumerInputs{Source: q.String()}
	for _, x := range []struct {
		metric sources.Metric
		asked  bool
		fresh  float64 // NaN when unknown
		out    *MetricInput
	}{
		{sources.ProcessingMean, q.ProcessingMean != "", durationSeconds(m.ProcessingMean), &ci.ProcessingTime},
		{sources.ProcessingP95, q.ProcessingP95 != "", durationSeconds(m.ProcessingP95), &ci.ProcessingP95},
		{sources.ConsumptionRate, q.ConsumptionRate != "", m.ConsumptionRate, &ci.ConsumptionRate},
		{sources.FailureRate, q.FailureRate != "", m.FailureRate, &ci.FailureRate},
		{sources.ReadyPods, q.ReadyPods != "", m.ReadyPods, &ci.ReadyPods},
	} {
		in := MetricInput{Value: math.NaN()}
		err := readErr
		if err == nil {
			err = m.Errors[x.metric]
		}
		switch {
		case !x.asked:
			if x.metric == sources.ProcessingMean {
				in = MetricInput{Value: configured.Seconds(), From: fromConfigured}
			}
		case err == nil && !math.IsNaN(x.fresh):
			in = MetricInput{Value: x.fresh, From: fromMeasured}
			mem[x.metric] = lastGood{value: x.fresh, at: now, ok: true}
		default:
			if err == nil {
				err = errors.New("no value")
			}
			why := whyUnknown(x.metric, err)
			if lg := mem[x.metric]; lg.ok && now.Sub(lg.at) <= staleAfter {
				in = MetricInput{Value: lg.value, From: fromLastGood, Age: now.Sub(lg.at), Why: why}
			} else if x.metric == sources.ProcessingMean {
				in = MetricInput{Value: configured.Seconds(), From: fromConfigured, Why: why}
			} else {
				in = MetricInput{Value: math.NaN(), From: fromUnknown, Why: why}
			}
		}
		*x.out = in
	}
	return ci
}

// whyUnknown is the cause of a missing metric in words that point at the
// likely fix.
func whyUnknown(metric sources.Metric, err error) string {
	switch {
	case errors.Is(err, sources.ErrNotANumber) && (metric == sources.ProcessingMean || metric == sources.ProcessingP95):
		return fmt.Sprintf("%s: no messages processed in the window", metric)
	case errors.Is(err, sources.ErrNoSeries):
		return fmt.Sprintf("%s: query returned no series (does processingSelector match the consumers' series?)", metric)
	}
	return fmt.Sprintf("%s: %v", metric, err)
}

func durationSeconds(d time.Duration) float64 {
	if d < 0 {
		return math.NaN()
	}
	return d.Seconds()
}

// apply writes the usable consumer metrics (measured or last good) into
// the policy's inputs; the rest stay unknown. The configured processing
// time is not written: the policy falls back to its own
// Params.ProcessingTime, which is the same value. Ready pods are whole
// pods, and 0 is the policy's "unknown".
func (ci ConsumerInputs) apply(in *policy.Inputs) {
	if usable(ci.ProcessingTime) {
		in.ProcessingTime = secondsDuration(ci.ProcessingTime.Value)
	}
	if usable(ci.ProcessingP95) {
		in.ProcessingTimeP95 = secondsDuration(ci.ProcessingP95.Value)
	}
	if usable(ci.ConsumptionRate) {
		in.ConsumptionRate = ci.ConsumptionRate.Value
	}
	if usable(ci.FailureRate) {
		in.FailureRate = ci.FailureRate.Value
	}
	if usable(ci.ReadyPods) && ci.ReadyPods.Value >= 1 {
		in.ReadyReplicas = int(math.Min(math.Round(ci.ReadyPods.Value), math.MaxInt32))
	}
}

func usable(m MetricInput) bool { return m.From == fromMeasured || m.From == fromLastGood }

func secondsDuration(s float64) time.Duration {
	return time.Duration(math.Round(s * float64(time.Second)))
}

// note is what the Reason adds about the consumer metrics: where a
// processing time that was not freshly measured came from, and failures.
func (ci ConsumerInputs) note() string {
	var parts []string
	switch p := ci.ProcessingTime; p.From {
	case fromLastGood:
		parts = append(parts, fmt.Sprintf("processing time %v is the last good reading, %s old (%s)",
			secondsDuration(p.Value), formatDuration(p.Age), p.Why))
	case fromConfigured:
		if p.Why != "" {
			parts = append(parts, fmt.Sprintf("processing time from configured %v: %s", secondsDuration(p.Value), p.Why))
		}
	}
	if f := ci.FailureRate; usable(f) && f.Value > 0 {
		parts = append(parts, fmt.Sprintf("consumers failing %.1f msg/s", f.Value))
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, "; ")
}
