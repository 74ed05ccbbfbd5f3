package policy

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	nan = math.NaN()
	t0  = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
)

// testParams: 30s target, c = 4, W = 250ms, u = 0.8, replicas in [0, 20].
func testParams() Params {
	return withNewDefaults(Params{
		MinReplicas:       0,
		MaxReplicas:       20,
		TargetAge:         30 * time.Second,
		Concurrency:       4,
		Prefetch:          8,
		ProcessingTime:    250 * time.Millisecond,
		TargetUtilization: 0.8,
		ScaleDownCooldown: 5 * time.Minute,
		ActivationDepth:   0,
		RateWindow:        time.Minute,
	})
}

// unknownInputs knows nothing but an empty queue.
func unknownInputs() Inputs {
	return Inputs{OldestAge: -1, ProducedTotal: nan, ConsumedTotal: nan, ConsumptionRate: nan, ProcessingTime: -1}
}

// ago is one remembered sample d before t0.
func ago(d time.Duration, depth, produced, consumed float64) Sample {
	return Sample{At: t0.Add(-d), Depth: depth, Produced: produced, Consumed: consumed}
}

// decisionOpts compare floats approximately and NaN as equal.
var decisionOpts = cmp.Options{cmpopts.EquateNaNs(), cmpopts.EquateApprox(0, 1e-9)}

// terms are the Terms of a decision with configured W = 250ms.
func terms(arrival, consumption, steady, drain float64, floor, raw, rec int) Terms {
	return Terms{
		ArrivalRate: arrival, BurstRate: arrival, ConsumptionRate: consumption,
		ProcessingTime: 250 * time.Millisecond, ProcessingFrom: "configured",
		SteadySlots: steady, DrainSlots: drain, InFlightFloor: floor, Raw: raw, Recommended: rec,
	}
}

