package scaler

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
	"github.com/flowscaler/flowscaler/sources/promtest"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

// seedMean is the default processingMean template rendered for the test
// selector and window, as Prometheus is asked it.
func seedMean(t testing.TB, window string) string {
	t.Helper()
	d, err := time.ParseDuration(window)
	if err != nil {
		t.Fatal(err)
	}
	q, err := config.RenderQuery(config.DefaultQueries().ProcessingMean, `service="order-processor"`, d)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// consumersWorld is a real redis-server with a stream consumer group, the
// seed's exporter, and a real Prometheus scraping it every second.
type consumersWorld struct {
	redis    *redistest.Server
	rdb      *redis.Client
	exporter *promtest.Exporter
	prom     *promtest.Server
}

func startConsumersWorld(t *testing.T, load promtest.Load) *consumersWorld {
	t.Helper()
	rs := redistest.Start(t)
	exp := promtest.StartExporter(t, promtest.ExporterOptions{})
	exp.Set(load)
	prom := promtest.Start(t, promtest.Options{Targets: []promtest.Target{{
		Job: "order-processor", URL: exp.URL, Labels: map[string]string{"service": "order-processor"},
	}}})
	w := &consumersWorld{redis: rs, rdb: rs.Client(t), exporter: exp, prom: prom}
	if err := w.rdb.XGroupCreateMkStream(context.Background(), "orders", "workers", "$").Err(); err != nil {
		t.Fatal(err)
	}
	return w
}

// produceAndConsume adds n entries and has a consumer read and acknowledge
// them: the stream's entries-added grows by n, the backlog stays empty.
func (w *consumersWorld) produceAndConsume(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if err := w.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "orders", Values: []any{"n", i}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	res, err := w.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "c", Streams: []string{"orders", ">"}, Count: int64(n), Block: -1}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range res[0].Messages {
		if err := w.rdb.XAck(ctx, "orders", "workers", m.ID).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func (w *consumersWorld) config(t *testing.T) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(fmt.Sprintf(`
connections:
  local: {type: redis, url: %q}
  monitoring: {type: prometheus, url: %q}
queries:
  window: 3s
`, w.redis.URL(), w.prom.URL())), func(string) (string, bool) { return "", false }, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A Redis stream plus the consumers' own metrics: the throughput term
// λ·W ÷ u follows the arrival rate measured on the stream and the
// processing time measured by Prometheus; a failure spike shows in the
// inputs; a Prometheus outage falls back to last good, then configured.
// The server's clock is virtual, so λ is exact; Prometheus runs in real
// time and is polled until it has scraped what the exporter did.
func TestStreamWithPrometheusMetrics(t *testing.T) {
	w := startConsumersWorld(t, promtest.Load{ProcessingTime: 200 * time.Millisecond, Consumed: 10})
	cfg := w.config(t)
	clk := &clock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)}
	rd := sources.NewRedis(sources.RedisOptions{Now: clk.Now})
	t.Cleanup(func() { _ = rd.Close() })
	if err := rd.SetConnections(redisConnections(cfg)); err != nil {
		t.Fatal(err)
	}
	pq := sources.NewPrometheusQuerier(sources.PrometheusOptions{})
	t.Cleanup(func() { _ = pq.Close() })
	if err := pq.SetConnections(prometheusConnections(cfg)); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{Reader: rd, MetricsReader: sources.NewPrometheusReader(pq, clk.Now), Config: cfg, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	r := ref(combined("concurrency", "1", "prefetch", "1", "targetAge", "10s", "processingTime", "5s", "scaleDownCooldown", "0s"))
	eval := func(step string) Evaluation {
		t.Helper()
		ev, err := srv.Evaluate(context.Background(), r)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		t.Logf("%s: %d replicas: %s", step, ev.Decision.Replicas, ev.Decision.Reason)
		return ev
	}
	mean := seedMean(t, "3s")

	w.prom.WaitFor(t, mean, 30*time.Second, promtest.Near(200))
	eval("first look") // λ needs two samples
	w.produceAndConsume(t, 100)
	clk.Add(10 * time.Second)
	at200 := eval("100 messages in 10s at 200ms")
	// λ = 100 ÷ 10s = 10/s, W = 0.2s: A = λ·W = 2 busy slots, 2.5 at u = 0.8.
	checkTerms(t, "at 200ms", at200, 10, 200*time.Millisecond)
	if c := at200.Consumers; c.ProcessingTime.From != fromMeasured || !(c.ConsumptionRate.Value > 0) || c.FailureRate.Value != 0 {
		t.Errorf("consumer inputs %+v: want measured W, a consumption rate and no failures", c)
	}

	w.exporter.Set(promtest.Load{ProcessingTime: 400 * time.Millisecond, Consumed: 10})
	w.prom.WaitFor(t, mean, 30*time.Second, promtest.Near(400))
	w.produceAndConsume(t, 100)
	clk.Add(10 * time.Second)
	at400 := eval("100 more in 10s at 400ms")
	// Doubling W doubles the offered load: A = 4, 5 slots at u = 0.8.
	checkTerms(t, "at 400ms", at400, 10, 400*time.Millisecond)
	if r := at400.Decision.Terms.SteadySlots / at200.Decision.Terms.SteadySlots; r < 4.0/2.5 || r > 5.0/2 {
		t.Errorf("steady slots %v → %v after doubling W: ratio %v, want about 2 (within [A, A ÷ u] both times)",
			at200.Decision.Terms.SteadySlots, at400.Decision.Terms.SteadySlots, r)
	}

	w.exporter.Set(promtest.Load{ProcessingTime: 400 * time.Millisecond, Consumed: 10, Failed: 6})
	w.prom.WaitFor(t, `sum(rate(`+promtest.FailedCounter+`{service="order-processor"}[3s]))`, 30*time.Second, func(v float64) bool { return v > 0 })
	w.produceAndConsume(t, 100)
	clk.Add(10 * time.Second)
	spike := eval("failure spike")
	if f := spike.Consumers.FailureRate; f.From != fromMeasured || !(f.Value > 0) {
		t.Errorf("failure rate %+v during the spike, want measured > 0", f)
	}
	if !strings.Contains(spike.Decision.Reason, "consumers failing") {
		t.Errorf("reason %q does not mention the failures", spike.Decision.Reason)
	}

	// A backlog so the outage has something to decide about: drain
	// 40 ÷ 10s × W.
	if err := w.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: "orders", Values: []any{"n", 0}}).Err(); err != nil {
		t.Fatal(err)
	}
	for range 39 {
		w.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: "orders", Values: []any{"n", 0}})
	}
	w.prom.Stop()
	clk.Add(10 * time.Second)
	lastGood := eval("prometheus stopped")
	if p := lastGood.Consumers.ProcessingTime; p.From != fromLastGood || lastGood.Decision.Terms.ProcessingTime != 400*time.Millisecond {
		t.Errorf("processing time %+v (W %v) during the outage, want the last good 400ms", p, lastGood.Decision.Terms.ProcessingTime)
	}
	if !strings.Contains(lastGood.Decision.Reason, "400ms is the last good reading, 10s old") || !strings.Contains(lastGood.Decision.Reason, "prometheus monitoring unreachable") {
		t.Errorf("reason %q does not say W is the last good reading and why", lastGood.Decision.Reason)
	}
	clk.Add(time.Minute)
	configured := eval("prometheus stopped past staleAfter")
	if p := configured.Consumers.ProcessingTime; p.From != fromConfigured || configured.Decision.Terms.ProcessingTime != 5*time.Second {
		t.Errorf("processing time %+v (W %v) past staleAfter, want the configured 5s", p, configured.Decision.Terms.ProcessingTime)
	}
	if !strings.Contains(configured.Decision.Reason, "processing time from configured 5s: processingMean: prometheus monitoring unreachable") {
		t.Errorf("reason %q does not say W fell back to the configured value and why", configured.Decision.Reason)
	}
	// 40 waiting ÷ 10s × 5s = 20 slots: the outage raised W; it never
	// lowers the target.
	if d := configured.Decision.Terms.DrainSlots; d < 20 || configured.Decision.Replicas < lastGood.Decision.Replicas {
		t.Errorf("past staleAfter: drain %v slots, replicas %d (before: %d); want >= 20 slots and no drop",
			d, configured.Decision.Replicas, lastGood.Decision.Replicas)
	}
}

