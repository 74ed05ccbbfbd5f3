package keda

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flowscaler/flowscaler/sources/promtest"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

// promWindow is the rate window of the queries in this suite: a few 1 s
// scrapes, so that a change in the exporter fills it within seconds.
const promWindow = "3s"

// meanQuery is flowscaler's default processingMean template rendered for
// service="order-processor" and promWindow, as the test asks Prometheus.
var meanQuery = fmt.Sprintf(`sum(rate(%[1]s_sum{service="order-processor"}[%[2]s])) / sum(rate(%[1]s_count{service="order-processor"}[%[2]s]))`,
	promtest.ProcessingHistogram, promWindow)

// combinedEnv is a real redis-server, the seed's exporter, a real
// Prometheus scraping it every second with service="order-processor", and
// a flowscaler with a redis and a prometheus connection.
type combinedEnv struct {
	redis    *redistest.Server
	exporter *promtest.Exporter
	prom     *promtest.Server
	daemon   *daemon
}

func startCombinedEnv(t *testing.T, staleAfter time.Duration, load promtest.Load) *combinedEnv {
	t.Helper()
	rs := redistest.Start(t)
	exp := promtest.StartExporter(t, promtest.ExporterOptions{})
	exp.Set(load)
	prom := promtest.Start(t, promtest.Options{Targets: []promtest.Target{{
		Job: "order-processor", URL: exp.URL, Labels: map[string]string{"service": "order-processor"},
	}}})
	cfg := fmt.Sprintf(`server:
  readTimeout: 2s
  staleAfter: %s
connections:
  local:
    type: redis
    url: %s
  prometheus:
    type: prometheus
    url: %s
    timeout: 1s
queries:
  window: %s
  cacheTTL: 200ms
`, staleAfter, rs.URL(), prom.URL(), promWindow)
	return &combinedEnv{redis: rs, exporter: exp, prom: prom, daemon: startDaemon(t, daemonOptions{Config: cfg})}
}

// decisionOf is the object's entry in /debug/decisions.
func decisionOf(t *testing.T, d *daemon, name string) map[string]any {
	t.Helper()
	body := d.get("/debug/decisions")
	status, js, _ := strings.Cut(body, "\n")
	var all []map[string]any
	if err := json.Unmarshal([]byte(js), &all); err != nil {
		t.Fatalf("/debug/decisions (%s): %v", status, err)
	}
	for _, dec := range all {
		if dec["name"] == name {
			return dec
		}
	}
	t.Fatalf("/debug/decisions has no %s: %s", name, js)
	return nil
}

