package scaler

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

// promConfig has a redis connection "local", a prometheus connection
// "monitoring" and the default query templates.
func promConfig(t testing.TB) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(`
connections:
  local: {type: redis, url: "redis://127.0.0.1:1"}
  monitoring: {type: prometheus, url: "http://127.0.0.1:1"}
`), func(string) (string, bool) { return "", false }, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// combined is a redis-stream object that reads its consumers' metrics.
func combined(extra ...string) map[string]string {
	return stream(append([]string{"metrics", "monitoring", "processingSelector", `service="order-processor"`}, extra...)...)
}

func TestParseMetrics(t *testing.T) {
	cfg := promConfig(t)
	render := func(tmpl, sel string, window time.Duration) string {
		t.Helper()
		s, err := config.RenderQuery(tmpl, sel, window)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	q := cfg.Queries
	seed := func(sel string, window time.Duration) *sources.MetricsQuery {
		return &sources.MetricsQuery{
			Connection:      "monitoring",
			ProcessingMean:  render(q.ProcessingMean, sel, window),
			ProcessingP95:   render(q.ProcessingP95, sel, window),
			ConsumptionRate: render(q.ConsumptionRate, sel, window),
			FailureRate:     render(q.FailureRate, sel, window),
			ProcessingUnit:  time.Millisecond,
		}
	}
	const sel = `service="order-processor"`
	tests := []struct {
		name      string
		md        map[string]string
		wantQuery sources.Query
		want      *sources.MetricsQuery
	}{
		{
			name:      "queue only",
			md:        stream(),
			wantQuery: sources.Query{Kind: sources.RedisStream, Connection: "local", Name: "orders", Group: "workers"},
		},
		{
			name:      "redis stream plus the seed's metrics",
			md:        combined(),
			wantQuery: sources.Query{Kind: sources.RedisStream, Connection: "local", Name: "orders", Group: "workers"},
			want:      seed(sel, 2*time.Minute),
		},
		{
			name:      "a selector written differently shares the queries",
			md:        combined("processingSelector", ` service = "order-processor" `),
			wantQuery: sources.Query{Kind: sources.RedisStream, Connection: "local", Name: "orders", Group: "workers"},
			want:      seed(sel, 2*time.Minute),
		},
		{
			name:      "window and unit overrides",
			md:        combined("metricsWindow", "5m", "processingUnit", "s"),
			wantQuery: sources.Query{Kind: sources.RedisStream, Connection: "local", Name: "orders", Group: "workers"},
			want: func() *sources.MetricsQuery {
				m := seed(sel, 5*time.Minute)
				m.ProcessingUnit = time.Second
				return m
			}(),
		},
		{
			name: "whole queries need no selector",
			md: stream("metrics", "monitoring",
				"processingQuery", "avg(job:processing_ms:mean2m)", "processingP95Query", "max(job:processing_ms:p95)",
				"consumptionQuery", "sum(job:consumed:rate2m)", "failureQuery", "sum(job:failed:rate2m)", "readyPodsQuery", `sum(kube_deployment_status_replicas_ready{deployment="order-processor"})`),
			wantQuery: sources.Query{Kind: sources.RedisStream, Connection: "local", Name: "orders", Group: "workers"},
			want: &sources.MetricsQuery{
				Connection: "monitoring", ProcessingMean: "avg(job:processing_ms:mean2m)", ProcessingP95: "max(job:processing_ms:p95)",
				ConsumptionRate: "sum(job:consumed:rate2m)", FailureRate: "sum(job:failed:rate2m)",
				ReadyPods: `sum(kube_deployment_status_replicas_ready{deployment="order-processor"})`, ProcessingUnit: time.Millisecond,
			},
		},
		{
			name:      "depth from an exporter, metrics from the same prometheus",
			md:        map[string]string{"source": "prometheus", "connection": "monitoring", "depthQuery": `sum(rabbitmq_queue_messages_ready{queue="orders"})`, "processingSelector": sel},
			wantQuery: sources.Query{Kind: sources.Prometheus, Connection: "monitoring", Name: `sum(rabbitmq_queue_messages_ready{queue="orders"})`},
			want:      seed(sel, 2*time.Minute),
		},
		{
			name:      "depth from an exporter alone",
			md:        map[string]string{"source": "prometheus", "connection": "monitoring", "depthQuery": `sum(rabbitmq_queue_messages_ready{queue="orders"})`},
			wantQuery: sources.Query{Kind: sources.Prometheus, Connection: "monitoring", Name: `sum(rabbitmq_queue_messages_ready{queue="orders"})`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj, err := ParseObject(cfg, "shop", "orders", tt.md)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantQuery, obj.Query); diff != "" {
				t.Errorf("query (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, obj.Metrics); diff != "" {
				t.Errorf("metrics (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseMetricsErrors(t *testing.T) {
	cfg := promConfig(t)
	tests := []struct {
		name string
		md   map[string]string
		want []string
	}{
		{"selector that is not matchers", combined("processingSelector", `service="a"} or vector(1) or up{x="y"`), []string{
			`processingSelector = "service=\"a\"} or vector(1) or up{x=\"y\"": must be PromQL label matchers like service="order-processor": 1:15: parse error: unexpected <op:or>`}},
		{"selector with a metric name", combined("processingSelector", `__name__="up"`), []string{
			`processingSelector = "__name__=\"up\"": must not match the metric name`}},
		{"whole query that does not parse", combined("processingQuery", "sum(rate(x[2m])"), []string{
			`processingQuery = "sum(rate(x[2m])": does not parse as PromQL: 1:16: parse error: unclosed left parenthesis`}},
		{"whole query that is a range vector", combined("consumptionQuery", "x[2m]"), []string{
			`consumptionQuery = "x[2m]": must evaluate to an instant vector or a scalar, not a range vector`}},
		{"metrics on a redis connection", combined("metrics", "local"), []string{
			`metrics = "local": is a redis connection: consumer metrics need a prometheus connection`}},
		{"metrics on an unknown connection", combined("metrics", "thanos"), []string{
			`metrics = "thanos": must name a prometheus connection in flowscaler's config (configured: local, monitoring)`}},
		{"selector without metrics", stream("processingSelector", `service="a"`), []string{
			`metrics = "": required with processingSelector: the name of a prometheus connection (configured: local, monitoring)`}},
		{"metrics without selector", stream("metrics", "monitoring"), []string{
			`processingSelector = "": required to read consumer metrics: label matchers such as service="order-processor" that select the consumers' series (or give processingQuery, processingP95Query, consumptionQuery, failureQuery as whole queries)`}},
		{"bad window and unit", combined("metricsWindow", "500ms", "processingUnit", "minutes"), []string{
			`metricsWindow = "500ms": must be >= 1s`, `processingUnit = "minutes": must be one of s, ms, us`}},
		{"prometheus source without depthQuery", map[string]string{"source": "prometheus", "connection": "monitoring"}, []string{
			`depthQuery = "": required when source is prometheus`}},
		{"depthQuery that does not parse", map[string]string{"source": "prometheus", "connection": "monitoring", "depthQuery": "sum(("}, []string{
			`depthQuery = "sum((": does not parse as PromQL`}},
		{"prometheus source on a redis connection", map[string]string{"source": "prometheus", "connection": "local", "depthQuery": "vector(1)"}, []string{
			`connection = "local": is a redis connection: source prometheus needs a prometheus connection`}},
		{"depthQuery on a redis source", stream("depthQuery", "vector(1)"), []string{
			`depthQuery = "vector(1)": not used by source redis-stream`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseObject(cfg, "shop", "orders", tt.md)
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestBadMetricsMetadataIsInvalidArgument(t *testing.T) {
	srv, _, _, _ := newMetricsTestServer(t)
	_, err := metricValue(t, srv, ref(combined("processingQuery", "sum(rate(x[2m])")))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("code = %v (%v), want InvalidArgument", status.Code(err), err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, `processingQuery = "sum(rate(x[2m])": does not parse as PromQL`) {
		t.Errorf("message %q does not name the key, the value and the rule", msg)
	}
}

// scriptedMetrics is a MetricsReader whose answers the test sets: the
// tests are about the server's own fallback rules, not about Prometheus.
type scriptedMetrics struct {
	mu    sync.Mutex
	m     sources.Metrics
	err   error
	calls int
}

func (s *scriptedMetrics) ReadMetrics(_ context.Context, _ sources.MetricsQuery) (sources.Metrics, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return s.m, s.err
}

// set makes every metric known; a negative mean makes every metric fail
// with cause instead.
func (s *scriptedMetrics) set(mean time.Duration, consumption, failures float64, cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = nil
	if cause != nil {
		s.m = sources.Metrics{ProcessingMean: -1, ProcessingP95: -1, ConsumptionRate: math.NaN(), FailureRate: math.NaN(), ReadyPods: math.NaN(),
			Errors: map[sources.Metric]error{sources.ProcessingMean: cause, sources.ProcessingP95: cause, sources.ConsumptionRate: cause, sources.FailureRate: cause}}
		return
	}
	s.m = sources.Metrics{ProcessingMean: mean, ProcessingP95: 2 * mean, ConsumptionRate: consumption, FailureRate: failures, ReadyPods: math.NaN(), Errors: map[sources.Metric]error{}}
}

func newMetricsTestServer(t *testing.T) (*Server, *scripted, *scriptedMetrics, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)}
	rd := &scripted{now: clk.Now}
	rd.set(0, nil)
	mr := &scriptedMetrics{}
	mr.set(time.Second, 1, 0, nil)
	srv, err := New(Options{Reader: rd, MetricsReader: mr, Config: promConfig(t), Metrics: NewMetrics(prometheus.NewPedanticRegistry()), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return srv, rd, mr, clk
}

// A Prometheus outage never fails the call nor drops the target: the last
// good processing time is used for staleAfter, then the configured one,
// and the Reason says which and why at every step.
func TestMetricsOutageFallsBackAndSaysSo(t *testing.T) {
	srv, rd, mr, clk := newMetricsTestServer(t)
	// The drain term is 40 ÷ 10s × W slots; processingTime 2s is the fallback.
	r := ref(combined("processingTime", "2s", "targetAge", "10s", "concurrency", "1", "scaleDownCooldown", "0s"))
	rd.set(40, nil)
	// Consumption unknown, so λ is only the depth's growth (0) and the
	// target is the drain term alone.
	mr.set(500*time.Millisecond, math.NaN(), 0, nil)

	type step struct {
		advance      time.Duration
		wantDrain    float64
		wantFrom     string
		wantInReason []string
	}
	unreachable := errors.New("prometheus monitoring unreachable: dial tcp 127.0.0.1:9090: connect: connection refused")
	steps := []struct {
		name string
		set  func()
		step
	}{
		{"measured", func() {}, step{0, 2, fromMeasured, []string{"processing time 500ms measured"}}},
		{"outage: last good", func() { mr.set(0, 0, 0, unreachable) }, step{time.Second, 2, fromLastGood, []string{
			"processing time 500ms is the last good reading, 1s old (processingMean: prometheus monitoring unreachable: dial tcp 127.0.0.1:9090: connect: connection refused)"}}},
		{"still last good at staleAfter", func() {}, step{59 * time.Second, 2, fromLastGood, []string{"500ms is the last good reading, 1m0s old"}}},
		{"configured after staleAfter", func() {}, step{time.Millisecond, 8, fromConfigured, []string{
			"processing time from configured 2s: processingMean: prometheus monitoring unreachable"}}},
		{"back", func() { mr.set(250*time.Millisecond, math.NaN(), 0, nil) }, step{time.Second, 1, fromMeasured, []string{"processing time 250ms measured"}}},
	}
	for _, s := range steps {
		s.set()
		clk.Add(s.advance)
		ev, err := srv.Evaluate(context.Background(), r)
		if err != nil {
			t.Fatalf("%s: %v; a metrics failure must not fail the call", s.name, err)
		}
		if got := ev.Decision.Terms.DrainSlots; math.Abs(got-s.wantDrain) > 1e-9 {
			t.Errorf("%s: drain slots = %v, want %v (reason %q)", s.name, got, s.wantDrain, ev.Decision.Reason)
		}
		if ev.Decision.Replicas < 1 {
			t.Errorf("%s: replicas = %d with 40 messages waiting (reason %q)", s.name, ev.Decision.Replicas, ev.Decision.Reason)
		}
		if ev.Consumers == nil || ev.Consumers.ProcessingTime.From != s.wantFrom {
			t.Errorf("%s: processing time from %+v, want %q", s.name, ev.Consumers, s.wantFrom)
		}
		for _, w := range s.wantInReason {
			if !strings.Contains(ev.Decision.Reason, w) {
				t.Errorf("%s: reason %q does not contain %q", s.name, ev.Decision.Reason, w)
			}
		}
	}
}

func TestMetricsMissingValues(t *testing.T) {
	tests := []struct {
		name      string
		metrics   sources.Metrics
		err       error
		wantW     string
		wantNote  string
		wantInput func(t *testing.T, ci ConsumerInputs)
	}{
		{
			name: "nothing processed in the window",
			metrics: sources.Metrics{ProcessingMean: -1, ProcessingP95: -1, ConsumptionRate: 0, FailureRate: 0, ReadyPods: math.NaN(),
				Errors: map[sources.Metric]error{sources.ProcessingMean: fmt.Errorf("query %w", sources.ErrNotANumber), sources.ProcessingP95: fmt.Errorf("query %w", sources.ErrNotANumber)}},
			wantW:    "2s",
			wantNote: "processing time from configured 2s: processingMean: no messages processed in the window",
			wantInput: func(t *testing.T, ci ConsumerInputs) {
				if ci.ConsumptionRate.Value != 0 || ci.ConsumptionRate.From != fromMeasured {
					t.Errorf("consumption %+v, want a measured 0", ci.ConsumptionRate)
				}
			},
		},
		{
			name: "selector matches nothing",
			metrics: sources.Metrics{ProcessingMean: -1, ProcessingP95: -1, ConsumptionRate: math.NaN(), FailureRate: math.NaN(), ReadyPods: math.NaN(),
				Errors: map[sources.Metric]error{sources.ProcessingMean: sources.ErrNoSeries, sources.ProcessingP95: sources.ErrNoSeries, sources.ConsumptionRate: sources.ErrNoSeries, sources.FailureRate: sources.ErrNoSeries}},
			wantW:    "2s",
			wantNote: "processingMean: query returned no series (does processingSelector match the consumers' series?)",
			wantInput: func(t *testing.T, ci ConsumerInputs) {
				if !math.IsNaN(ci.ConsumptionRate.Value) || ci.ConsumptionRate.From != fromUnknown {
					t.Errorf("consumption %+v, want unknown, never 0", ci.ConsumptionRate)
				}
			},
		},
		{
			name:     "failing consumers",
			metrics:  sources.Metrics{ProcessingMean: 400 * time.Millisecond, ProcessingP95: time.Second, ConsumptionRate: 10, FailureRate: 2.5, ReadyPods: 3, Errors: map[sources.Metric]error{}},
			wantW:    "400ms",
			wantNote: "consumers failing 2.5 msg/s",
			wantInput: func(t *testing.T, ci ConsumerInputs) {
				if ci.ProcessingP95.Value != 1 || ci.FailureRate.Value != 2.5 {
					t.Errorf("p95 %+v failures %+v", ci.ProcessingP95, ci.FailureRate)
				}
			},
		},
		{
			name:     "unknown connection",
			err:      sources.ErrUnknownConnection,
			wantW:    "2s",
			wantNote: "processing time from configured 2s: processingMean: connection is not configured",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, rd, mr, _ := newMetricsTestServer(t)
			rd.set(40, nil)
			mr.mu.Lock()
			mr.m, mr.err = tt.metrics, tt.err
			mr.mu.Unlock()
			ev, err := srv.Evaluate(context.Background(), ref(combined("processingTime", "2s", "targetAge", "10s", "concurrency", "1")))
			if err != nil {
				t.Fatal(err)
			}
			if got := ev.Decision.Terms.ProcessingTime.String(); got != tt.wantW {
				t.Errorf("W = %s, want %s", got, tt.wantW)
			}
			if !strings.Contains(ev.Decision.Reason, tt.wantNote) {
				t.Errorf("reason %q does not contain %q", ev.Decision.Reason, tt.wantNote)
			}
			if tt.wantInput != nil {
				tt.wantInput(t, *ev.Consumers)
			}
		})
	}
}

func TestNoMetricsReaderFallsBack(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)}
	rd := &scripted{now: clk.Now}
	rd.set(40, nil)
	srv, err := New(Options{Reader: rd, Config: promConfig(t), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := srv.Evaluate(context.Background(), ref(combined("processingTime", "2s")))
	if err != nil {
		t.Fatal(err)
	}
	if want := "processing time from configured 2s: processingMean: no consumer metrics reader configured"; !strings.Contains(ev.Decision.Reason, want) {
		t.Errorf("reason %q does not contain %q", ev.Decision.Reason, want)
	}
}

func TestConsumerMetricsExported(t *testing.T) {
	srv, rd, mr, clk := newMetricsTestServer(t)
	reg := prometheus.NewPedanticRegistry()
	srv.metrics = NewMetrics(reg)
	r := ref(combined("processingTime", "2s"))
	rd.set(40, nil)
	mr.set(400*time.Millisecond, 10, 2.5, nil)
	if _, err := srv.Evaluate(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP flowscaler_failure_rate Messages whose processing failed per second, from consumer metrics; absent when unknown.
# TYPE flowscaler_failure_rate gauge
flowscaler_failure_rate{namespace="shop",scaledobject="orders"} 2.5
# HELP flowscaler_processing_time_from 1 for where the processing time came from (measured, last-good or configured), 0 for the others.
# TYPE flowscaler_processing_time_from gauge
flowscaler_processing_time_from{from="configured",namespace="shop",scaledobject="orders"} 0
flowscaler_processing_time_from{from="last-good",namespace="shop",scaledobject="orders"} 0
flowscaler_processing_time_from{from="measured",namespace="shop",scaledobject="orders"} 1
# HELP flowscaler_processing_time_p95_seconds 95th-percentile processing time per message from consumer metrics; absent when unknown.
# TYPE flowscaler_processing_time_p95_seconds gauge
flowscaler_processing_time_p95_seconds{namespace="shop",scaledobject="orders"} 0.8
# HELP flowscaler_processing_time_seconds Processing time per message (W) the replica target was computed with: measured, last good or configured.
# TYPE flowscaler_processing_time_seconds gauge
flowscaler_processing_time_seconds{namespace="shop",scaledobject="orders"} 0.4
`
	names := []string{"flowscaler_failure_rate", "flowscaler_processing_time_from", "flowscaler_processing_time_p95_seconds", "flowscaler_processing_time_seconds", "flowscaler_ready_pods"}
	if err := testutil.GatherAndCompare(srv.metrics.Gatherers(reg), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}

	// Past staleAfter with Prometheus down: configured W, and the measured
	// series disappear rather than turning into 0.
	mr.set(0, 0, 0, errors.New("prometheus monitoring unreachable"))
	clk.Add(2 * time.Minute)
	if _, err := srv.Evaluate(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	want = `
# HELP flowscaler_processing_time_from 1 for where the processing time came from (measured, last-good or configured), 0 for the others.
# TYPE flowscaler_processing_time_from gauge
flowscaler_processing_time_from{from="configured",namespace="shop",scaledobject="orders"} 1
flowscaler_processing_time_from{from="last-good",namespace="shop",scaledobject="orders"} 0
flowscaler_processing_time_from{from="measured",namespace="shop",scaledobject="orders"} 0
# HELP flowscaler_processing_time_seconds Processing time per message (W) the replica target was computed with: measured, last good or configured.
# TYPE flowscaler_processing_time_seconds gauge
flowscaler_processing_time_seconds{namespace="shop",scaledobject="orders"} 2
`
	if err := testutil.GatherAndCompare(srv.metrics.Gatherers(reg), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func FuzzParseMetrics(f *testing.F) {
	cfg := promConfig(f)
	f.Add("redis-stream", "monitoring", `service="order-processor"`, "processingQuery", "sum(x)", "2m", "ms")
	f.Add("prometheus", "", `a=~"b|c", d!="e"`, "depthQuery", "sum(rabbitmq_queue_messages_ready)", "1s", "s")
	f.Add("redis-list", "local", `}) or vector(1) #`, "failureQuery", "x[5m]", "0s", "h")
	f.Fuzz(func(t *testing.T, source, metrics, selector, key, query, window, unit string) {
		md := map[string]string{
			"source": source, "connection": "monitoring", "list": "jobs", "stream": "s", "group": "g",
			"processingSelector": selector, key: query, "metricsWindow": window, "processingUnit": unit,
		}
		if source != "prometheus" {
			md["connection"] = "local"
		}
		if metrics != "" {
			md["metrics"] = metrics
		}
		obj, err := ParseObject(cfg, "ns", "name", md)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		// Whatever was accepted must be PromQL flowscaler can ask.
		if m := obj.Metrics; m != nil {
			for _, e := range []string{m.ProcessingMean, m.ProcessingP95, m.ConsumptionRate, m.FailureRate, m.ReadyPods} {
				if e == "" {
					continue
				}
				if err := config.CheckPromQL(e); err != nil {
					t.Fatalf("accepted %q: %v", e, err)
				}
			}
			if m.ProcessingUnit <= 0 {
				t.Fatalf("unit %v", m.ProcessingUnit)
			}
		}
	})
}
