package keda

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flowscaler/flowscaler/sources/promtest"
	"github.com/flowscaler/flowscaler/sources/sbtest"
)

// The Service Bus tests run flowscaler's real SDK against local fakes of
// the management API (ATOM over TLS, trusted through SSL_CERT_FILE) and of
// AMQP peek and CBS (the emulator's plaintext transport). The fakes check
// flowscaler's use of the SDK, not the service's behaviour.

const (
	sbKeyName = "RootManageSharedAccessKey"
	sbKey     = "Y29uZm9ybWFuY2Uta2V5LW5vdC1hLXNlY3JldA=="
)

// sbEnv is both fakes and a flowscaler with a servicebus connection "bus".
type sbEnv struct {
	mgmt   *sbtest.Management
	amqp   *sbtest.AMQP
	state  sbtest.State
	daemon *daemon
}

// startSBEnv starts the fakes and a daemon; extra is appended to the
// config (another connection, queries).
func startSBEnv(t *testing.T, extra string) *sbEnv {
	t.Helper()
	e := &sbEnv{
		mgmt:  sbtest.StartManagement(t, sbtest.ManagementOptions{Fixtures: "../../sources/testdata/servicebus", KeyName: sbKeyName, Key: sbKey}),
		state: sbtest.State{KeyName: sbKeyName, Key: sbKey, Entities: map[string]sbtest.Entity{}},
	}
	e.amqp = sbtest.StartAMQP(t, e.state)
	// The daemon inherits these: the connection string (a secret, so from
	// the environment) and trust in the management fake's certificate.
	t.Setenv("FLOWSCALER_TEST_SB", e.mgmt.ConnectionString(";UseDevelopmentEmulator=true"))
	t.Setenv("SSL_CERT_FILE", e.mgmt.CAFile)
	cfg := fmt.Sprintf(`server:
  readTimeout: 2s
  staleAfter: 60s
connections:
  bus:
    type: servicebus
    connectionStringFromEnv: FLOWSCALER_TEST_SB
    emulator: true
    amqpEndpoint: %s
%s`, e.amqp.Host, extra)
	e.daemon = startDaemon(t, daemonOptions{Config: cfg})
	return e
}

func (e *sbEnv) set(t *testing.T, path string, c sbtest.Counts, msgs ...sbtest.Message) {
	t.Helper()
	if topic, sub, ok := strings.Cut(path, "/Subscriptions/"); ok {
		e.mgmt.SetSubscription(topic, sub, c)
	} else {
		e.mgmt.SetQueue(path, c)
	}
	e.state.Entities[path] = sbtest.Entity{Messages: msgs}
	e.amqp.Set(t, e.state)
}

func sbMetadata(extra map[string]string, kv ...string) map[string]string {
	md := map[string]string{"connection": "bus"}
	for i := 0; i+1 < len(kv); i += 2 {
		md[kv[i]] = kv[i+1]
	}
	for k, v := range extra {
		md[k] = v
	}
	return md
}

// oldMessages are n active messages enqueued age ago, behind a scheduled
// and a deferred one that are older still and must not count.
func oldMessages(n int, age time.Duration, deliveries uint32) []sbtest.Message {
	at := time.Now().Add(-age)
	due := time.Now().Add(time.Hour)
	msgs := []sbtest.Message{
		{SequenceNumber: 1, EnqueuedTime: at.Add(-time.Hour), State: "scheduled", ScheduledEnqueueTime: &due},
		{SequenceNumber: 2, EnqueuedTime: at.Add(-time.Hour), State: "deferred"},
	}
	for i := range n {
		msgs = append(msgs, sbtest.Message{SequenceNumber: int64(3 + i), EnqueuedTime: at, DeliveryCount: deliveries})
	}
	return msgs
}