// waitValue polls KEDA's GetMetricsAndActivity until it returns want,
// failing on any error or 0 on the way: Prometheus scrapes and flowscaler's
// caches take real time, and a bounded poll is the honest way to wait.
func waitValue(t *testing.T, env *combinedEnv, name string, s scalers.Scaler, metric string, want float64) {
	t.Helper()
	deadline := time.Now().Add(guard)
	var last evaluation
	for {
		last = evaluate(t, s, metric)
		switch {
		case last.Err != nil:
			t.Fatalf("GetMetricsAndActivity: %v, want %v", last.Err, want)
		case last.Value == 0 || !last.Active:
			t.Fatalf("GetMetricsAndActivity = (%v, active=%v) with messages waiting", last.Value, last.Active)
		case last.Value == want:
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GetMetricsAndActivity = %v after %s, want %v; decision: %v", last.Value, guard, want, decisionOf(t, env.daemon, name)["reason"])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRedisStreamWithPrometheusMetrics: one ScaledObject combines a Redis
// stream with its consumers' metrics from a real Prometheus. KEDA's value
// follows the processing time the exporter reports; with Prometheus
// stopped it carries on from the last good processing time for staleAfter
// and then from the configured one, never failing and never 0, and the
// reason says which.
//
// 1140 undelivered fresh entries, targetAge 2m, concurrency 1: the target
// is the drain term 1140 ÷ 120s × W = 9.5·W pods per second of W (urgency
// 1 while the oldest entry is younger than 2m). Each step lowers W, so that
// nothing but W moves the target: scaleDownCooldown is 0s, and each lower
// target still finishes the backlog within targetAge, so no scale-down
// guard holds the higher one.
func TestRedisStreamWithPrometheusMetrics(t *testing.T) {
	const staleAfter = 6 * time.Second
	env := startCombinedEnv(t, staleAfter, promtest.Load{ProcessingTime: time.Second, Consumed: 10})
	rdb := env.redis.Client(t)
	addOldEntries(t, rdb, "orders", 1140, 0)
	createGroup(t, rdb, "orders", "workers", "0")
	s := newExternalScaler(t, env.daemon, "orders", streamMetadata("orders", "workers", map[string]string{
		"metrics":            "prometheus",
		"processingSelector": `service="order-processor"`,
		"processingTime":     "200ms",
		"targetAge":          "2m",
		"concurrency":        "1",
		"scaleDownCooldown":  "0s",
	}))
	metric := metricName(t, s)

	env.prom.WaitFor(t, meanQuery, guard, promtest.Near(1000))
	waitValue(t, env, "orders", s, metric, 10) // ceil(9.5 × 1s)
	dec := decisionOf(t, env.daemon, "orders")
	if dec["processingTimeSeconds"] != 1.0 || dec["processingTimeFrom"] != "measured" {
		t.Errorf("decision W = %v from %v, want 1 from measured", dec["processingTimeSeconds"], dec["processingTimeFrom"])
	}

	env.exporter.Set(promtest.Load{ProcessingTime: 500 * time.Millisecond, Consumed: 10})
	env.prom.WaitFor(t, meanQuery, guard, promtest.Near(500))
	waitValue(t, env, "orders", s, metric, 5) // ceil(9.5 × 0.5s)
	goodAt := time.Now()

	env.prom.Stop()
	// Within staleAfter of the last good measurement: still W = 500ms, and
	// the reason says so once a fresh queue reading (past readCacheTTL) has
	// been decided without Prometheus.
	for {
		ev := mustEvaluate(t, s, metric)
		inWindow := time.Since(goodAt) < staleAfter
		if inWindow && ev.Value != 5 {
			t.Errorf("%s after the last good measurement: %v, want 5 from the last good processing time", time.Since(goodAt).Round(time.Millisecond), ev.Value)
		}
		reason, _ := decisionOf(t, env.daemon, "orders")["reason"].(string)
		if strings.Contains(reason, "500ms is the last good reading") {
			break
		}
		if !inWindow {
			t.Fatalf("no decision within staleAfter %s said the processing time was the last good reading; last reason %q", staleAfter, reason)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Past staleAfter: the configured 200ms, ceil(9.5 × 0.2s) = 2 pods;
	// never an error or 0 on the way.
	waitValue(t, env, "orders", s, metric, 2)
	reason, _ := decisionOf(t, env.daemon, "orders")["reason"].(string)
	for _, want := range []string{"processing time from configured 200ms", "prometheus prometheus unreachable"} {
		if !strings.Contains(reason, want) {
			t.Errorf("reason %q does not contain %q", reason, want)
		}
	}
}

// TestBadPrometheusMetadata: consumer-metrics metadata flowscaler refuses
// reaches KEDA as InvalidArgument naming the key, the value and the rule.
func TestBadPrometheusMetadata(t *testing.T) {
	env := startCombinedEnv(t, time.Minute, promtest.Load{})
	cases := []struct {
		name string
		md   map[string]string
		want string
	}{
		{
			name: "query-does-not-parse",
			md:   streamMetadata("orders", "workers", map[string]string{"metrics": "prometheus", "processingQuery": "sum(rate(x[2m])"}),
			want: `processingQuery = "sum(rate(x[2m])": does not parse as PromQL: 1:16: parse error: unclosed left parenthesis`,
		},
		{
			name: "selector-is-not-matchers",
			md:   streamMetadata("orders", "workers", map[string]string{"metrics": "prometheus", "processingSelector": `service="a"}) or vector(1`}),
			want: `processingSelector = "service=\"a\"}) or vector(1": must be PromQL label matchers`,
		},
		{
			name: "metrics-on-redis",
			md:   streamMetadata("orders", "workers", map[string]string{"metrics": "local", "processingSelector": `service="a"`}),
			want: `metrics = "local": is a redis connection: consumer metrics need a prometheus connection`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newExternalScaler(t, env.daemon, tc.name, tc.md)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _, err := s.GetMetricsAndActivity(ctx, "s0-flowscaler-"+namespace+"-"+tc.name)
			st, ok := status.FromError(err)
			if !ok || st.Code() != codes.InvalidArgument {
				t.Fatalf("GetMetricsAndActivity error %v, want InvalidArgument", err)
			}
			if !strings.Contains(st.Message(), tc.want) {
				t.Errorf("message %q does not contain %q", st.Message(), tc.want)
			}
		})
	}
}
