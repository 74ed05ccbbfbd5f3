package scaler

import (
	"context"
	"math"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

func sbConfig(t testing.TB) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(`
connections:
  local: {type: redis, url: "redis://127.0.0.1:1"}
  bus:
    type: servicebus
    connectionStringFromEnv: SB
policy:
  defaults: {maxReplicas: 30}
`), func(k string) (string, bool) {
		if k == "SB" {
			return "Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKeyName=scaler;SharedAccessKey=a2V5", true
		}
		return "", false
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sbMetadata(kv ...string) map[string]string {
	md := map[string]string{"connection": "bus"}
	for i := 0; i+1 < len(kv); i += 2 {
		md[kv[i]] = kv[i+1]
	}
	return md
}

func TestParseServiceBusQuery(t *testing.T) {
	cfg := sbConfig(t)
	cases := []struct {
		name string
		md   map[string]string
		want sources.Query
	}{
		{"queue", sbMetadata("source", "servicebus-queue", "queue", "orders"),
			sources.Query{Kind: sources.ServiceBusQueue, Connection: "bus", Name: "orders"}},
		{"subscription", sbMetadata("source", "servicebus-subscription", "topic", "events", "subscription", "billing"),
			sources.Query{Kind: sources.ServiceBusSubscription, Connection: "bus", Name: "events", Group: "billing"}},
		{"queue-pattern-defaults-to-sum", sbMetadata("source", "servicebus-queue", "entityPattern", "orders-.*"),
			sources.Query{Kind: sources.ServiceBusQueue, Connection: "bus", Pattern: "orders-.*", Aggregation: "sum"}},
		{"subscription-pattern-avg", sbMetadata("source", "servicebus-subscription", "topic", "events", "entityPattern", "billing-[a-z]+", "aggregation", "avg"),
			sources.Query{Kind: sources.ServiceBusSubscription, Connection: "bus", Name: "events", Pattern: "billing-[a-z]+", Aggregation: "avg"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			obj, err := ParseObject(cfg, "shop", "orders", tc.md)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, obj.Query); d != "" {
				t.Errorf("query (-want +got):\n%s", d)
			}
		})
	}
}

func TestParseServiceBusErrors(t *testing.T) {
	cfg := sbConfig(t)
	cases := []struct {
		name string
		md   map[string]string
		want []string
	}{
		{"queue-missing", sbMetadata("source", "servicebus-queue"),
			[]string{`queue = "": required when source is servicebus-queue (or entityPattern to match several)`}},
		{"subscription-missing", sbMetadata("source", "servicebus-subscription", "topic", "events"),
			[]string{`subscription = "": required when source is servicebus-subscription (or entityPattern to match several)`}},
		{"topic-missing", sbMetadata("source", "servicebus-subscription", "subscription", "billing"),
			[]string{`topic = "": required when source is servicebus-subscription`}},
		{"topic-on-queue", sbMetadata("source", "servicebus-queue", "queue", "orders", "topic", "events"),
			[]string{`topic = "events": not used by source servicebus-queue: give queue`}},
		{"queue-on-subscription", sbMetadata("source", "servicebus-subscription", "topic", "events", "subscription", "b", "queue", "orders"),
			[]string{`queue = "orders": not used by source servicebus-subscription: give topic and subscription`}},
		{"both-name-and-pattern", sbMetadata("source", "servicebus-queue", "queue", "orders", "entityPattern", "orders-.*"),
			[]string{`entityPattern = "orders-.*": give queue or entityPattern, not both`}},
		{"bad-pattern", sbMetadata("source", "servicebus-queue", "entityPattern", "orders-(.*"),
			[]string{`entityPattern = "orders-(.*": must be a regular expression (RE2 syntax): missing closing ): `}},
		{"bad-aggregation", sbMetadata("source", "servicebus-queue", "entityPattern", "orders-.*", "aggregation", "median"),
			[]string{`aggregation = "median": must be sum, max or avg`}},
		{"aggregation-without-pattern", sbMetadata("source", "servicebus-queue", "queue", "orders", "aggregation", "max"),
			[]string{`aggregation = "max": only with entityPattern`}},
		{"redis-connection", map[string]string{"source": "servicebus-queue", "queue": "orders", "connection": "local"},
			[]string{`connection = "local": is a redis connection: source servicebus-queue needs a servicebus connection`}},
		{"servicebus-key-on-redis", map[string]string{"source": "redis-list", "list": "jobs", "connection": "local", "queue": "orders"},
			[]string{`queue = "orders": not used by source redis-list`}},
		{"stream-key-on-servicebus", sbMetadata("source", "servicebus-queue", "queue", "orders", "stream", "s"),
			[]string{`stream = "s": not used by source servicebus-queue`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseObject(cfg, "shop", "orders", tc.md)
			if err == nil {
				t.Fatal("ParseObject succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// sbScripted is a Reader whose Service Bus readings the test sets: the
// test is about the server's handling of dead letters, not about reading
// a broker.
type sbScripted struct {
	mu  sync.Mutex
	rd  sources.Reading
	now func() time.Time
}

func (s *sbScripted) Read(context.Context, sources.Query) (sources.Reading, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rd
	r.At = s.now()
	return r, nil
}

func (s *sbScripted) set(r sources.Reading) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rd = r
}

// TestDeadLetterSpike is the "DLQ spike": messages fail, are retried and
// dead-lettered while producers keep the active count flat. A count-based
// scaler runs to its maximum; flowscaler must not, and its reason and
// metrics must say that messages are failing.
func TestDeadLetterSpike(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)}
	rd := &sbScripted{now: clk.Now}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	srv, err := New(Options{Reader: rd, Config: sbConfig(t), Now: clk.Now, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	r := ref(sbMetadata("source", "servicebus-queue", "queue", "orders",
		"maxReplicas", "30", "targetAge", "30s", "processingTime", "2s", "concurrency", "1", "rateWindow", "60s"))
	reading := func(dead float64, deliveries int64) sources.Reading {
		return sources.Reading{Depth: 400, OldestAge: 20 * time.Second, OldestPendingIdle: -1, MaxDeliveries: deliveries,
			ProducedTotal: math.NaN(), ConsumedTotal: math.NaN(), DeadLetter: dead, Scheduled: 0}
	}

	// Healthy start: 400 messages, nobody failing yet. A count-based
	// scaler (messageCount 5) would want 80 pods, capped at 30.
	rd.set(reading(0, 1))
	ev, err := srv.Evaluate(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ev.Decision.Reason, "dead letters") {
		t.Errorf("reason %q speaks of dead letters before any grew", ev.Decision.Reason)
	}
	// Dead letters grow 5/s for a minute while the active count stays at
	// 400; the head messages have been delivered 8 times.
	var last Evaluation
	for i := 1; i <= 12; i++ {
		clk.Add(5 * time.Second)
		rd.set(reading(float64(25*i), 8))
		if last, err = srv.Evaluate(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		if last.Decision.Replicas >= 30 {
			t.Fatalf("after %ds of dead-lettering the target is %d: ran to maxReplicas; reason %q", 5*i, last.Decision.Replicas, last.Decision.Reason)
		}
	}
	for _, want := range []string{
		"dead letters growing 5/s (300 dead-lettered) while the active count is flat: messages are failing, not waiting for consumers",
		"stalled: oldest message delivered 8 times; scaling will not help",
	} {
		if !strings.Contains(last.Decision.Reason, want) {
			t.Errorf("reason %q does not contain %q", last.Decision.Reason, want)
		}
	}
	want := `
# HELP flowscaler_dead_letter_messages Dead-lettered messages of the queue (Service Bus: dead-letter and transfer-dead-letter subqueues); absent when the source has none.
# TYPE flowscaler_dead_letter_messages gauge
flowscaler_dead_letter_messages{namespace="shop",scaledobject="orders"} 300
# HELP flowscaler_dead_letter_rate Growth of the dead-lettered messages per second over the rate window; absent until measurable.
# TYPE flowscaler_dead_letter_rate gauge
flowscaler_dead_letter_rate{namespace="shop",scaledobject="orders"} 5
`
	if err := testutil.GatherAndCompare(m.Gatherers(reg), strings.NewReader(want), "flowscaler_dead_letter_messages", "flowscaler_dead_letter_rate"); err != nil {
		t.Error(err)
	}
	wantReason := `
# HELP flowscaler_decision_reason 1 for the class of the current decision: scale-up, steady, holding, idle, stalled, clamped-max or stale.
# TYPE flowscaler_decision_reason gauge
flowscaler_decision_reason{namespace="shop",reason="clamped-max",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="shop",reason="holding",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="shop",reason="idle",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="shop",reason="scale-up",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="shop",reason="stale",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="shop",reason="stalled",scaledobject="orders"} 1
flowscaler_decision_reason{namespace="shop",reason="steady",scaledobject="orders"} 0
`
	if err := testutil.GatherAndCompare(m.Gatherers(reg), strings.NewReader(wantReason), "flowscaler_decision_reason"); err != nil {
		t.Error(err)
	}
}

// TestDeadLetterRate: growth over about the rate window; a purge restarts
// the measurement; a source without dead letters has none.
func TestDeadLetterRate(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	rd := func(dead, active float64) sources.Reading { return sources.Reading{DeadLetter: dead, Depth: active} }
	cases := []struct {
		name  string
		steps []struct {
			at           int
			dead, active float64
		}
		rate float64 // NaN: not measurable
		flat bool
	}{
		{"too-soon", []struct {
			at           int
			dead, active float64
		}{{0, 0, 10}, {0, 5, 10}}, math.NaN(), false},
		{"steady-growth", []struct {
			at           int
			dead, active float64
		}{{0, 0, 10}, {10, 20, 10}, {20, 40, 10}}, 2, true},
		{"window-is-60s", []struct {
			at           int
			dead, active float64
		}{{0, 0, 10}, {30, 300, 10}, {60, 330, 12}, {90, 360, 12}}, 1, false},
		{"purge-restarts", []struct {
			at           int
			dead, active float64
		}{{0, 100, 10}, {10, 200, 10}, {20, 0, 10}, {30, 10, 10}}, 1, true},
		{"active-growing", []struct {
			at           int
			dead, active float64
		}{{0, 0, 10}, {10, 10, 50}}, 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var m deadLetterMemory
			var got DeadLetters
			for _, s := range tc.steps {
				got = m.observe(rd(s.dead, s.active), at(s.at), time.Minute)
			}
			if !(got.Rate == tc.rate || math.IsNaN(got.Rate) && math.IsNaN(tc.rate)) || got.ActiveFlat != tc.flat {
				t.Errorf("rate %v flat %v, want %v %v", got.Rate, got.ActiveFlat, tc.rate, tc.flat)
			}
		})
	}
	var m deadLetterMemory
	if got := m.observe(sources.Reading{DeadLetter: math.NaN()}, t0, time.Minute); !math.IsNaN(got.Count) || !math.IsNaN(got.Rate) || got.note() != "" {
		t.Errorf("unknown dead letters: %+v, note %q; want unknown and no note", got, got.note())
	}
}

// FuzzParseServiceBusQuery: whatever the metadata, parsing never panics,
// every refusal says why, and an accepted query names exactly one entity
// or a pattern that compiles, with a known aggregation.
func FuzzParseServiceBusQuery(f *testing.F) {
	cfg := sbConfig(f)
	f.Add("servicebus-queue", "orders", "", "", "", "")
	f.Add("servicebus-subscription", "", "events", "billing", "", "")
	f.Add("servicebus-queue", "", "", "", "orders-.*", "avg")
	f.Add("servicebus-subscription", "", "events", "", "(a|b", "median")
	f.Fuzz(func(t *testing.T, source, queue, topic, sub, pattern, agg string) {
		md := map[string]string{"source": source, "connection": "bus"}
		for k, v := range map[string]string{"queue": queue, "topic": topic, "subscription": sub, "entityPattern": pattern, "aggregation": agg} {
			if v != "" {
				md[k] = v
			}
		}
		obj, err := ParseObject(cfg, "ns", "name", md)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		q := obj.Query
		switch {
		case q.Kind != sources.ServiceBusQueue && q.Kind != sources.ServiceBusSubscription:
			t.Fatalf("accepted source %q", q.Kind)
		case q.Pattern == "" && (q.Aggregation != "" || q.Kind == sources.ServiceBusQueue && q.Name == "" || q.Kind == sources.ServiceBusSubscription && (q.Name == "" || q.Group == "")):
			t.Fatalf("accepted a query naming no entity: %+v", q)
		case q.Pattern != "" && q.Aggregation != "sum" && q.Aggregation != "max" && q.Aggregation != "avg":
			t.Fatalf("accepted aggregation %q", q.Aggregation)
		case q.Pattern != "" && q.Group != "":
			t.Fatalf("accepted both a subscription and a pattern: %+v", q)
		}
		if q.Pattern != "" {
			if _, err := regexp.Compile("^(?:" + q.Pattern + ")$"); err != nil {
				t.Fatalf("accepted pattern %q: %v", q.Pattern, err)
			}
		}
	})
}
