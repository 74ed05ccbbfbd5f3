package scaler

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestObjectSeries(t *testing.T) {
	tests := []struct {
		name   string
		change func(m *Metrics)
		want   string
	}{
		{
			name: "known gauges only, one-hot reason and source, sorted across namespaces",
			change: func(m *Metrics) {
				m.objects.update("b", "jobs", func(v *objectValues) {
					v.set(gReplicas, 3)
					v.setKnown(gOldestAge, 0, false)
					v.reason, v.from = "scale-up", fromMeasured
				})
				m.objects.update("a", "orders", func(v *objectValues) {
					v.set(gReplicas, 7)
					v.setKnown(gOldestAge, 12.5, true)
					v.reason, v.from = "steady", fromConfigured
				})
			},
			want: `
# HELP flowscaler_desired_replicas Replica target served to KEDA.
# TYPE flowscaler_desired_replicas gauge
flowscaler_desired_replicas{namespace="a",scaledobject="orders"} 7
flowscaler_desired_replicas{namespace="b",scaledobject="jobs"} 3
# HELP flowscaler_oldest_message_age_seconds Age of the oldest undelivered message; absent when unknown.
# TYPE flowscaler_oldest_message_age_seconds gauge
flowscaler_oldest_message_age_seconds{namespace="a",scaledobject="orders"} 12.5
# HELP flowscaler_decision_reason 1 for the class of the current decision: scale-up, steady, holding, idle, stalled, clamped-max or stale.
# TYPE flowscaler_decision_reason gauge
flowscaler_decision_reason{namespace="a",reason="clamped-max",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="holding",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="idle",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="scale-up",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="stale",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="stalled",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="steady",scaledobject="orders"} 1
flowscaler_decision_reason{namespace="b",reason="clamped-max",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="holding",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="idle",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="scale-up",scaledobject="jobs"} 1
flowscaler_decision_reason{namespace="b",reason="stale",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="stalled",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="steady",scaledobject="jobs"} 0
# HELP flowscaler_processing_time_from 1 for where the processing time came from (measured, last-good or configured), 0 for the others.
# TYPE flowscaler_processing_time_from gauge
flowscaler_processing_time_from{from="configured",namespace="a",scaledobject="orders"} 1
flowscaler_processing_time_from{from="configured",namespace="b",scaledobject="jobs"} 0
flowscaler_processing_time_from{from="last-good",namespace="a",scaledobject="orders"} 0
flowscaler_processing_time_from{from="last-good",namespace="b",scaledobject="jobs"} 0
flowscaler_processing_time_from{from="measured",namespace="a",scaledobject="orders"} 0
flowscaler_processing_time_from{from="measured",namespace="b",scaledobject="jobs"} 1
`,
		},
		{
			name: "a value that becomes unknown loses its series",
			change: func(m *Metrics) {
				m.objects.update("a", "orders", func(v *objectValues) { v.setKnown(gOldestAge, 4, true) })
				m.objects.update("a", "orders", func(v *objectValues) { v.setKnown(gOldestAge, 0, false) })
			},
			want: ``,
		},
		{
			name: "a stale answer before any decision exports the reason alone",
			change: func(m *Metrics) {
				m.staleAnswer(Object{Namespace: "a", Name: "orders"})
			},
			want: `
# HELP flowscaler_decision_reason 1 for the class of the current decision: scale-up, steady, holding, idle, stalled, clamped-max or stale.
# TYPE flowscaler_decision_reason gauge
flowscaler_decision_reason{namespace="a",reason="clamped-max",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="holding",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="idle",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="scale-up",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="stale",scaledobject="orders"} 1
flowscaler_decision_reason{namespace="a",reason="stalled",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="steady",scaledobject="orders"} 0
`,
		},
		{
			name: "a forgotten object has no series",
			change: func(m *Metrics) {
				m.objects.update("a", "orders", func(v *objectValues) { v.set(gReplicas, 2); v.reason, v.from = "steady", fromMeasured })
				m.forget(Object{Namespace: "a", Name: "orders"})
			},
			want: ``,
		},
	}
	names := []string{"flowscaler_desired_replicas", "flowscaler_oldest_message_age_seconds", "flowscaler_decision_reason", "flowscaler_processing_time_from"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			m := NewMetrics(reg)
			tt.change(m)
			if err := testutil.GatherAndCompare(m.Gatherers(reg), strings.NewReader(tt.want), names...); err != nil {
				t.Error(err)
			}
		})
	}
}

