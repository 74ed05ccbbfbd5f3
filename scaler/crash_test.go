package scaler

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/policy"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

// crashStep is what one poll saw and served after a step of the scenario.
type crashStep struct {
	Depth, InFlight float64
	MaxDeliveries   int64
	// Floor is the in-flight floor, ceil(in flight ÷ prefetch).
	Floor    int
	Replicas int
	Active   bool
}

// crashWorld is a real redis-server, a stream "orders" with group
// "workers", and a server reading it on a virtual clock (the reader stamps
// its readings with the same clock, so rates and cooldowns follow it).
type crashWorld struct {
	rdb *redis.Client
	srv *Server
	clk *clock
}

func startCrashWorld(t *testing.T) *crashWorld {
	t.Helper()
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	if err := rdb.XGroupCreateMkStream(context.Background(), "orders", "workers", "$").Err(); err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)}
	cfg, err := config.Parse(fmt.Appendf(nil, "connections:\n  local: {type: redis, url: %q}\n", rs.URL()),
		func(string) (string, bool) { return "", false }, nil)
	if err != nil {
		t.Fatal(err)
	}
	reader := sources.NewRedis(sources.RedisOptions{Now: clk.Now})
	t.Cleanup(func() { _ = reader.Close() })
	if err := reader.SetConnections(redisConnections(cfg)); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{Reader: reader, Config: cfg, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return &crashWorld{rdb: rdb, srv: srv, clk: clk}
}

// crashRef: one pod works on one message at a time for 1s, the objective is
// 30s, nothing is kept warm (minReplicas 0) and a higher target is held for
// a minute.
func crashRef() map[string]string {
	return stream("minReplicas", "0", "concurrency", "1", "prefetch", "1", "processingTime", "1s",
		"targetAge", "30s", "scaleDownCooldown", "1m")
}

// poll asks as KEDA does (GetMetrics, then IsActive) and returns what the
// decision was made from and what was served.
func (w *crashWorld) poll(t *testing.T) (crashStep, policy.Decision) {
	t.Helper()
	r := ref(crashRef())
	v, err := metricValue(t, w.srv, r)
	if err != nil {
		t.Fatalf("GetMetrics: %v", err)
	}
	act, err := w.srv.IsActive(context.Background(), r)
	if err != nil {
		t.Fatalf("IsActive: %v", err)
	}
	ev, err := w.srv.Evaluate(context.Background(), r)
	if err != nil {
		t.Fatalf("Evaluate: %v", err)
	}
	if int(v) != ev.Decision.Replicas || act.Result != ev.Decision.Active {
		t.Fatalf("served %v/%v but the decision is %d/%v", v, act.Result, ev.Decision.Replicas, ev.Decision.Active)
	}
	return crashStep{
		Depth: ev.Reading.Depth, InFlight: ev.Reading.InFlight, MaxDeliveries: ev.Reading.MaxDeliveries,
		Floor: ev.Decision.Terms.InFlightFloor, Replicas: int(v), Active: act.Result,
	}, ev.Decision
}

func (w *crashWorld) add(t *testing.T) {
	t.Helper()
	if err := w.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: "orders", Values: []string{"n", "1"}}).Err(); err != nil {
		t.Fatal(err)
	}
}

// deliver hands the next entry to consumer, which does not acknowledge it.
func (w *crashWorld) deliver(t *testing.T, consumer string) string {
	t.Helper()
	res, err := w.rdb.XReadGroup(context.Background(), &redis.XReadGroupArgs{
		Group: "workers", Consumer: consumer, Streams: []string{"orders", ">"}, Count: 1, Block: -1,
	}).Result()
	if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
		t.Fatalf("XREADGROUP by %s: %v, %v; want one entry", consumer, res, err)
	}
	return res[0].Messages[0].ID
}

// claim is what a surviving consumer does: XAUTOCLAIM whatever has been
// pending at all (min-idle 0: the virtual clock, not Redis's, measures the
// time that passed).
func (w *crashWorld) claim(t *testing.T, consumer, id string) {
	t.Helper()
	msgs, _, err := w.rdb.XAutoClaim(context.Background(), &redis.XAutoClaimArgs{
		Stream: "orders", Group: "workers", Consumer: consumer, Start: "0-0", Count: 10,
	}).Result()
	if err != nil || len(msgs) != 1 || msgs[0].ID != id {
		t.Fatalf("XAUTOCLAIM by %s: %v, %v; want entry %s", consumer, msgs, err, id)
	}
}