// TestServiceBusReplicaTargets: KEDA's external and external-push scalers
// get replica targets for a queue and a topic subscription from the active
// count and the oldest active message's age (hours old: urgency 4):
//
//	replicas = ceil(active ÷ 10s × 2s × 4 ÷ 2)
//
// Scheduled messages (120 of them on the queue) do not count.
func TestServiceBusReplicaTargets(t *testing.T) {
	e := startSBEnv(t, "")
	e.set(t, "orders", sbtest.Counts{Active: 100, Scheduled: 120, DeadLetter: 3}, oldMessages(5, hoursOld, 1)...)
	e.set(t, "events/Subscriptions/billing", sbtest.Counts{Active: 50}, oldMessages(5, hoursOld, 1)...)

	cases := []struct {
		name string
		md   map[string]string
		want float64
	}{
		{"orders", sbMetadata(drainParams, "source", "servicebus-queue", "queue", "orders"), 40},
		{"billing", sbMetadata(drainParams, "source", "servicebus-subscription", "topic", "events", "subscription", "billing"), 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newExternalScaler(t, e.daemon, tc.name, tc.md)
			ev := mustEvaluate(t, s, metricName(t, s))
			if ev.Value != tc.want || !ev.Active {
				t.Errorf("GetMetricsAndActivity = (%v, active=%v), want (%v, active=true); decision: %v",
					ev.Value, ev.Active, tc.want, decisionOf(t, e.daemon, tc.name)["reason"])
			}
		})
	}

	t.Run("external-push", func(t *testing.T) {
		e.set(t, "quiet", sbtest.Counts{Scheduled: 7})
		s := newExternalPushScaler(t, e.daemon, "quiet", sbMetadata(drainParams, "source", "servicebus-queue", "queue", "quiet"))
		ctx, cancel := context.WithCancel(context.Background())
		active := make(chan bool)
		done := make(chan struct{})
		go func() { defer close(done); s.Run(ctx, active) }()
		t.Cleanup(func() {
			cancel()
			for range active {
			}
			<-done
		})
		recv := func() bool {
			select {
			case v := <-active:
				return v
			case <-time.After(guard):
				t.Fatalf("nothing on the activity channel in %s", guard)
			}
			return false
		}
		if recv() {
			t.Fatal("first activity = true for a queue holding only scheduled messages")
		}
		e.set(t, "quiet", sbtest.Counts{Active: 1, Scheduled: 7}, oldMessages(1, time.Second, 1)...)
		if !recv() {
			t.Fatal("activity = false after a message became active")
		}
	})
}

// TestServiceBusWithPrometheusMetrics: a queue combined with its
// consumers' processing time from a real Prometheus. 1140 fresh active
// messages, targetAge 2m, concurrency 1: 1140 ÷ 120s × W pods.
func TestServiceBusWithPrometheusMetrics(t *testing.T) {
	exp := promtest.StartExporter(t, promtest.ExporterOptions{})
	exp.Set(promtest.Load{ProcessingTime: time.Second, Consumed: 10})
	prom := promtest.Start(t, promtest.Options{Targets: []promtest.Target{{
		Job: "order-processor", URL: exp.URL, Labels: map[string]string{"service": "order-processor"},
	}}})
	e := startSBEnv(t, fmt.Sprintf(`  prometheus:
    type: prometheus
    url: %s
    timeout: 1s
queries:
  window: %s
  cacheTTL: 200ms
`, prom.URL(), promWindow))
	e.set(t, "orders", sbtest.Counts{Active: 1140}, oldMessages(3, time.Second, 1)...)
	s := newExternalScaler(t, e.daemon, "orders", sbMetadata(map[string]string{
		"metrics":            "prometheus",
		"processingSelector": `service="order-processor"`,
		"processingTime":     "200ms",
		"targetAge":          "2m",
		"concurrency":        "1",
		"scaleDownCooldown":  "0s",
	}, "source", "servicebus-queue", "queue", "orders"))
	metric := metricName(t, s)
	prom.WaitFor(t, meanQuery, guard, promtest.Near(1000))
	deadline := time.Now().Add(guard)
	for {
		ev := mustEvaluate(t, s, metric)
		if ev.Value == 10 { // ceil(9.5 × 1s)
			break
		}
		if ev.Value == 0 || !ev.Active {
			t.Fatalf("GetMetricsAndActivity = (%v, active=%v) with messages waiting", ev.Value, ev.Active)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GetMetricsAndActivity = %v after %s, want 10; decision: %v", ev.Value, guard, decisionOf(t, e.daemon, "orders")["reason"])
		}
		time.Sleep(100 * time.Millisecond)
	}
	if dec := decisionOf(t, e.daemon, "orders"); dec["processingTimeFrom"] != "measured" {
		t.Errorf("processing time from %v, want measured", dec["processingTimeFrom"])
	}
}

