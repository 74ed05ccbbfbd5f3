package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestStalls(t *testing.T) {
	tests := []struct {
		name   string
		params func(*Params)
		in     func(*Inputs)
		st     State
		want   int
		reason []string
	}{{
		// Drain 6000 ÷ 30 × 0.25 × 4 = 200 slots would ask for the max.
		name:   "poison: the oldest message was delivered 12 times",
		in:     func(in *Inputs) { in.Depth, in.OldestAge, in.MaxDeliveries = 6000, 5*time.Minute, 12 },
		want:   1,
		reason: []string{"stalled: oldest message delivered 12 times; scaling will not help", "no drain while stalled: 1"},
	}, {
		name: "failures: 80% of finished messages fail",
		in: func(in *Inputs) {
			in.Depth, in.FailureRate, in.ConsumptionRate = 6000, 8, 2
		},
		want:   1,
		reason: []string{"stalled: 80% of finished messages fail (8.0/s of 10.0/s); scaling will not help"},
	}, {
		name: "no progress: ready pods take no work",
		in: func(in *Inputs) {
			in.Depth, in.InFlight, in.ConsumptionRate, in.ReadyReplicas = 6000, 1, 0, 10
		},
		st:     State{Ready: 10, ReadySince: t0.Add(-time.Minute)},
		want:   1,
		reason: []string{"stalled: 10 ready pods acknowledge 0.0/s with 6000 waiting and 1 in flight; scaling will not help"},
	}, {
		name: "no stall while pods are new: the rates lag",
		in: func(in *Inputs) {
			in.Depth, in.InFlight, in.ConsumptionRate, in.ReadyReplicas = 6000, 1, 0, 10
		},
		st:   State{Ready: 4, ReadySince: t0.Add(-time.Minute)},
		want: 13, // 6000 ÷ 30 × 0.25 = 50 slots
	}, {
		// λ = 80/s × 1.5s = 120 busy slots would ask for 31 pods.
		name: "saturation: 30 pods did no better than 12, each message slower",
		in: func(in *Inputs) {
			in.Depth, in.ConsumptionRate, in.ReadyReplicas, in.ProcessingTime = 6000, 70, 30, 1500*time.Millisecond
			in.ProducedTotal = 1e5 + 80*60
		},
		st: State{Ready: 30, ReadySince: t0.Add(-time.Minute), Samples: []Sample{ago(time.Minute, 6000, 1e5, nan)}, Points: []Point{
			{At: t0.Add(-5 * time.Minute), Replicas: 12, Rate: 96, W: 500 * time.Millisecond, Busy: true},
			{At: t0.Add(-time.Minute), Replicas: 30, Rate: 70, W: 1500 * time.Millisecond, Busy: true},
		}},
		want:   12,
		reason: []string{"stalled: 30 pods acknowledge 70.0/s at 1.5s each, 12 acknowledged 96.0/s at 500ms: a downstream dependency is saturated; scaling will not help; capped at 12"},
	}, {
		name: "a slower release is not saturation: more pods still did more",
		in: func(in *Inputs) {
			in.Depth, in.ConsumptionRate, in.ReadyReplicas, in.ProcessingTime = 6000, 160, 30, 750*time.Millisecond
		},
		st: State{Ready: 30, ReadySince: t0.Add(-time.Minute), Points: []Point{
			{At: t0.Add(-5 * time.Minute), Replicas: 10, Rate: 80, W: 250 * time.Millisecond},
		}},
		want: 20, // 6000 ÷ 30 × 0.75 = 150 slots → 38, limited from... no served history: 38 clamped to 20
	}, {
		name: "poison about to be dead-lettered: prepare for the backlog behind it",
		params: func(p *Params) {
			p.DeadLetterAfter, p.LockDuration, p.PodStartup = 10, time.Minute, 30*time.Second
		},
		in:     func(in *Inputs) { in.Depth, in.OldestAge, in.MaxDeliveries = 6000, 9*time.Minute, 9 },
		want:   20,
		reason: []string{"stalled: oldest message delivered 9 times", "it is dead-lettered after 10 deliveries, within 2m0s: preparing 20 replicas"},
	}, {
		name: "poison far from the dead-letter limit: hold",
		params: func(p *Params) {
			p.DeadLetterAfter, p.LockDuration = 10, time.Minute
		},
		in:     func(in *Inputs) { in.Depth, in.OldestAge, in.MaxDeliveries = 6000, 5*time.Minute, 5 },
		want:   1,
		reason: []string{"it is dead-lettered after 10 deliveries, within 6m0s: holding"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, in := testParams(), unknownInputs()
			if tt.params != nil {
				tt.params(&p)
			}
			tt.in(&in)
			got, _ := Decide(p, in, tt.st, t0)
			if got.Replicas != tt.want {
				t.Errorf("Replicas = %d, want %d; %s", got.Replicas, tt.want, got.Reason)
			}
			if (len(tt.reason) > 0) != (got.Terms.Stalled != "") {
				t.Errorf("Stalled = %q, want stalled: %v", got.Terms.Stalled, len(tt.reason) > 0)
			}
			assertReason(t, got.Reason, tt.reason...)
		})
	}
}