func (w *crashWorld) ack(t *testing.T, id string) {
	t.Helper()
	if n, err := w.rdb.XAck(context.Background(), "orders", "workers", id).Result(); err != nil || n != 1 {
		t.Fatalf("XACK %s: %d, %v", id, n, err)
	}
}

// A consumer crashes mid-processing: the entry it was given stays pending
// until another consumer claims it and acknowledges it. Throughout, the
// entry is in-flight work, never backlog (the group's lag excludes it), and
// the target never falls below the one pod it needs (the in-flight floor,
// ceil(1 ÷ prefetch 1) = 1): with minReplicas 0 the object stays active at
// 1 replica however long the entry waits, well past the scale-down
// cooldown. Once it is acknowledged nothing holds the target but the
// ordinary cooldown of the arrival-rate part, and IsActive turns false so
// that KEDA's cooldownPeriod decides when the last pod goes.
//
// The arrival rate is measured from entries-added: 1 entry in the first 2s
// is 0.5/s × 1s ÷ 0.8 = 0.63 busy slots, 1 pod; it is 0 once the entry has
// left the 60s rate window, and a held recommendation made for a rate more
// than twice today's is let go at once (see policy.stabilise).
func TestConsumerCrashesMidProcessing(t *testing.T) {
	pending := crashStep{InFlight: 1, MaxDeliveries: 1, Floor: 1, Replicas: 1, Active: true}
	cases := []struct {
		name string
		// pendingFor is how long the entry stays pending, as the virtual
		// clock sees it, before c2 claims it.
		pendingFor time.Duration
		// afterAck are the polls after XACK (time since XACK) and what
		// each must see and serve.
		afterAck []time.Duration
		wantAck  []crashStep
	}{
		{
			// The arrival left the rate window minutes ago: once the entry
			// is acknowledged nothing is held.
			name:       "claimed long after the cooldown",
			pendingFor: 10 * time.Minute,
			afterAck:   []time.Duration{time.Second},
			wantAck:    []crashStep{{}},
		},
		{
			// The arrival is still in the rate window at XACK: its 1 pod
			// stays until the rate falls to 0, then the target is 0.
			name:       "claimed within the cooldown",
			pendingFor: 5 * time.Second,
			afterAck:   []time.Duration{time.Second, 2 * time.Minute},
			wantAck:    []crashStep{{Replicas: 1}, {}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := startCrashWorld(t)
			var got, want []crashStep
			check := func(step string, wantStep crashStep) {
				t.Helper()
				s, d := w.poll(t)
				t.Logf("%s: %d replicas, active %v: %s", step, s.Replicas, s.Active, d.Reason)
				got, want = append(got, s), append(want, wantStep)
				// When nothing but the pending entry asks for a pod, the
				// reason must say so.
				if s.InFlight > 0 && d.Terms.Raw == 0 && d.Terms.HeldUntil.IsZero() && !strings.Contains(d.Reason, "in-flight floor 1 ÷ prefetch 1 per pod = 1") {
					t.Errorf("%s: reason %q does not say the in-flight entry holds the target", step, d.Reason)
				}
			}

			check("empty", crashStep{})
			w.clk.Add(2 * time.Second)
			w.add(t)
			check("added", crashStep{Depth: 1, Replicas: 1, Active: true})
			id := w.deliver(t, "c1")
			w.clk.Add(time.Second)
			// c1 crashes here, holding the entry.
			check("delivered to c1", pending)
			for waited := time.Duration(0); waited < tc.pendingFor; {
				step := min(15*time.Second, tc.pendingFor-waited)
				w.clk.Add(step)
				waited += step
				check(fmt.Sprintf("pending %s", waited), pending)
			}
			w.claim(t, "c2", id)
			w.clk.Add(time.Second)
			claimed := pending
			claimed.MaxDeliveries = 2
			check("claimed by c2", claimed)
			w.ack(t, id)
			var at time.Duration
			for i, d := range tc.afterAck {
				w.clk.Add(d - at)
				at = d
				check(fmt.Sprintf("%s after XACK", d), tc.wantAck[i])
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("readings and targets, step by step (-want +got):\n%s", diff)
			}
		})
	}
}