// referenceText is what client_golang's registry and text encoder make
// of the same values: the format writeText must match byte for byte.
func referenceText(t testing.TB, m *Metrics) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	o := m.objects
	for g, f := range o.gauges {
		c := constCollector{d: prometheus.NewDesc(f.name, f.help, objectLabels, nil)}
		for k, v := range o.objects {
			if v.known[g] {
				c.ms = append(c.ms, prometheus.MustNewConstMetric(c.d, prometheus.GaugeValue, v.value[g], k.namespace, k.name))
			}
		}
		reg.MustRegister(c)
	}
	for _, x := range []struct {
		f      family
		label  string
		values []string
		hot    func(*objectValues) string
	}{
		{o.reason, "reason", reasonClasses, func(v *objectValues) string { return v.reason }},
		{o.from, "from", processingSources, func(v *objectValues) string { return v.from }},
	} {
		c := constCollector{d: prometheus.NewDesc(x.f.name, x.f.help, append(slices.Clone(objectLabels), x.label), nil)}
		for k, v := range o.objects {
			if x.hot(v) == "" {
				continue
			}
			for _, value := range x.values {
				c.ms = append(c.ms, prometheus.MustNewConstMetric(c.d, prometheus.GaugeValue, b2f(value == x.hot(v)), k.namespace, k.name, value))
			}
		}
		reg.MustRegister(c)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// The registry sorts families by name; writeText keeps its own order.
	// Put them in writeText's order to compare whole texts.
	order := map[string]int{o.reason.name: int(numGauges), o.from.name: int(numGauges) + 1}
	for g, f := range o.gauges {
		order[f.name] = g
	}
	slices.SortFunc(mfs, func(a, b *dto.MetricFamily) int { return order[a.GetName()] - order[b.GetName()] })
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.String()
}

// constCollector collects the constant series of one family.
type constCollector struct {
	d  *prometheus.Desc
	ms []prometheus.Metric
}

func (c constCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.d }
func (c constCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.ms {
		ch <- m
	}
}

