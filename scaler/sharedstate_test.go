package scaler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

// queueSim is a queue whose consumers keep up with arrivals at a rate the
// test sets: the stream counters advance by rate × elapsed time on the
// shared virtual clock, as two daemons reading one real stream would see.
// It stands in for the broker because the subject is the state the
// daemons keep, not the read.
type queueSim struct {
	mu       sync.Mutex
	now      func() time.Time
	at       time.Time
	rate     float64
	produced float64
	depth    float64
}

func newQueueSim(clk *clock) *queueSim { return &queueSim{now: clk.Now, at: clk.Now()} }

func (q *queueSim) Read(context.Context, sources.Query) (sources.Reading, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	q.produced += q.rate * now.Sub(q.at).Seconds()
	q.at = now
	return sources.Reading{At: now, Depth: q.depth, OldestAge: -1, OldestPendingIdle: -1,
		ProducedTotal: q.produced, ConsumedTotal: q.produced, DeadLetter: math.NaN(), Scheduled: math.NaN()}, nil
}

// set changes the load from now on.
func (q *queueSim) set(rate, depth float64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	q.produced += q.rate * now.Sub(q.at).Seconds()
	q.at, q.rate, q.depth = now, rate, depth
}

func virtualClock() *clock { return &clock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)} }

// replica is one flowscaler process: its own Server (and so its own
// memory) on the shared clock and queue, with the given store (nil: the
// memory backend).
func replica(t *testing.T, clk *clock, q *queueSim, store StateStore) *Server {
	t.Helper()
	srv, err := New(Options{Reader: q, Config: testConfig(t), Now: clk.Now, StateStore: store})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// holdRef is an object whose cooldown holds the throughput target: W 1s,
// one message per pod, cooldown 2m.
var holdRef = ref(stream("processingTime", "1s", "targetAge", "10s", "concurrency", "1", "scaleDownCooldown", "2m"))

func target(t *testing.T, srv *Server) int {
	t.Helper()
	ev, err := srv.Evaluate(context.Background(), holdRef)
	if err != nil {
		t.Fatalf("Evaluate at %v: %v", srv.now().Format("15:04:05.000"), err)
	}
	if strings.Contains(ev.Decision.Reason, "state store failing") {
		t.Errorf("the store must work in this test: %s", ev.Decision.Reason)
	}
	return ev.Decision.Replicas
}

// A daemon stopped in the middle of a scale-down cooldown, gracefully or
// not, must not take the cooldown with it: the daemon that replaces it
// holds the target until the cooldown ends. Every decision is saved when
// it is made, so a crash loses nothing a graceful stop would have kept.
// With the memory backend the replacement starts from nothing and drops
// the target at once: the reason the redis backend exists.
func TestRestartMidCooldownKeepsTheHeldTarget(t *testing.T) {
	rs := redistest.Start(t)
	tests := []struct {
		name     string
		shared   bool
		stop     func(*Server)
		wantNext []int // B's answers, 15s apart, from the restart on
	}{
		{
			name: "redis, crash: the server is dropped", shared: true, stop: func(*Server) {},
			// The 21 pods of the 20/s throughput held until 09:04:45 (the
			// last recommendation for it at 09:02:45 + 2m), then down
			// with the measured rate to the 14 of 12/s.
			wantNext: []int{21, 21, 21, 21, 19, 17, 15, 14},
		},
		{
			name: "redis, graceful: drained first", shared: true, stop: (*Server).Drain,
			wantNext: []int{21, 21, 21, 21, 19, 17, 15, 14},
		},
		{
			name: "memory: the cooldown dies with the process", shared: false, stop: (*Server).Drain,
			// No samples, so no arrival rate: 5 messages to drain, 1 pod;
			// then the scale-up limit from there.
			wantNext: []int{1, 5, 10, 14, 14, 14, 14, 14},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := virtualClock()
			q := newQueueSim(clk)
			var store StateStore
			if tt.shared {
				store = newRedisStore(t, rs, fmt.Sprintf("restart-%d/", i))
			}
			a := replica(t, clk, q, store)
			before := restartPolls(t, clk, q, a, 0, 16) // 09:00:00 … 09:03:45
			if diff := cmp.Diff([]int{1, 5, 10, 20, 22, 22, 22, 22, 22, 22, 22, 22, 22, 21, 21, 21}, before); diff != "" {
				t.Fatalf("daemon A before the restart (-want +got):\n%s", diff)
			}
			tt.stop(a)

			b := replica(t, clk, q, store) // 09:04:00, mid-cooldown
			after := restartPolls(t, clk, q, b, 16, 24)
			if diff := cmp.Diff(tt.wantNext, after); diff != "" {
				t.Errorf("daemon B from 09:04:00 on (-want +got):\n%s", diff)
			}
			// With the shared state the restart is invisible: B answers
			// what A would have, had it kept running.
			uclk := virtualClock()
			uq := newQueueSim(uclk)
			uninterrupted := restartPolls(t, uclk, uq, replica(t, uclk, uq, nil), 0, 24)[16:]
			if same := cmp.Equal(uninterrupted, after); same != tt.shared {
				t.Errorf("B's answers %v against an uninterrupted daemon's %v: equal = %v, want %v", after, uninterrupted, same, tt.shared)
			}
		})
	}
}