func TestScaleUpLimitAndPanic(t *testing.T) {
	p := testParams()
	p.MaxReplicas = 100
	s := newSim(p)
	q := &queue{}
	var got []int
	for range 6 {
		q.produced += 30 * 15 // 30/s, consumed as it comes
		q.consumed = q.produced
		got = append(got, s.after(15*time.Second, q.inputs(time.Second)).Replicas)
	}
	// A 20× burst: 600/s for the next minute.
	var panicked bool
	for range 4 {
		q.produced += 600 * 15
		q.consumed = q.produced - 3000
		d := s.after(15*time.Second, q.inputs(20*time.Second))
		panicked = panicked || d.Terms.Panicking
		got = append(got, d.Replicas)
	}
	// Idle at first (no rate yet), then 30/s × 250ms = 7.5 busy → Erlang C
	// 8 slots → 2 pods. The burst starts panic mode, where the limit is ×4
	// or +4 per 15 s: 2 → 8 → 32 → 44 (600/s × 0.25 = 150 busy slots plus
	// 3000 ÷ 30 × 0.25 for the backlog: 44 pods).
	if diff := cmp.Diff([]int{0, 2, 2, 2, 2, 2, 8, 32, 44, 44}, got); diff != "" {
		t.Errorf("replicas (-want +got):\n%s", diff)
	}
	if !panicked {
		t.Error("a 20× burst did not start panic mode")
	}
	// The burst ends and the backlog is gone, but panic mode lasts a
	// RateWindow after its last trigger: no scale-down yet.
	q.consumed = q.produced
	d := s.after(15*time.Second, q.inputs(0))
	if !d.Terms.Panicking || d.Replicas < 44 || !strings.Contains(d.Reason, "panicking until") {
		t.Errorf("right after the burst: Panicking %v, Replicas %d; want panic mode holding 44; %s", d.Terms.Panicking, d.Replicas, d.Reason)
	}
}

func TestShadowMode(t *testing.T) {
	p := testParams()
	p.Mode, p.MessageCount = ModeShadow, 50
	in := unknownInputs()
	in.Depth, in.OldestAge = 1200, 15*time.Second
	got, _ := Decide(p, in, State{}, t0)
	// Classic: ceil(1200 ÷ 50) = 24, clamped to 20; flowscaler: 3 (see TestDecide "pure drain").
	if got.Replicas != 20 || got.Terms.PolicyReplicas != 3 || got.Mode != ModeShadow {
		t.Errorf("Replicas %d, PolicyReplicas %d, Mode %q; want 20, 3, shadow", got.Replicas, got.Terms.PolicyReplicas, got.Mode)
	}
	assertReason(t, got.Reason, "shadow: serving 20 (depth 1200 ÷ messageCount 50); flowscaler would serve 3: backlog 1200")
}