func writtenText(t testing.TB, m *Metrics) string {
	t.Helper()
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	if err := m.objects.writeText(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestObjectSeriesTextMatchesClientGolang(t *testing.T) {
	m := NewMetrics(nil)
	objects := []objectKey{
		{"shop", "orders"}, {"shop", "orders-eu"}, {"a", "z"}, {"b", "a"},
		{`odd"ns`, `back\slash`}, {"line\\nbreak", "new\nline"}, {"ünï", "cödé"},
	}
	values := []float64{0, 1, -1, 0.5, 1e6, 123456789, 1.5e-7, math.Inf(1), math.Inf(-1), math.MaxFloat64}
	for i, k := range objects {
		m.objects.update(k.namespace, k.name, func(v *objectValues) {
			for g := range numGauges {
				if (i+int(g))%3 != 0 {
					v.set(g, values[(i+int(g))%len(values)])
				}
			}
			if i%4 != 3 {
				v.reason = reasonClasses[i%len(reasonClasses)]
				v.from = processingSources[i%len(processingSources)]
			}
		})
	}
	if diff := cmp.Diff(referenceText(t, m), writtenText(t, m)); diff != "" {
		t.Errorf("exposition (-client_golang +ours):\n%s", diff)
	}
}

func FuzzObjectSeriesText(f *testing.F) {
	f.Add("shop", "orders", 3.5, "scale-up")
	f.Add(`a"b`, "c\\d\n", math.Inf(1), "")
	f.Fuzz(func(t *testing.T, ns, name string, x float64, reason string) {
		if !utf8.ValidString(ns) || !utf8.ValidString(name) || math.IsNaN(x) {
			t.Skip("client_golang refuses invalid UTF-8; NaN never equals itself in a gauge comparison")
		}
		m := NewMetrics(nil)
		m.objects.update(ns, name, func(v *objectValues) {
			v.set(gDepth, x)
			if slices.Contains(reasonClasses, reason) {
				v.reason = reason
			}
		})
		if diff := cmp.Diff(referenceText(t, m), writtenText(t, m)); diff != "" {
			t.Errorf("exposition (-client_golang +ours):\n%s", diff)
		}
	})
}

func TestMetricsHandler(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	m.rpcTotal.WithLabelValues("GetMetrics", "OK").Inc()
	m.objects.update("shop", "orders", func(v *objectValues) { v.set(gReplicas, 4); v.reason = "steady" })
	srv := httptest.NewServer(m.Handler(reg))
	t.Cleanup(srv.Close)

	for _, tt := range []struct {
		name, acceptEncoding, wantEncoding string
	}{
		{name: "plain", acceptEncoding: "identity"},
		{name: "gzip", acceptEncoding: "gzip", wantEncoding: "gzip"},
		{name: "gzip refused", acceptEncoding: "gzip;q=0, identity", wantEncoding: ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
			req.Header.Set("Accept-Encoding", tt.acceptEncoding)
			// A transport that leaves the body as sent.
			resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if got := resp.Header.Get("Content-Encoding"); got != tt.wantEncoding {
				t.Errorf("Content-Encoding = %q, want %q", got, tt.wantEncoding)
			}
			if got, want := resp.Header.Get("Content-Type"), string(expfmt.NewFormat(expfmt.TypeTextPlain)); got != want {
				t.Errorf("Content-Type = %q, want %q", got, want)
			}
			var body io.Reader = resp.Body
			if tt.wantEncoding == "gzip" {
				gz, err := gzip.NewReader(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				body = gz
			}
			parser := expfmt.NewTextParser(model.LegacyValidation)
			mfs, err := parser.TextToMetricFamilies(body)
			if err != nil {
				t.Fatalf("parsing the exposition: %v", err)
			}
			got := map[string]float64{}
			for name, mf := range mfs {
				for _, s := range mf.GetMetric() {
					got[name+labelString(s.GetLabel())] = s.GetGauge().GetValue() + s.GetCounter().GetValue()
				}
			}
			for series, want := range map[string]float64{
				`flowscaler_grpc_requests_total{code="OK",method="GetMetrics"}`:                      1,
				`flowscaler_desired_replicas{namespace="shop",scaledobject="orders"}`:                4,
				`flowscaler_decision_reason{namespace="shop",reason="steady",scaledobject="orders"}`: 1,
				`flowscaler_decision_reason{namespace="shop",reason="idle",scaledobject="orders"}`:   0,
			} {
				if v, ok := got[series]; !ok || v != want {
					t.Errorf("%s = %v (present %v), want %v", series, v, ok, want)
				}
			}
		})
	}
}

func labelString(ls []*dto.LabelPair) string {
	var parts []string
	for _, l := range ls {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func TestAcceptsGzip(t *testing.T) {
	for h, want := range map[string]bool{
		"":                        false,
		"gzip":                    true,
		"GZIP":                    true,
		"identity":                false,
		"deflate, gzip;q=0.5":     true,
		"gzip;q=0":                false,
		"gzip; q=0.000, *":        false,
		"*":                       true,
		"*;q=0, gzip":             true,
		"br;q=1.0, gzip;q=0.8, *": true,
	} {
		if got := acceptsGzip(h); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", h, got, want)
		}
	}
}

// BenchmarkScrapeObjects is one /metrics scrape of 10,000 objects (about
// 30 series each) as Prometheus asks for it, gzipped.
func BenchmarkScrapeObjects(b *testing.B) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	for i := range 10000 {
		m.objects.update(fmt.Sprintf("ns-%d", i%10), fmt.Sprintf("consumer-%05d", i), func(v *objectValues) {
			for g := range numGauges {
				v.set(g, float64(i)+0.25)
			}
			v.reason, v.from = "steady", fromConfigured
		})
	}
	h := m.Handler(reg)
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	b.ReportAllocs()
	for b.Loop() {
		w := &countingResponse{header: http.Header{}}
		h.ServeHTTP(w, req)
		b.ReportMetric(float64(w.n), "gzip-bytes/op")
	}
}

type countingResponse struct {
	header http.Header
	n      int
}

func (c *countingResponse) Header() http.Header         { return c.header }
func (c *countingResponse) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }
func (c *countingResponse) WriteHeader(int)             {}