// TestServiceBusDeadLetterSpike: dead letters grow while the active count
// stays flat. The target does not run to maxReplicas, and the reason and
// the metrics say that messages are failing.
func TestServiceBusDeadLetterSpike(t *testing.T) {
	e := startSBEnv(t, "")
	// The head messages have been delivered 8 times: they fail.
	msgs := oldMessages(5, 20*time.Second, 8)
	e.set(t, "orders", sbtest.Counts{Active: 400}, msgs...)
	s := newExternalScaler(t, e.daemon, "orders", sbMetadata(map[string]string{
		"targetAge": "30s", "processingTime": "2s", "concurrency": "1", "maxReplicas": "30", "rateWindow": "10s",
	}, "source", "servicebus-queue", "queue", "orders"))
	metric := metricName(t, s)
	var reason string
	for i := 1; ; i++ {
		e.set(t, "orders", sbtest.Counts{Active: 400, DeadLetter: int32(40 * i)}, msgs...)
		ev := mustEvaluate(t, s, metric)
		if ev.Value >= 30 || ev.Value == 0 {
			t.Fatalf("target %v with dead letters growing: want between 1 and maxReplicas-1", ev.Value)
		}
		reason, _ = decisionOf(t, e.daemon, "orders")["reason"].(string)
		if strings.Contains(reason, "dead letters growing") {
			break
		}
		if i > 20 {
			t.Fatalf("no reason mentioned the dead letters after %d polls; last %q", i, reason)
		}
		// Past readCacheTTL: this poll starts a new reading, the next sees it.
		time.Sleep(readCacheTTL + 100*time.Millisecond)
	}
	for _, want := range []string{"while the active count is flat: messages are failing", "stalled: oldest message delivered 8 times"} {
		if !strings.Contains(reason, want) {
			t.Errorf("reason %q does not contain %q", reason, want)
		}
	}
	metrics := e.daemon.get("/metrics")
	for _, want := range []string{`flowscaler_dead_letter_messages{namespace="conformance",scaledobject="orders"}`, `flowscaler_dead_letter_rate{namespace="conformance",scaledobject="orders"}`,
		`flowscaler_decision_reason{namespace="conformance",reason="stalled",scaledobject="orders"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestServiceBusMissingEntity: a queue that does not exist reaches KEDA as
// Unavailable naming it, never as 0 or inactive.
func TestServiceBusMissingEntity(t *testing.T) {
	e := startSBEnv(t, "")
	s := newExternalScaler(t, e.daemon, "ghost", sbMetadata(drainParams, "source", "servicebus-queue", "queue", "ghost"))
	ev := evaluate(t, s, metricName(t, s))
	st, ok := status.FromError(ev.Err)
	if !ok || st.Code() != codes.Unavailable {
		t.Fatalf("GetMetricsAndActivity = (%v, %v, %v), want Unavailable", ev.Value, ev.Active, ev.Err)
	}
	if want := `servicebus-queue bus/ghost: read failed: queue "ghost": entity does not exist`; !strings.Contains(st.Message(), want) {
		t.Errorf("message %q does not contain %q", st.Message(), want)
	}
}

// TestServiceBusThrottledServesLastGood: when the namespace throttles,
// KEDA keeps getting the last good target (marked stale in the reason),
// never a 0, and flowscaler stops asking until Retry-After has passed.
func TestServiceBusThrottledServesLastGood(t *testing.T) {
	e := startSBEnv(t, "")
	e.set(t, "orders", sbtest.Counts{Active: 100}, oldMessages(5, hoursOld, 1)...)
	s := newExternalScaler(t, e.daemon, "orders", sbMetadata(drainParams, "source", "servicebus-queue", "queue", "orders"))
	metric := metricName(t, s)
	if ev := mustEvaluate(t, s, metric); ev.Value != 40 {
		t.Fatalf("before throttling: %v, want 40", ev.Value)
	}
	before := e.mgmt.Requests("/orders")
	e.mgmt.Throttle(1, 30*time.Second)
	time.Sleep(readCacheTTL + readCacheGrace + 100*time.Millisecond) // the next poll reads
	for i := range 3 {
		ev := mustEvaluate(t, s, metric)
		if ev.Value != 40 || !ev.Active {
			t.Fatalf("poll %d while throttled: (%v, active=%v), want the last good (40, active=true)", i+1, ev.Value, ev.Active)
		}
		time.Sleep(1100 * time.Millisecond)
	}
	dec := decisionOf(t, e.daemon, "orders")
	if staleErr, _ := dec["staleError"].(string); dec["stale"] != true || !strings.Contains(staleErr, "throttled by Service Bus (HTTP 429)") {
		t.Errorf("decision stale=%v staleError=%q, want stale because Service Bus throttles", dec["stale"], staleErr)
	}
	if got := e.mgmt.Requests("/orders") - before; got != 1 {
		t.Errorf("%d requests reached the throttled namespace within its Retry-After, want 1", got)
	}
}