func TestHints(t *testing.T) {
	tests := []struct {
		name    string
		kind    string
		w, p95  time.Duration
		lock    time.Duration
		want    Hints
		comment string
	}{
		{name: "configured", w: 250 * time.Millisecond, want: Hints{Concurrency: 4, Prefetch: 8, Basis: "configured"}},
		{name: "cpu-bound", kind: KindCPUBound, w: time.Second, p95: 5 * time.Second, want: Hints{Concurrency: 4, Prefetch: 8, Basis: "cpu-bound 8/4"}},
		{name: "memory-heavy", kind: KindMemoryHeavy, w: time.Second, want: Hints{Concurrency: 2, Prefetch: 4, Basis: "memory-heavy 4/2"}},
		// p95 = 6 × W: concurrency × min(6 ÷ 2, 4) = 96, prefetch 192.
		{name: "io-bound with a long tail", kind: KindIOBound, w: 100 * time.Millisecond, p95: 600 * time.Millisecond,
			want: Hints{Concurrency: 96, Prefetch: 192, Basis: "io-bound 64/32, concurrency ×3 for p95 600ms = 6 × W"}},
		// (10s − 2s) × 32 ÷ 1s = 256 ≥ 64: the table's prefetch stands; with a 2.5s lock, (2.5 − 2) × 32 = 16 < 32: concurrency.
		{name: "io-bound within a lock", kind: KindIOBound, w: time.Second, p95: 2 * time.Second, lock: 10 * time.Second,
			want: Hints{Concurrency: 32, Prefetch: 64, Basis: "io-bound 64/32"}},
		{name: "a lock shorter than the work keeps prefetch at concurrency", kind: KindIOBound, w: time.Second, p95: 2 * time.Second, lock: 2500 * time.Millisecond,
			want: Hints{Concurrency: 32, Prefetch: 32, Basis: "io-bound 64/32, prefetch within lock 2.5s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testParams()
			p.Kind, p.LockDuration, p.ScaleDownCooldown = tt.kind, tt.lock, 0
			if diff := cmp.Diff(tt.want, hints(p.Sanitize(), tt.w, tt.p95)); diff != "" {
				t.Errorf("hints (-want +got):\n%s", diff)
			}
		})
	}
}

func TestErlangSlots(t *testing.T) {
	tests := []struct {
		name          string
		a, w, t, cs2  float64
		limit, wantAt float64
	}{
		{name: "long objective: barely above the load", a: 40, w: 0.5, t: 30, cs2: 1, limit: 50, wantAt: 41},
		{name: "objective of a few processing times needs headroom", a: 40, w: 5, t: 10, cs2: 1, limit: 60, wantAt: 43},
		{name: "a long tail needs more", a: 40, w: 5, t: 10, cs2: 4, limit: 60, wantAt: 45},
		{name: "the simple form is the limit", a: 40, w: 30, t: 1, cs2: 1, limit: 50, wantAt: 50},
		{name: "no load", a: 0, w: 1, t: 1, cs2: 1, limit: 7, wantAt: 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := erlangSlots(tt.a, tt.w, tt.t, tt.cs2, tt.limit); got != tt.wantAt {
				t.Errorf("erlangSlots(%v, %v, %v, %v, %v) = %v, want %v", tt.a, tt.w, tt.t, tt.cs2, tt.limit, got, tt.wantAt)
			}
		})
	}
	// cs² from p95 ÷ W: exponential-like tails give about 1.
	if got := serviceSCV(1, 3); got < 0.5 || got > 2 {
		t.Errorf("serviceSCV(1, 3) = %v, want about 1", got)
	}
	if got := serviceSCV(1, -1); got != 1 {
		t.Errorf("serviceSCV with unknown p95 = %v, want 1", got)
	}
}