func TestDecide(t *testing.T) {
	hints := Hints{Concurrency: 4, Prefetch: 8, Cooldown: 5 * time.Minute}
	tests := []struct {
		name   string
		params func(*Params)
		state  State
		in     func(*Inputs)
		want   Decision
		reason []string // substrings of Reason, in order
	}{{
		name:   "idle",
		want:   Decision{Replicas: 0, Active: false, Hints: hints, Terms: terms(nan, nan, 0, 0, 0, 0, 0)},
		reason: []string{"idle: depth 0 ≤ activation 0", "arrival unknown (measuring arrival rate)", "= 0 replicas"},
	}, {
		// drain = 1200 ÷ 30s × 0.25s = 10 slots → ceil(10 ÷ 4) = 3.
		name:   "pure drain",
		in:     func(in *Inputs) { in.Depth, in.OldestAge = 1200, 15*time.Second },
		want:   Decision{Replicas: 3, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 10, 0, 3, 3)},
		reason: []string{"backlog 1200, oldest 15s ≤ target 30s", "drain 1200÷30s × 250ms = 10.0 slots", "→ 10.0 ÷ 4 per pod = 3 replicas"},
	}, {
		// λ = (3400 − 1000) ÷ 60s = 40/s; A = 40 × 0.25 = 10 busy slots:
		// 12.5 at u = 0.8, but Erlang C keeps 99% within 30s with 11;
		// drain = 100 ÷ 30 × 0.25 = 0.8333; ceil(11.833 ÷ 4) = 3.
		name:  "steady state with produced counter",
		state: State{Samples: []Sample{ago(time.Minute, 100, 1000, nan)}},
		in: func(in *Inputs) {
			in.Depth, in.OldestAge, in.ProducedTotal = 100, 2*time.Second, 3400
		},
		want:   Decision{Replicas: 3, Active: true, Hints: hints, Terms: terms(40, nan, 11, 100.0/30/4, 0, 3, 3)},
		reason: []string{"arrival 40.0/s × 250ms = 10.0 busy, 11.0 slots keep 99% within 30s (Erlang C)", "= 3 replicas"},
	}, {
		// λ = ((1200 − 600) + (8000 − 5000)) ÷ 60 = 60/s, consumption 50/s;
		// A = 15, Erlang C 16 slots, drain = 10; ceil(26 ÷ 4) = 7.
		name:  "consumed counter",
		state: State{Samples: []Sample{ago(time.Minute, 600, nan, 5000)}},
		in: func(in *Inputs) {
			in.Depth, in.ConsumedTotal = 1200, 8000
		},
		want:   Decision{Replicas: 7, Active: true, Hints: hints, Terms: terms(60, 50, 16, 10, 0, 7, 7)},
		reason: []string{"backlog 1200, oldest age unknown", "arrival 60.0/s"},
	}, {
		// Depth fell by more than was consumed (trimmed): λ = max(0, (−1200 + 600) ÷ 60) = 0.
		name:   "consumed counter never makes a negative rate",
		state:  State{Samples: []Sample{ago(time.Minute, 1200, nan, 5000)}},
		in:     func(in *Inputs) { in.Depth, in.ConsumedTotal = 0, 5600 },
		want:   Decision{Replicas: 0, Active: false, Hints: hints, Terms: terms(0, 10, 0, 0, 0, 0, 0)},
		reason: []string{"idle", "arrival 0.0/s"},
	}, {
		// λ = (600 − 1200) ÷ 60 + 30 = 20/s; A = 5, Erlang C 6 slots, drain = 5; ceil(11 ÷ 4) = 3.
		name:   "consumption rate",
		state:  State{Samples: []Sample{ago(time.Minute, 1200, nan, nan)}},
		in:     func(in *Inputs) { in.Depth, in.ConsumptionRate = 600, 30 },
		want:   Decision{Replicas: 3, Active: true, Hints: hints, Terms: terms(20, 30, 6, 5, 0, 3, 3)},
		reason: []string{"arrival 20.0/s × 250ms = 5.0 busy, 6.0 slots keep 99% within 30s (Erlang C)"},
	}, {
		// λ = max(0, −600 ÷ 60 + 5) = 0.
		name:   "consumption rate faster than the backlog explains",
		state:  State{Samples: []Sample{ago(time.Minute, 1200, nan, nan)}},
		in:     func(in *Inputs) { in.Depth, in.ConsumptionRate = 600, 5 },
		want:   Decision{Replicas: 2, Active: true, Hints: hints, Terms: terms(0, 5, 0, 5, 0, 2, 2)},
		reason: []string{"arrival 0.0/s"},
	}, {
		// λ ≥ 600 ÷ 60 = 10/s; A = 2.5, Erlang C 3 slots, drain = 5; ceil(8 ÷ 4) = 2.
		name:   "lower bound without consumption",
		state:  State{Samples: []Sample{ago(time.Minute, 0, nan, nan)}},
		in:     func(in *Inputs) { in.Depth = 600 },
		want:   Decision{Replicas: 2, Active: true, Hints: hints, Terms: terms(10, nan, 3, 5, 0, 2, 2)},
		reason: []string{"arrival ≥ 10.0/s (lower bound: consumption rate unknown)"},
	}, {
		name:   "samples closer than a second measure nothing",
		state:  State{Samples: []Sample{ago(500*time.Millisecond, 0, 0, nan)}},
		in:     func(in *Inputs) { in.Depth, in.ProducedTotal = 120, 1000 },
		want:   Decision{Replicas: 1, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 1, 0, 1, 1)},
		reason: []string{"arrival unknown (measuring arrival rate)"},
	}, {
		// urgency = 60s ÷ 30s = 2: drain = 1200 ÷ 30 × 0.25 × 2 = 20 → 5.
		name:   "urgency grows with age",
		in:     func(in *Inputs) { in.Depth, in.OldestAge = 1200, time.Minute },
		want:   Decision{Replicas: 5, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 20, 0, 5, 5)},
		reason: []string{"oldest 1m0s > target 30s (urgency 2×)", "drain 1200÷30s × 250ms × 2 = 20.0 slots"},
	}, {
		// urgency = min(600s ÷ 30s, 4) = 4: drain = 40 → 10.
		name:   "urgency capped at 4",
		in:     func(in *Inputs) { in.Depth, in.OldestAge = 1200, 10*time.Minute },
		want:   Decision{Replicas: 10, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 40, 0, 10, 10)},
		reason: []string{"oldest 10m0s > target 30s (urgency 4×, capped)", "× 4 = 40.0 slots"},
	}, {
		// ceil(30 ÷ prefetch 8) = 4 pods hold the delivered work, with nothing visible.
		name:   "in-flight floor",
		in:     func(in *Inputs) { in.InFlight = 30 },
		want:   Decision{Replicas: 4, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 0, 4, 0, 4)},
		reason: []string{"backlog 0 + 30 in flight", "in-flight floor 30 ÷ prefetch 8 per pod = 4"},
	}, {
		name:   "active but tiny backlog still needs one pod",
		in:     func(in *Inputs) { in.Depth = 1e-12 },
		want:   Decision{Replicas: 1, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 1e-12/120, 0, 0, 1)},
		reason: []string{"active, so at least 1"},
	}, {
		// drain = 100000 ÷ 30 × 0.25 = 833.3 slots → 209 pods, clamped to 20.
		name:   "clamped to max",
		in:     func(in *Inputs) { in.Depth = 100000 },
		want:   Decision{Replicas: 20, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 100000.0/120, 0, 209, 20)},
		reason: []string{"= 209 replicas", "clamped to max 20"},
	}, {
		name:   "clamped to min",
		params: func(p *Params) { p.MinReplicas = 2 },
		want:   Decision{Replicas: 2, Active: false, Hints: hints, Terms: terms(nan, nan, 0, 0, 0, 0, 2)},
		reason: []string{"idle", "clamped to min 2"},
	}, {
		// 8 + 2 = 10 is not above the activation depth 10; Raw = ceil(0.0667 ÷ 4) = 1.
		name:   "at activation depth is idle",
		params: func(p *Params) { p.ActivationDepth = 10 },
		in:     func(in *Inputs) { in.Depth, in.InFlight = 8, 2 },
		want:   Decision{Replicas: 1, Active: false, Hints: hints, Terms: terms(nan, nan, 0, 8.0/120, 1, 1, 1)},
		reason: []string{"idle: depth 8 + in flight 2 ≤ activation 10"},
	}, {
		name:   "above activation depth is active",
		params: func(p *Params) { p.ActivationDepth = 10 },
		in:     func(in *Inputs) { in.Depth, in.InFlight = 9, 2 },
		want:   Decision{Replicas: 1, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 9.0/120, 1, 1, 1)},
		reason: []string{"backlog 9 + 2 in flight"},
	}, {
		name: "NaN inputs count as 0 and say so",
		in: func(in *Inputs) {
			in.Depth, in.InFlight, in.ConsumptionRate = nan, nan, nan
		},
		want:   Decision{Replicas: 0, Active: false, Hints: hints, Terms: terms(nan, nan, 0, 0, 0, 0, 0)},
		reason: []string{"idle: depth 0", "depth unknown, counted as 0", "in-flight unknown, counted as 0"},
	}, {
		name:  "negative inputs count as 0 and say so",
		state: State{Samples: []Sample{ago(time.Minute, 100, nan, nan)}},
		in: func(in *Inputs) {
			in.Depth, in.InFlight, in.ConsumptionRate, in.ProducedTotal = -5, -1, -3, -7
		},
		want:   Decision{Replicas: 0, Active: false, Hints: hints, Terms: terms(nan, nan, 0, 0, 0, 0, 0)},
		reason: []string{"arrival unknown (depth unknown)", "depth -5 invalid, counted as 0", "in-flight -1 invalid, counted as 0"},
	}, {
		name:   "infinite depth is finite slots and max replicas",
		in:     func(in *Inputs) { in.Depth = math.Inf(1) },
		want:   Decision{Replicas: 20, Active: true, Hints: hints, Terms: terms(nan, nan, 0, huge/120, 0, replicaLimit, 20)},
		reason: []string{"backlog +Inf", "clamped to max 20"},
	}, {
		// measured W = 1s: drain = 1200 ÷ 30 × 1 = 40 → 10.
		name: "measured processing time",
		in:   func(in *Inputs) { in.Depth, in.ProcessingTime = 1200, time.Second },
		want: Decision{Replicas: 10, Active: true, Hints: hints, Terms: Terms{
			ArrivalRate: nan, BurstRate: nan, ConsumptionRate: nan, ProcessingTime: time.Second, ProcessingFrom: "measured",
			DrainSlots: 40, Raw: 10, Recommended: 10,
		}},
		reason: []string{"drain 1200÷30s × 1s = 40.0 slots", "processing time 1s measured"},
	}, {
		// A measured 0 is no measurement: W = 0 would erase both terms.
		name:   "measured zero processing time falls back to the configured one",
		in:     func(in *Inputs) { in.Depth, in.ProcessingTime = 1200, 0 },
		want:   Decision{Replicas: 3, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 10, 0, 3, 3)},
		reason: []string{"drain 1200÷30s × 250ms = 10.0 slots"},
	}, {
		name:  "holds a higher recommendation inside the cooldown",
		state: State{Recommendations: []Recommendation{{At: t0.Add(-4 * time.Minute), Replicas: 9}, {At: t0.Add(-time.Minute), Replicas: 5}}},
		in:    func(in *Inputs) { in.Depth = 1200 },
		want: Decision{Replicas: 9, Active: true, Hints: hints, Terms: func() Terms {
			tm := terms(nan, nan, 0, 10, 0, 3, 3)
			tm.HeldUntil = t0.Add(time.Minute)
			return tm
		}()},
		reason: []string{"= 3 replicas; holding 9 for the arrival rate until 12:01:00 (scale-down cooldown 5m0s)"},
	}, {
		// MaxReplicas was lowered from 50 while 40 was being held.
		name:  "a held recommendation above a lowered max is clamped",
		state: State{Recommendations: []Recommendation{{At: t0.Add(-time.Minute), Replicas: 40}}},
		in:    func(in *Inputs) { in.Depth = 1200 },
		want: Decision{Replicas: 20, Active: true, Hints: hints, Terms: func() Terms {
			tm := terms(nan, nan, 0, 10, 0, 3, 3)
			tm.HeldUntil = t0.Add(4 * time.Minute)
			return tm
		}()},
		reason: []string{"holding 20 for the arrival rate until 12:04:00"},
	}, {
		name:   "forgets a recommendation exactly one cooldown old",
		state:  State{Recommendations: []Recommendation{{At: t0.Add(-5 * time.Minute), Replicas: 9}}},
		in:     func(in *Inputs) { in.Depth = 1200 },
		want:   Decision{Replicas: 3, Active: true, Hints: hints, Terms: terms(nan, nan, 0, 10, 0, 3, 3)},
		reason: []string{"= 3 replicas"},
	}, {
		name:   "no cooldown serves the recommendation",
		params: func(p *Params) { p.ScaleDownCooldown = 0 },
		state:  State{Recommendations: []Recommendation{{At: t0.Add(-time.Second), Replicas: 9}}},
		in:     func(in *Inputs) { in.Depth = 1200 },
		want:   Decision{Replicas: 3, Active: true, Hints: Hints{Concurrency: 4, Prefetch: 8}, Terms: terms(nan, nan, 0, 10, 0, 3, 3)},
		reason: []string{"= 3 replicas"},
	}, {
		name: "nonsense params are sanitized",
		params: func(p *Params) {
			p.Concurrency, p.Prefetch, p.TargetUtilization, p.MinReplicas, p.MaxReplicas = 0, -1, 7, -3, -2
		},
		in:   func(in *Inputs) { in.Depth = 1200 },
		want: Decision{Replicas: 1, Active: true, Hints: Hints{Concurrency: 1, Prefetch: 1, Cooldown: 5 * time.Minute}, Terms: terms(nan, nan, 0, 10, 0, 10, 1)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, in := testParams(), unknownInputs()
			if tt.params != nil {
				tt.params(&p)
			}
			if tt.in != nil {
				tt.in(&in)
			}
			got, _ := Decide(p, in, tt.state, t0)
			want := tt.want
			want.Mode = ModeFlowscaler
			if want.Hints.Basis == "" {
				want.Hints.Basis = "configured"
			}
			want.Terms.PolicyReplicas = want.Replicas
			want.Terms.ThroughputPods = podsFor(want.Terms.SteadySlots, p.Sanitize().Concurrency)
			if diff := cmp.Diff(want, got, decisionOpts, cmpopts.IgnoreFields(Decision{}, "Reason")); diff != "" {
				t.Errorf("Decide() mismatch (-want +got):\n%s\nreason: %s", diff, got.Reason)
			}
			assertReason(t, got.Reason, tt.reason...)
		})
	}
}

