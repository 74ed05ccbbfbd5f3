package sources

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/flowscaler/flowscaler/scaler/tlstest"
	"github.com/flowscaler/flowscaler/sources/promtest"
)

const testPromConn = "monitoring"

// seedQuery is the config's default templates rendered for the selector
// service="order-processor" and a 3s window: short, so that a change in the
// exporter fills the window within a few 1s scrapes.
func seedQuery() MetricsQuery {
	const sel, w = `service="order-processor"`, "3s"
	h := promtest.ProcessingHistogram
	return MetricsQuery{
		Connection:      testPromConn,
		ProcessingMean:  fmt.Sprintf(`sum(rate(%s_sum{%s}[%s])) / sum(rate(%s_count{%s}[%s]))`, h, sel, w, h, sel, w),
		ProcessingP95:   fmt.Sprintf(`histogram_quantile(0.95, sum by (le) (rate(%s_bucket{%s}[%s])))`, h, sel, w),
		ConsumptionRate: fmt.Sprintf(`sum(rate(%s{%s}[%s]))`, promtest.ConsumedCounter, sel, w),
		FailureRate: fmt.Sprintf(`sum(rate(%s{%s}[%s])) or 0 * sum(rate(%s{%s}[%s]))`,
			promtest.FailedCounter, sel, w, promtest.ConsumedCounter, sel, w),
		ProcessingUnit: time.Millisecond,
	}
}

// seedWorld is an exporter with the seed's metrics, a real Prometheus
// scraping it every second with the label service="order-processor", and a
// querier on that Prometheus.
type seedWorld struct {
	exporter *promtest.Exporter
	prom     *promtest.Server
	querier  *PrometheusQuerier
}

func startSeedWorld(t *testing.T, load promtest.Load) *seedWorld {
	t.Helper()
	exp := promtest.StartExporter(t, promtest.ExporterOptions{})
	exp.Set(load)
	prom := promtest.Start(t, promtest.Options{Targets: []promtest.Target{{
		Job: "order-processor", URL: exp.URL, Labels: map[string]string{"service": "order-processor"},
	}}})
	return &seedWorld{exporter: exp, prom: prom, querier: newTestQuerier(t, PrometheusConnection{URL: prom.URL()}, PrometheusOptions{})}
}