// restartPolls asks srv for polls from to to of the restart test, 15s
// apart from 09:00:00: 20/s until 09:03:00, 12/s from then on.
func restartPolls(t *testing.T, clk *clock, q *queueSim, srv *Server, from, to int) []int {
	t.Helper()
	var got []int
	for i := from; i < to; i++ {
		switch i {
		case 0:
			q.set(20, 5)
		case 12:
			q.set(12, 5)
		}
		got = append(got, target(t, srv))
		clk.Add(15 * time.Second)
	}
	return got
}

// step is one poll of a scenario: the clock moves by advance, the load is
// set, and the next replica in turn answers.
type step struct {
	advance     time.Duration
	rate, depth float64
}

// scenario rises, bursts, drops and cools down, polled every 15s with a
// few polls at the same instant (one coalesced reading) or a moment apart.
func scenario() []step {
	var s []step
	add := func(n int, every time.Duration, rate, depth float64) {
		for range n {
			s = append(s, step{advance: every, rate: rate, depth: depth})
		}
	}
	add(4, 15*time.Second, 5, 2)        // quiet
	add(6, 15*time.Second, 20, 5)       // rise
	add(2, 0, 20, 5)                    // the same instant: one reading, one decision
	add(3, 2*time.Second, 80, 1500)     // burst: panic window and drain
	add(4, 15*time.Second, 20, 40)      // back to the rise's rate
	add(6, 15*time.Second, 12, 5)       // drop within the cooldown's reach
	add(12, 15*time.Second, 12, 5)      // cooldown ends
	add(3, 500*time.Millisecond, 12, 5) // polls a moment apart
	add(6, 15*time.Second, 0, 0)        // idle
	return s
}

// run plays a scenario on replicas polled round-robin, as KEDA's client
// balances over the addresses of a headless Service, and returns their
// answers.
func run(t *testing.T, clk *clock, q *queueSim, replicas ...*Server) []int {
	t.Helper()
	var got []int
	for i, s := range scenario() {
		clk.Add(s.advance)
		q.set(s.rate, s.depth)
		got = append(got, target(t, replicas[i%len(replicas)]))
	}
	return got
}

// Two daemons sharing the redis backend, polled alternately, answer
// exactly what one daemon answers alone; two with the memory backend do
// not, which is what makes the comparison a test.
func TestTwoReplicasAnswerAsOne(t *testing.T) {
	rs := redistest.Start(t)

	clk := virtualClock()
	q := newQueueSim(clk)
	one := run(t, clk, q, replica(t, clk, q, nil))
	if !(slices.Max(one) >= 20 && one[len(one)-1] == 0) {
		t.Fatalf("the scenario must scale out and back in: %v", one)
	}

	clk = virtualClock()
	q = newQueueSim(clk)
	a := replica(t, clk, q, newRedisStore(t, rs, "two/"))
	b := replica(t, clk, q, newRedisStore(t, rs, "two/"))
	two := run(t, clk, q, a, b)
	if diff := cmp.Diff(one, two); diff != "" {
		t.Errorf("two daemons on the redis backend, round-robin (-one daemon +two daemons):\n%s", diff)
	}

	clk = virtualClock()
	q = newQueueSim(clk)
	split := run(t, clk, q, replica(t, clk, q, nil), replica(t, clk, q, nil))
	if cmp.Equal(one, split) {
		t.Errorf("two daemons on the memory backend answered as one (%v): the scenario does not exercise shared state", split)
	}
}

// interleave is a real store that lets another replica decide between a
// load and the save that follows it: the race optimistic concurrency
// exists for, made deterministic.
type interleave struct {
	StateStore
	once   sync.Once
	before func()
}

func (s *interleave) Save(ctx context.Context, id string, seq uint64, data []byte) (uint64, error) {
	s.once.Do(s.before)
	return s.StateStore.Save(ctx, id, seq, data)
}