// assertReason checks that reason contains parts in order, on one line.
func assertReason(t *testing.T, reason string, parts ...string) {
	t.Helper()
	if strings.Contains(reason, "\n") || strings.Contains(reason, "NaN") {
		t.Errorf("reason %q: want one line without NaN", reason)
	}
	rest := reason
	for _, part := range parts {
		i := strings.Index(rest, part)
		if i < 0 {
			t.Errorf("reason %q: want %q (in order)", reason, part)
			return
		}
		rest = rest[i+len(part):]
	}
}

// TestDecideReason pins the whole line for the documented example.
func TestDecideReason(t *testing.T) {
	st := State{
		Samples:         []Sample{ago(time.Minute, 1000, 1000, nan)},
		Recommendations: []Recommendation{{At: t0.Add(-270 * time.Second), Replicas: 9}},
	}
	in := unknownInputs()
	in.Depth, in.OldestAge, in.ProducedTotal = 1200, 45*time.Second, 3400

	got, _ := Decide(testParams(), in, st, t0)

	want := "backlog 1200, oldest 45s > target 30s (urgency 1.5×): " +
		"arrival 40.0/s × 250ms = 10.0 busy, 11.0 slots keep 99% within 30s (Erlang C) + drain 1200÷30s × 250ms × 1.5 = 15.0 slots " +
		"→ 26.0 ÷ 4 per pod = 7 replicas; holding 9 for the arrival rate until 12:00:30 (scale-down cooldown 5m0s)"
	if diff := cmp.Diff(want, got.Reason); diff != "" {
		t.Errorf("Reason mismatch (-want +got):\n%s", diff)
	}
	if got.Replicas != 9 || got.Terms.Recommended != 7 {
		t.Errorf("Replicas, Recommended = %d, %d; want 9, 7", got.Replicas, got.Terms.Recommended)
	}
}