func newTestQuerier(t testing.TB, conn PrometheusConnection, opts PrometheusOptions) *PrometheusQuerier {
	t.Helper()
	q := NewPrometheusQuerier(opts)
	if err := q.SetConnections(map[string]PrometheusConnection{testPromConn: conn}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

// waitMean waits until Prometheus's own answer to the mean query is want
// milliseconds: every scrape in the window carries the new processing time.
func (w *seedWorld) waitMean(t *testing.T, want time.Duration) {
	t.Helper()
	w.prom.WaitFor(t, seedQuery().ProcessingMean, 30*time.Second, promtest.Near(float64(want)/float64(time.Millisecond)))
}

func TestPrometheusMetricsFollowTheExporter(t *testing.T) {
	w := startSeedWorld(t, promtest.Load{ProcessingTime: 200 * time.Millisecond, Consumed: 10})
	r := NewPrometheusReader(w.querier, nil)
	q := seedQuery()

	w.waitMean(t, 200*time.Millisecond)
	before, err := r.ReadMetrics(testCtx(t), q)
	if err != nil {
		t.Fatal(err)
	}
	if len(before.Errors) != 0 {
		t.Fatalf("errors with a healthy exporter: %v", before.Errors)
	}
	if before.ProcessingMean != 200*time.Millisecond {
		t.Errorf("ProcessingMean = %v, want 200ms: every message took 200ms", before.ProcessingMean)
	}
	// Linear interpolation inside the (100, 250] bucket that holds every
	// observation: 100 + 150 × 0.95 = 242.5ms.
	if want := 242500 * time.Microsecond; before.ProcessingP95 != want {
		t.Errorf("ProcessingP95 = %v, want %v", before.ProcessingP95, want)
	}
	if !(before.ConsumptionRate > 0) {
		t.Errorf("ConsumptionRate = %v, want > 0: 10 messages a scrape", before.ConsumptionRate)
	}
	// The failed counter does not exist yet; the default query reads that
	// as 0 only because the consumers' own counter is there.
	if before.FailureRate != 0 {
		t.Errorf("FailureRate = %v, want 0: consumers seen, nothing failed", before.FailureRate)
	}
	if !math.IsNaN(before.ReadyPods) {
		t.Errorf("ReadyPods = %v, want NaN: not asked for", before.ReadyPods)
	}

	w.exporter.Set(promtest.Load{ProcessingTime: 400 * time.Millisecond, Consumed: 10, Failed: 4})
	w.waitMean(t, 400*time.Millisecond)
	// The failed counter is new: until its history outgrows the window,
	// rate() extrapolates it differently from the consumed counter.
	w.prom.WaitFor(t, "("+q.FailureRate+") / ("+q.ConsumptionRate+")", 30*time.Second, promtest.Near(0.4))
	after, err := r.ReadMetrics(testCtx(t), q)
	if err != nil {
		t.Fatal(err)
	}
	if after.ProcessingMean != 2*before.ProcessingMean {
		t.Errorf("ProcessingMean = %v after doubling the processing time, want %v", after.ProcessingMean, 2*before.ProcessingMean)
	}
	// (250, 500] bucket: 250 + 250 × 0.95 = 487.5ms.
	if want := 487500 * time.Microsecond; after.ProcessingP95 != want {
		t.Errorf("ProcessingP95 = %v, want %v", after.ProcessingP95, want)
	}
	if !(after.FailureRate > 0) {
		t.Errorf("FailureRate = %v after 4 failures a scrape, want > 0", after.FailureRate)
	}
	// Both counters grow per scrape, so their rates keep the ratio 4 : 10
	// whatever the exact scrape timing.
	if got := after.FailureRate / after.ConsumptionRate; math.Abs(got-0.4) > 1e-9 {
		t.Errorf("FailureRate / ConsumptionRate = %v, want 0.4", got)
	}
}

func TestPrometheusMetricsMissing(t *testing.T) {
	w := startSeedWorld(t, promtest.Load{ProcessingTime: 200 * time.Millisecond})
	r := NewPrometheusReader(w.querier, nil)
	// Consumers that export their metrics but process nothing: the rates
	// are a real 0 and the mean is 0 ÷ 0.
	w.prom.WaitFor(t, seedQuery().ConsumptionRate, 30*time.Second, func(v float64) bool { return v == 0 })

	q := seedQuery()
	q.ReadyPods = `sum(up{service="nobody"})`
	m, err := r.ReadMetrics(testCtx(t), q)
	if err != nil {
		t.Fatal(err)
	}
	if m.ConsumptionRate != 0 {
		t.Errorf("ConsumptionRate = %v, want the real 0 of idle consumers", m.ConsumptionRate)
	}
	if m.ProcessingMean >= 0 || m.ProcessingP95 >= 0 || !math.IsNaN(m.ReadyPods) {
		t.Errorf("unknown values = mean %v, p95 %v, ready %v; want negative, negative, NaN", m.ProcessingMean, m.ProcessingP95, m.ReadyPods)
	}
	for metric, want := range map[Metric]error{ProcessingMean: ErrNotANumber, ProcessingP95: ErrNotANumber, ReadyPods: ErrNoSeries} {
		if !errors.Is(m.Errors[metric], want) {
			t.Errorf("Errors[%s] = %v, want %v", metric, m.Errors[metric], want)
		}
	}
}

func TestPrometheusOutageAndRecovery(t *testing.T) {
	w := startSeedWorld(t, promtest.Load{ProcessingTime: 300 * time.Millisecond, Consumed: 5})
	r := NewPrometheusReader(w.querier, nil)
	q := seedQuery()
	depth := Query{Kind: Prometheus, Connection: testPromConn, Name: `sum(up{service="order-processor"}) * 7`}
	w.waitMean(t, 300*time.Millisecond)

	w.prom.Stop()
	m, err := r.ReadMetrics(testCtx(t), q)
	if err != nil {
		t.Fatal(err)
	}
	if m.ProcessingMean >= 0 || !math.IsNaN(m.ConsumptionRate) || !math.IsNaN(m.FailureRate) {
		t.Errorf("during the outage: mean %v, consumption %v, failure %v; want all unknown, never 0", m.ProcessingMean, m.ConsumptionRate, m.FailureRate)
	}
	for _, metric := range []Metric{ProcessingMean, ProcessingP95, ConsumptionRate, FailureRate} {
		if err := m.Errors[metric]; err == nil || !strings.Contains(err.Error(), "prometheus monitoring unreachable") || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("Errors[%s] = %v, want it to say Prometheus is unreachable and why", metric, err)
		}
	}
	if rd, err := r.Read(testCtx(t), depth); err == nil {
		t.Errorf("depth read during the outage = %+v, want an error", rd)
	}

	w.prom.Start()
	w.prom.WaitFor(t, depth.Name, 30*time.Second, func(v float64) bool { return v == 7 })
	rd, err := r.Read(testCtx(t), depth)
	if err != nil {
		t.Fatalf("depth read after recovery: %v", err)
	}
	if rd.Depth != 7 || rd.OldestAge >= 0 || !math.IsNaN(rd.ProducedTotal) {
		t.Errorf("reading = %+v, want depth 7, oldest age and counters unknown", rd)
	}
	w.waitMean(t, 300*time.Millisecond)
	if m, _ := r.ReadMetrics(testCtx(t), q); m.ProcessingMean != 300*time.Millisecond {
		t.Errorf("ProcessingMean after recovery = %v (errors %v), want 300ms", m.ProcessingMean, m.Errors)
	}
}

// recordedPrometheus serves a recorded answer (testdata/prometheus) to every query.
func recordedPrometheus(t *testing.T, status int, file string) string {
	t.Helper()
	body, err := os.ReadFile(filepath.Join("testdata", "prometheus", file))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/query" {
			http.NotFound(w, r)
			return
		}
		if strings.HasSuffix(file, ".json") {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestPrometheusRecordedAnswers(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		file    string
		want    float64 // when wantErr is ""
		wantErr []string
		is      error
	}{
		{name: "one series", status: 200, file: "one.json", want: 187.5},
		{name: "scalar", status: 200, file: "scalar.json", want: 250},
		{name: "no series", status: 200, file: "empty.json", is: ErrNoSeries, wantErr: []string{"returned no series"}},
		{name: "NaN", status: 200, file: "nan.json", is: ErrNotANumber, wantErr: []string{"returned NaN"}},
		{name: "+Inf", status: 200, file: "inf.json", is: ErrOutOfRange, wantErr: []string{"+Inf, want a finite value >= 0"}},
		{name: "negative", status: 200, file: "negative.json", is: ErrOutOfRange, wantErr: []string{"-3, want a finite value >= 0"}},
		{
			name: "several series", status: 200, file: "several.json", is: ErrSeveralSeries,
			wantErr: []string{`returned several series: 2 ({message_type="OrderPlaced"}, {message_type="OrderShipped"}), want exactly one: aggregate it (sum) or narrow the selector`},
		},
		{name: "range vector", status: 200, file: "matrix.json", is: ErrWrongType, wantErr: []string{"neither an instant vector nor a scalar: got a matrix"}},
		{
			name: "bad query", status: 400, file: "bad_data.json",
			wantErr: []string{`prometheus monitoring: bad_data: invalid parameter "query": 1:47: parse error: unclosed left parenthesis`},
		},
		{name: "unauthorized", status: 401, file: "unauthorized.txt", wantErr: []string{"prometheus monitoring: client_error: client error: 401 (Unauthorized)"}},
		{name: "starting", status: 503, file: "starting.txt", wantErr: []string{"prometheus monitoring: server_error: server error: 503 (Service Unavailable)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := newTestQuerier(t, PrometheusConnection{URL: recordedPrometheus(t, tc.status, tc.file)}, PrometheusOptions{})
			r := NewPrometheusReader(q, nil)
			m, err := r.ReadMetrics(testCtx(t), MetricsQuery{Connection: testPromConn, ConsumptionRate: "anything"})
			if err != nil {
				t.Fatal(err)
			}
			got, gotErr := m.ConsumptionRate, m.Errors[ConsumptionRate]
			if tc.wantErr == nil {
				if gotErr != nil || got != tc.want {
					t.Errorf("ConsumptionRate = %v, %v; want %v", got, gotErr, tc.want)
				}
				return
			}
			if gotErr == nil || !math.IsNaN(got) {
				t.Fatalf("ConsumptionRate = %v, %v; want NaN and an error", got, gotErr)
			}
			if tc.is != nil && !errors.Is(gotErr, tc.is) {
				t.Errorf("error %v is not %v", gotErr, tc.is)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(gotErr.Error(), w) {
					t.Errorf("error %q does not contain %q", gotErr, w)
				}
			}
			// As a depth source the same answers are read errors.
			if rd, err := r.Read(testCtx(t), Query{Kind: Prometheus, Connection: testPromConn, Name: "anything"}); err == nil {
				t.Errorf("depth Read = %+v, want an error", rd)
			}
		})
	}
}

func TestPrometheusProcessingUnitAndZero(t *testing.T) {
	q := newTestQuerier(t, PrometheusConnection{URL: recordedPrometheus(t, 200, "one.json")}, PrometheusOptions{})
	r := NewPrometheusReader(q, nil)
	tests := []struct {
		unit time.Duration
		want time.Duration
	}{
		{unit: time.Millisecond, want: 187500 * time.Microsecond},
		{unit: time.Second, want: 187500 * time.Millisecond},
		{unit: time.Microsecond, want: 187500 * time.Nanosecond},
		{unit: 0, want: 187500 * time.Millisecond}, // 0 means seconds
	}
	for _, tc := range tests {
		m, err := r.ReadMetrics(testCtx(t), MetricsQuery{Connection: testPromConn, ProcessingMean: "x", ProcessingUnit: tc.unit})
		if err != nil || m.ProcessingMean != tc.want {
			t.Errorf("unit %v: ProcessingMean = %v, %v; want %v", tc.unit, m.ProcessingMean, err, tc.want)
		}
	}

	zero := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"scalar","result":[1795739668.659,"0"]}}`))
	}))
	t.Cleanup(zero.Close)
	q0 := newTestQuerier(t, PrometheusConnection{URL: zero.URL}, PrometheusOptions{})
	m, err := NewPrometheusReader(q0, nil).ReadMetrics(testCtx(t), MetricsQuery{Connection: testPromConn, ProcessingMean: "x", ConsumptionRate: "y"})
	if err != nil {
		t.Fatal(err)
	}
	if m.ProcessingMean >= 0 || !errors.Is(m.Errors[ProcessingMean], ErrOutOfRange) {
		t.Errorf("a processing time of 0: %v, %v; want unknown and ErrOutOfRange", m.ProcessingMean, m.Errors[ProcessingMean])
	}
	if m.ConsumptionRate != 0 || m.Errors[ConsumptionRate] != nil {
		t.Errorf("a consumption rate of 0: %v, %v; want the real 0", m.ConsumptionRate, m.Errors[ConsumptionRate])
	}
}

func TestPrometheusUnknownConnection(t *testing.T) {
	r := NewPrometheusReader(NewPrometheusQuerier(PrometheusOptions{}), nil)
	_, err := r.ReadMetrics(testCtx(t), MetricsQuery{Connection: "typo", ConsumptionRate: "x"})
	if !errors.Is(err, ErrUnknownConnection) {
		t.Errorf("ReadMetrics on an unknown connection: %v, want ErrUnknownConnection", err)
	}
}

// authRecorder is a Prometheus stand-in that records the Authorization
// header of each query: the test is about what flowscaler sends.
func authRecorder(t *testing.T) (string, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"scalar","result":[1795739668.659,"1"]}}`))
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), seen...) }
}