// When another replica saves between this one's load and save, the save
// is refused and the decision is made again on top of the other's, so
// neither decision is lost.
func TestConflictingSaveDecidesAgainOnTheWinnersState(t *testing.T) {
	rs := redistest.Start(t)
	store := newRedisStore(t, rs, "conflict/")
	// b has a clock of its own so that its second reading (09:00:15) is
	// older than a's (09:00:16), which a then decides on top of.
	clkB := virtualClock()
	qb := newQueueSim(clkB)
	qb.set(20, 5)
	b := replica(t, clkB, qb, store)
	if got := target(t, b); got != 1 {
		t.Fatalf("b's first = %d, want 1", got)
	}
	clkB.Add(15 * time.Second)

	clkA := virtualClock()
	qa := newQueueSim(clkA)
	qa.set(20, 5)
	clkA.Add(16 * time.Second)
	racing := &interleave{StateStore: store}
	a := replica(t, clkA, qa, racing)
	var bTarget int
	racing.before = func() { bTarget = target(t, b) }
	ev, err := a.Evaluate(context.Background(), holdRef)
	if err != nil {
		t.Fatal(err)
	}
	// b decided 1 → 5 (the scale-up limit: +4 per 15s); a, on top of
	// it, keeps 5: the limit's base is still the 1 in effect at the start
	// of its period (09:00:01).
	if bTarget != 5 || ev.Decision.Replicas != 5 || ev.Previous != 5 {
		t.Errorf("b = %d, a = %d after %d; want b 5, and a 5 after b's 5", bTarget, ev.Decision.Replicas, ev.Previous)
	}
	if got := testutil.ToFloat64(a.metrics.state.conflicts); got != 1 {
		t.Errorf("conflicts = %v, want 1", got)
	}
	seq, _, err := store.Load(context.Background(), ev.Object.ID)
	if err != nil || seq != 3 {
		t.Errorf("stored seq = %d, %v; want 3: b's two decisions and a's", seq, err)
	}
}