func TestDecideIdleReason(t *testing.T) {
	got, _ := Decide(testParams(), unknownInputs(), State{}, t0)
	want := "idle: depth 0 ≤ activation 0; arrival unknown (measuring arrival rate) = 0 slots + " +
		"drain 0÷30s × 250ms = 0.0 slots → 0.0 ÷ 4 per pod = 0 replicas"
	if diff := cmp.Diff(want, got.Reason); diff != "" {
		t.Errorf("Reason mismatch (-want +got):\n%s", diff)
	}
}

// TestDecideDoesNotMutateState deep-compares the state before and after, and
// checks the returned state shares no memory with it.
func TestDecideDoesNotMutateState(t *testing.T) {
	st := State{
		Samples: []Sample{
			ago(2*time.Minute, 10, 100, nan), // before the window start, not the newest such
			ago(90*time.Second, 20, 200, nan),
			ago(30*time.Second, 30, 300, nan),
			ago(-time.Minute, 40, 400, nan), // after now: dropped from the result
		},
		Recommendations: []Recommendation{
			{At: t0.Add(-10 * time.Minute), Replicas: 15},
			{At: t0.Add(-time.Minute), Replicas: 3},
			{At: t0.Add(-30 * time.Second), Replicas: 4},
			{At: t0.Add(time.Minute), Replicas: 12},
		},
	}
	before := State{
		Samples:         append([]Sample(nil), st.Samples...),
		Recommendations: append([]Recommendation(nil), st.Recommendations...),
	}
	in := unknownInputs()
	in.Depth, in.ProducedTotal = 50, 500

	_, next := Decide(testParams(), in, st, t0)

	if diff := cmp.Diff(before, st, cmpopts.EquateNaNs()); diff != "" {
		t.Fatalf("Decide mutated its State (-before +after):\n%s", diff)
	}
	for i := range next.Samples {
		next.Samples[i].Depth = -1
	}
	for i := range next.Recommendations {
		next.Recommendations[i].Replicas = -1
	}
	if diff := cmp.Diff(before, st, cmpopts.EquateNaNs()); diff != "" {
		t.Fatalf("returned State aliases the given one (-before +after):\n%s", diff)
	}
}