func TestPrometheusBearerToken(t *testing.T) {
	url, seen := authRecorder(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	check(t, os.WriteFile(tokenFile, []byte("first-token\n"), 0o600))
	q := NewPrometheusQuerier(PrometheusOptions{})
	t.Cleanup(func() { _ = q.Close() })
	check(t, q.SetConnections(map[string]PrometheusConnection{
		"env":  {URL: url, BearerToken: "from-env"},
		"file": {URL: url, BearerTokenFile: tokenFile},
	}))
	ctx := testCtx(t)
	_, err := q.Instant(ctx, PromQL{Connection: "env", Expr: "x"})
	check(t, err)
	_, err = q.Instant(ctx, PromQL{Connection: "file", Expr: "x"})
	check(t, err)
	// A rotated token is used from the next query on, without a reload.
	check(t, os.WriteFile(tokenFile, []byte("second-token"), 0o600))
	_, err = q.Instant(ctx, PromQL{Connection: "file", Expr: "x"})
	check(t, err)
	if diff := cmp.Diff([]string{"Bearer from-env", "Bearer first-token", "Bearer second-token"}, seen()); diff != "" {
		t.Errorf("Authorization headers (-want +got):\n%s", diff)
	}

	check(t, os.WriteFile(tokenFile, nil, 0o600))
	_, err = q.Instant(ctx, PromQL{Connection: "file", Expr: "x"})
	if want := fmt.Sprintf("prometheus file: bearerTokenFile %q: is empty", tokenFile); err == nil || err.Error() != want {
		t.Errorf("empty token file: %v, want %q", err, want)
	}
	if n := len(seen()); n != 3 {
		t.Errorf("%d requests reached the server, want 3: none without a token", n)
	}
}

func TestPrometheusTLSAndBasicAuth(t *testing.T) {
	ca := tlstest.NewCA(t, "prometheus-ca")
	cert, key := ca.Issue(t, "prometheus", true)
	prom := promtest.Start(t, promtest.Options{TLSCertFile: cert, TLSKeyFile: key, BasicAuthUser: "flowscaler", BasicAuthPassword: "right"})
	tests := []struct {
		name    string
		conn    PrometheusConnection
		wantErr string
	}{
		{name: "verified with the CA, right password", conn: PrometheusConnection{URL: prom.URL(), Username: "flowscaler", Password: "right", TLS: PrometheusTLS{CAFile: ca.File()}}},
		{name: "wrong password", conn: PrometheusConnection{URL: prom.URL(), Username: "flowscaler", Password: "wrong", TLS: PrometheusTLS{CAFile: ca.File()}}, wantErr: "client error: 401"},
		{name: "unknown CA", conn: PrometheusConnection{URL: prom.URL(), Username: "flowscaler", Password: "right"}, wantErr: "prometheus monitoring unreachable: tls: failed to verify certificate"},
		{name: "server name mismatch", conn: PrometheusConnection{URL: prom.URL(), Username: "flowscaler", Password: "right", TLS: PrometheusTLS{CAFile: ca.File(), ServerName: "prometheus.example"}}, wantErr: "certificate is valid for localhost, not prometheus.example"},
		{name: "insecureSkipVerify", conn: PrometheusConnection{URL: prom.URL(), Username: "flowscaler", Password: "right", TLS: PrometheusTLS{InsecureSkipVerify: true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := newTestQuerier(t, tc.conn, PrometheusOptions{})
			s, err := q.Instant(testCtx(t), PromQL{Connection: testPromConn, Expr: "vector(42)"})
			if tc.wantErr == "" {
				if err != nil || s.Value != 42 {
					t.Errorf("Instant = %+v, %v; want 42", s, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Instant error = %v, want it to contain %q", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "right") {
				t.Errorf("error %q carries the password", err)
			}
		})
	}
}

func TestPrometheusSetConnections(t *testing.T) {
	url, _ := authRecorder(t)
	q := NewPrometheusQuerier(PrometheusOptions{})
	t.Cleanup(func() { _ = q.Close() })
	check(t, q.SetConnections(map[string]PrometheusConnection{"a": {URL: url}, "b": {URL: url, Password: "p4ss", Username: "u"}}))
	a, _ := q.conn("a")

	// All or nothing: one bad connection keeps the old set in place.
	err := q.SetConnections(map[string]PrometheusConnection{
		"a":   {URL: url},
		"bad": {URL: url, TLS: PrometheusTLS{CAFile: filepath.Join(t.TempDir(), "missing.pem")}},
		"ftp": {URL: "ftp://h"},
	})
	if err == nil {
		t.Fatal("SetConnections accepted an unreadable CA file and an ftp URL")
	}
	for _, want := range []string{`prometheus connection "bad": tls.caFile`, "no such file or directory", `prometheus connection "ftp": URL ftp://h: must be an http:// or https:// URL with a host`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if _, err := q.conn("b"); err != nil {
		t.Errorf("connection b is gone after a failed SetConnections: %v", err)
	}

	// An unchanged connection keeps its client; a removed one is gone.
	check(t, q.SetConnections(map[string]PrometheusConnection{"a": {URL: url}}))
	if again, _ := q.conn("a"); again != a {
		t.Error("unchanged connection a got a new client")
	}
	if _, err := q.Instant(testCtx(t), PromQL{Connection: "b", Expr: "x"}); !errors.Is(err, ErrUnknownConnection) {
		t.Errorf("query on removed connection b: %v, want ErrUnknownConnection", err)
	}

	check(t, q.Close())
	if _, err := q.Instant(testCtx(t), PromQL{Connection: "a", Expr: "x"}); !errors.Is(err, ErrPrometheusClosed) {
		t.Errorf("query after Close: %v, want ErrPrometheusClosed", err)
	}
}

func TestPrometheusConnectionRedacts(t *testing.T) {
	c := PrometheusConnection{URL: "https://prom.example:9090", Username: "u", Password: "hunter2", BearerToken: "tok3n"}
	for _, s := range []string{c.String(), fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), c.LogValue().String()} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "tok3n") {
			t.Errorf("%q leaks a secret", s)
		}
	}
}

// countingQuerier counts the queries that reach the querier it wraps.
type countingQuerier struct {
	next InstantQuerier
	mu   sync.Mutex
	n    map[string]int
}

func (c *countingQuerier) Instant(ctx context.Context, q PromQL) (Sample, error) {
	c.mu.Lock()
	c.n[q.Expr]++
	c.mu.Unlock()
	return c.next.Instant(ctx, q)
}

func (c *countingQuerier) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

// Objects that share a selector share every query: one query per distinct
// expression per ttl, empty answers included.
func TestCoalesceInstantOneQueryPerExpression(t *testing.T) {
	w := startSeedWorld(t, promtest.Load{ProcessingTime: 200 * time.Millisecond, Consumed: 10})
	w.waitMean(t, 200*time.Millisecond)
	counter := &countingQuerier{next: w.querier, n: map[string]int{}}
	clk := &fakeClock{now: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)}
	r := NewPrometheusReader(CoalesceInstant(counter, Cache{TTL: 5 * time.Second}, clk.Now), clk.Now)

	q := seedQuery()
	q.ReadyPods = `sum(up{service="nobody"})` // an empty answer
	other := seedQuery()
	other.ProcessingMean = `sum(rate(` + promtest.ProcessingHistogram + `_sum[3s]))` // one expression of its own

	var wg sync.WaitGroup
	var failures atomic.Int64
	for i := range 20 {
		wg.Go(func() {
			qq := q
			if i%2 == 1 {
				qq = other
			}
			if m, err := r.ReadMetrics(testCtx(t), qq); err != nil || m.Errors[ProcessingMean] != nil {
				failures.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of 20 reads failed", n)
	}
	want := map[string]int{q.ProcessingMean: 1, other.ProcessingMean: 1, q.ProcessingP95: 1, q.ConsumptionRate: 1, q.FailureRate: 1, q.ReadyPods: 1}
	if diff := cmp.Diff(want, counter.counts()); diff != "" {
		t.Errorf("queries reaching Prometheus for 20 reads within the ttl (-want +got):\n%s", diff)
	}

	clk.Advance(5 * time.Second)
	if _, err := r.ReadMetrics(testCtx(t), q); err != nil {
		t.Fatal(err)
	}
	if got := counter.counts()[q.ProcessingMean]; got != 2 {
		t.Errorf("after the ttl: the mean was queried %d times in all, want 2", got)
	}
}

func TestInstrumentInstant(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	good := newTestQuerier(t, PrometheusConnection{URL: recordedPrometheus(t, 200, "one.json")}, PrometheusOptions{})
	q, err := InstrumentInstant(good, reg)
	check(t, err)
	empty, err := InstrumentInstant(newTestQuerier(t, PrometheusConnection{URL: recordedPrometheus(t, 200, "empty.json")}, PrometheusOptions{}), reg)
	check(t, err)
	ctx := testCtx(t)
	_, _ = q.Instant(ctx, PromQL{Connection: testPromConn, Expr: "x"})
	_, _ = q.Instant(ctx, PromQL{Connection: testPromConn, Expr: "y"})
	_, _ = empty.Instant(ctx, PromQL{Connection: testPromConn, Expr: "x"})
	_, _ = q.Instant(ctx, PromQL{Connection: "typo", Expr: "x"})

	mfs, err := reg.Gather()
	check(t, err)
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "flowscaler_prometheus_queries_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got[label(m, "connection")+"/"+label(m, "result")] = m.GetCounter().GetValue()
		}
	}
	want := map[string]float64{"monitoring/ok": 2, "monitoring/no_series": 1, "(unconfigured)/error": 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("flowscaler_prometheus_queries_total (-want +got):\n%s", diff)
	}
	if problems, err := promlint.NewWithMetricFamilies(mfs).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	if _, err := InstrumentInstant(good, nil); err == nil {
		t.Error("InstrumentInstant accepted a nil registerer")
	}
}