// checkTerms checks λ and the measured W, and that the throughput term is
// between the offered load A = λ·W (busy slots, Little's law) and A ÷ u
// (the slots that keep them at utilisation u = 0.8), with the pods for it.
func checkTerms(t *testing.T, step string, ev Evaluation, arrival float64, w time.Duration) {
	t.Helper()
	tm := ev.Decision.Terms
	a := arrival * w.Seconds()
	if math.Abs(tm.ArrivalRate-arrival) > 1e-9 || tm.ProcessingTime != w || tm.SteadySlots < a-1e-9 || tm.SteadySlots > a/0.8+1e-9 ||
		tm.Raw != int(math.Ceil(tm.SteadySlots-1e-9)) {
		t.Errorf("%s: λ %v, W %v, steady %v slots, raw %d pods; want λ %v, W %v, steady in [%v, %v], raw = ceil(steady ÷ 1) (reason %q)",
			step, tm.ArrivalRate, tm.ProcessingTime, tm.SteadySlots, tm.Raw, arrival, w, a, a/0.8, ev.Decision.Reason)
	}
}

// The whole daemon: a combined object's decision explains its consumer
// inputs on /debug/decisions and exports them on /metrics.
func TestDaemonCombinedObject(t *testing.T) {
	w := startConsumersWorld(t, promtest.Load{ProcessingTime: 250 * time.Millisecond, Consumed: 10})
	d := startDaemon(t, fmt.Sprintf(`
server: {readTimeout: 1s, readCacheTTL: 100ms}
connections:
  local: {type: redis, url: %q}
  monitoring: {type: prometheus, url: %q, timeout: 1s}
queries: {window: 3s, cacheTTL: 100ms}
`, w.redis.URL(), w.prom.URL()))
	w.prom.WaitFor(t, seedMean(t, "3s"), 30*time.Second, promtest.Near(250))
	r := &pb.ScaledObjectRef{Namespace: "shop", Name: "orders", ScalerMetadata: combined("processingTime", "2s")}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := callKEDAWay(ctx, d.client, r); err != nil {
		t.Fatal(err)
	}

	code, body := d.get(t, "/debug/decisions")
	if code != http.StatusOK {
		t.Fatalf("/debug/decisions: %d %s", code, body)
	}
	var got []ExplainedDecision
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	if len(got) != 1 || got[0].Consumers == nil {
		t.Fatalf("decisions = %s, want one with consumer metrics", body)
	}
	c := got[0].Consumers
	if c.Source != "prometheus monitoring" || c.ProcessingTime.Value == nil || *c.ProcessingTime.Value != 0.25 || c.ProcessingTime.From != fromMeasured || got[0].ProcessingFrom != fromMeasured {
		t.Errorf("consumer metrics %s: want the measured 0.25s from prometheus monitoring", body)
	}

	_, metrics := d.get(t, "/metrics")
	for _, want := range []string{
		`flowscaler_processing_time_seconds{namespace="shop",scaledobject="orders"} 0.25`,
		`flowscaler_processing_time_from{from="measured",namespace="shop",scaledobject="orders"} 1`,
		`flowscaler_failure_rate{namespace="shop",scaledobject="orders"} 0`,
		`flowscaler_prometheus_queries_total{connection="monitoring",result="ok"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// A template that does not parse is refused on reload, naming the
// template and the parser's error; the daemon keeps its config.
func TestDaemonReloadRefusesBadTemplate(t *testing.T) {
	rs := redistest.Start(t)
	good := daemonConfig(rs.URL(), "60s")
	d := startDaemon(t, good)
	bad := good + "queries:\n  failureRate: 'sum(rate(messaging_messages_failed_total{ {{.Selector}} }[{{.Window}}])'\n"
	if err := os.WriteFile(d.path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		_, m := d.get(t, "/metrics")
		return strings.Contains(m, "flowscaler_config_last_reload_successful 0")
	})
	_, err := config.Parse([]byte(bad), func(string) (string, bool) { return "", false }, nil)
	if want := `queries.failureRate = "sum(rate(messaging_messages_failed_total{ {{.Selector}} }[{{.Window}}])": does not parse as PromQL: 1:67: parse error: unclosed left parenthesis`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want it to contain %q", err, want)
	}
}