// TestDecideState pins the state kept: samples trimmed to the window plus one
// at its start, recommendations that can still be the maximum.
func TestDecideState(t *testing.T) {
	st := State{
		Samples: []Sample{
			ago(3*time.Minute, 1, 100, nan),
			ago(2*time.Minute, 2, 200, nan),
			ago(90*time.Second, 3, 300, nan),
			ago(30*time.Second, 4, 400, nan),
			ago(-time.Second, 5, 500, nan),
		},
		Recommendations: []Recommendation{
			{At: t0.Add(-10 * time.Minute), Replicas: 15},
			{At: t0.Add(-4 * time.Minute), Replicas: 6},
			{At: t0.Add(-3 * time.Minute), Replicas: 2},
			{At: t0.Add(-2 * time.Minute), Replicas: 4},
			{At: t0.Add(time.Second), Replicas: 12},
		},
	}
	in := unknownInputs()
	in.Depth, in.ProducedTotal = 6, 700 // λ = (700 − 300) ÷ 90s

	got, next := Decide(testParams(), in, st, t0)

	want := State{
		Samples: []Sample{
			ago(90*time.Second, 3, 300, nan),
			ago(30*time.Second, 4, 400, nan),
			ago(0, 6, 700, nan),
		},
		Recommendations: []Recommendation{
			{At: t0.Add(-4 * time.Minute), Replicas: 6},
			{At: t0.Add(-2 * time.Minute), Replicas: 4},
			{At: t0, Replicas: 1, Rate: 400.0 / 90},
		},
		Served: []Recommendation{{At: t0, Replicas: 6}},
	}
	if diff := cmp.Diff(want, next, cmpopts.EquateNaNs()); diff != "" {
		t.Errorf("next State mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(400.0/90, got.Terms.ArrivalRate, decisionOpts); diff != "" {
		t.Errorf("ArrivalRate mismatch (-want +got):\n%s", diff)
	}
	if got.Replicas != 6 || !got.Terms.HeldUntil.Equal(t0.Add(time.Minute)) {
		t.Errorf("Replicas, HeldUntil = %d, %v; want 6, %v", got.Replicas, got.Terms.HeldUntil, t0.Add(time.Minute))
	}
}