// Replicas hammering one object at once never fail a call and leave one
// coherent state: samples in time order, the sequence counting the saves.
func TestConcurrentReplicasConverge(t *testing.T) {
	rs := redistest.Start(t)
	clk := virtualClock()
	q := newQueueSim(clk)
	q.set(20, 5)
	var replicas []*Server
	for range 3 {
		replicas = append(replicas, replica(t, clk, q, newRedisStore(t, rs, "hammer/")))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 300)
	for i := range 30 {
		wg.Go(func() {
			for range 10 {
				clk.Add(100 * time.Millisecond)
				if _, err := replicas[i%len(replicas)].Evaluate(context.Background(), holdRef); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Evaluate: %v", err)
	}
	obj, err := replicas[0].parse(holdRef)
	if err != nil {
		t.Fatal(err)
	}
	seq, data, err := newRedisStore(t, rs, "hammer/").Load(context.Background(), obj.ID)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := decodeMemory(data, obj)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(mem.state.Samples); i++ {
		if !mem.state.Samples[i-1].At.Before(mem.state.Samples[i].At) {
			t.Errorf("stored samples out of order at %d: %v then %v", i, mem.state.Samples[i-1].At, mem.state.Samples[i].At)
		}
	}
	if seq < 2 || mem.last == nil || !mem.last.Reading.At.After(virtualClock().Now()) {
		t.Errorf("stored seq %d, last %v: want many saves and a last decision", seq, mem.last)
	}
}

// A store outage never fails a call nor makes it 0: each replica decides
// from its own memory, says so in the reason and the metric, and logs the
// outage once and the recovery once.
func TestStateStoreOutageDecidesFromMemory(t *testing.T) {
	rs := redistest.Start(t)
	clk := virtualClock()
	q := newQueueSim(clk)
	var logs bytes.Buffer
	srv, err := New(Options{Reader: q, Config: testConfig(t), Now: clk.Now, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		StateStore: newRedisStore(t, rs, "outage/")})
	if err != nil {
		t.Fatal(err)
	}
	q.set(20, 5)
	var got []int
	var reasons []string
	poll := func() {
		ev, err := srv.Evaluate(context.Background(), holdRef)
		if err != nil {
			t.Fatalf("Evaluate: %v", err)
		}
		got = append(got, ev.Decision.Replicas)
		reasons = append(reasons, ev.Decision.Reason)
		clk.Add(15 * time.Second)
	}
	poll()
	rs.Stop()
	poll()
	poll()
	rs.Start() // empty: redis-server runs without persistence
	poll()
	poll()

	// The same answers as without a store: the local memory carried on.
	if diff := cmp.Diff([]int{1, 5, 10, 20, 22}, got); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	for i, failing := range []bool{false, true, true, false, false} {
		if has := strings.Contains(reasons[i], "state store failing"); has != failing {
			t.Errorf("poll %d: reason %q; want the store failure noted: %v", i, reasons[i], failing)
		}
	}
	if got := testutil.ToFloat64(srv.metrics.state.errors.WithLabelValues("load")); got != 2 {
		t.Errorf("load errors = %v, want 2", got)
	}
	if n := strings.Count(logs.String(), "state store failing"); n != 1 {
		t.Errorf("logged the outage %d times, want once:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "state store recovered"); n != 1 {
		t.Errorf("logged the recovery %d times, want once:\n%s", n, logs.String())
	}
	obj, _ := srv.parse(holdRef)
	if seq, _, err := newRedisStore(t, rs, "outage/").Load(context.Background(), obj.ID); err != nil || seq != 2 {
		t.Errorf("after recovery: stored seq %d, %v; want 2 (saved again from memory, twice)", seq, err)
	}
}

// A stored value this version cannot read is reported, and replaced by
// the next save rather than blocking every later one.
func TestUnreadableStoredStateIsReplaced(t *testing.T) {
	rs := redistest.Start(t)
	clk := virtualClock()
	q := newQueueSim(clk)
	q.set(20, 5)
	store := newRedisStore(t, rs, "corrupt/")
	srv := replica(t, clk, q, store)
	obj, err := srv.parse(holdRef)
	if err != nil {
		t.Fatal(err)
	}
	rs.Client(t).HSet(context.Background(), store.Key(obj.ID), "seq", "7", "state", `{"schema":99}`)
	ev, err := srv.Evaluate(context.Background(), holdRef)
	if err != nil || ev.Decision.Replicas != 1 {
		t.Fatalf("Evaluate = %d, %v; want 1 from this replica's memory", ev.Decision.Replicas, err)
	}
	want := `state store failing (stored state unreadable: shop/orders#`
	if !strings.Contains(ev.Decision.Reason, want) || !strings.Contains(ev.Decision.Reason, `schema = "99": must be 1`) {
		t.Errorf("reason %q does not say the stored state was unreadable", ev.Decision.Reason)
	}
	if got := testutil.ToFloat64(srv.metrics.state.errors.WithLabelValues("decode")); got != 1 {
		t.Errorf("decode errors = %v, want 1", got)
	}
	seq, data, err := store.Load(context.Background(), obj.ID)
	if err != nil || seq != 8 {
		t.Fatalf("stored seq = %d, %v; want 8: replaced by this replica's save", seq, err)
	}
	if _, err := decodeMemory(data, obj); err != nil {
		t.Errorf("replaced value does not decode: %v", err)
	}
	clk.Add(15 * time.Second)
	if got := target(t, srv); got != 5 {
		t.Errorf("next = %d, want 5 from the replaced state", got)
	}
}

// A source outage on a replica that has never decided is served from the
// stored last good answer: a restarted daemon keeps answering.
func TestSourceOutageServesTheStoredLastGood(t *testing.T) {
	rs := redistest.Start(t)
	clk := virtualClock()
	q := newQueueSim(clk)
	q.set(20, 5)
	store := newRedisStore(t, rs, "stale/")
	a := replica(t, clk, q, store)
	for range 3 {
		target(t, a)
		clk.Add(15 * time.Second)
	}
	failing := &scripted{now: clk.Now}
	failing.set(0, errors.New("dial tcp: connection refused"))
	b, err := New(Options{Reader: failing, Config: testConfig(t), Now: clk.Now, StateStore: store})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := b.Evaluate(context.Background(), holdRef)
	if err != nil || ev.Decision.Replicas != 10 || !ev.Stale {
		t.Fatalf("b during a source outage = %d stale %v, %v; want a's last good 10, stale", ev.Decision.Replicas, ev.Stale, err)
	}
}

// The whole daemon with state: redis on its own redis-server: daemon A
// decides and stops; the queue's redis goes down; daemon B, started on the
// same config, answers A's last good target (stale, within staleAfter)
// instead of "no good reading yet". With state: memory B has nothing.
func TestDaemonRestartKeepsStateInRedis(t *testing.T) {
	source := redistest.Start(t)
	shared := redistest.Start(t)
	seedOldBacklog(t, source.Client(t))
	r := &pb.ScaledObjectRef{Namespace: "shop", Name: "orders", ScalerMetadata: map[string]string{
		"source": "redis-stream", "connection": "local", "stream": "orders", "group": "workers",
		"processingTime": "2s", "targetAge": "10s", "concurrency": "2",
	}}
	cfg := func(state string) string {
		return fmt.Sprintf(`
server: {readTimeout: 1s, staleAfter: 60s, readCacheTTL: 100ms}
connections:
  local: {type: redis, url: %q}
  shared: {type: redis, url: %q}
policy:
  defaults: {maxReplicas: 50, scaleDownCooldown: 1m}
%s`, source.URL(), shared.URL(), state)
	}
	tests := []struct {
		name     string
		state    string
		wantCode codes.Code
		want     float64
	}{
		{name: "redis", state: "state: {backend: redis, connection: shared, keyPrefix: it/}", wantCode: codes.OK, want: 40},
		{name: "memory", state: "state: {backend: memory}", wantCode: codes.Unavailable},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if i > 0 { // the previous case stopped it; it restarts empty
				source.Start()
				seedOldBacklog(t, source.Client(t))
			}
			ctx := context.Background()
			a := startDaemon(t, cfg(tt.state))
			// 100 undelivered ÷ 10s × 2s × urgency 4 (capped) ÷ 2 per pod = 40.
			if v, _, err := callKEDAWay(ctx, a.client, r); err != nil || v != 40 {
				t.Fatalf("daemon A = %v, %v; want 40", v, err)
			}
			a.stop(t)
			source.Stop()

			b := startDaemon(t, cfg(tt.state))
			v, _, err := callKEDAWay(ctx, b.client, r)
			if status.Code(err) != tt.wantCode || v != tt.want {
				t.Fatalf("daemon B during the source outage = %v, %v; want %v, code %v", v, err, tt.want, tt.wantCode)
			}
		})
	}
	keys := shared.Client(t).Keys(context.Background(), "it/shop/orders#*").Val()
	if len(keys) != 1 {
		t.Fatalf("state keys = %v, want one under the configured prefix", keys)
	}
	if ttl := shared.Client(t).PTTL(context.Background(), keys[0]).Val(); ttl <= 0 || ttl > idleObjectTTL {
		t.Errorf("state key TTL = %v, want within idleObjectTTL", ttl)
	}
}

// BenchmarkEvaluateState is the cost of one fresh decision on each
// backend: the redis one adds a load and a compare-and-set round trip and
// the JSON of the state; the memory one neither.
func BenchmarkEvaluateState(b *testing.B) {
	rs := redistest.Start(b)
	for _, bc := range []struct {
		name  string
		store func() StateStore
	}{
		{"memory", func() StateStore { return nil }},
		{"redis", func() StateStore { return newRedisStore(b, rs, "bench/") }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			clk := virtualClock()
			q := newQueueSim(clk)
			q.set(20, 5)
			srv, err := New(Options{Reader: q, Config: testConfig(b), Now: clk.Now, StateStore: bc.store()})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				clk.Add(time.Second)
				if _, err := srv.Evaluate(context.Background(), holdRef); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// syncBuffer is a log sink the daemon writes while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// The state backend is built once: a reload that changes it is applied
// otherwise, says that the state section waits for a restart, and the
// objects keep their state where it was.
func TestReloadKeepsTheRunningStateBackend(t *testing.T) {
	rs := redistest.Start(t)
	var logs syncBuffer
	d := startDaemonWith(t, daemonConfig(rs.URL(), "60s"), func(o *DaemonOptions) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	edited := daemonConfig(rs.URL(), "60s") + "state: {backend: redis, connection: local}\n"
	if err := os.WriteFile(d.path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "config reloaded") })
	if !strings.Contains(logs.String(), `the state section changes on restart only; keeping the running state backend" running=memory configured=redis`) {
		t.Errorf("the reload does not say the state backend waits for a restart:\n%s", logs.String())
	}
	rs.Client(t).RPush(context.Background(), "jobs", "a")
	r := &pb.ScaledObjectRef{Namespace: "shop", Name: "jobs", ScalerMetadata: map[string]string{
		"source": "redis-list", "connection": "local", "list": "jobs"}}
	if _, _, err := callKEDAWay(context.Background(), d.client, r); err != nil {
		t.Fatal(err)
	}
	if keys := rs.Client(t).Keys(context.Background(), config.DefaultStateKeyPrefix+"*").Val(); len(keys) != 0 {
		t.Errorf("state keys %v after the reload: the memory backend must stay in force until a restart", keys)
	}
}
