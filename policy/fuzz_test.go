package policy

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// FuzzDecide runs a short sequence of decisions over arbitrary params,
// inputs and clock steps and checks the invariants of Decide:
//
//   - Replicas, Recommended and PolicyReplicas lie in [MinReplicas, MaxReplicas] of the sanitized params;
//   - Active whenever finite, non-negative Depth + InFlight > ActivationDepth;
//   - no NaN or Inf in the slot terms or the reason, no Inf and no negative rates;
//   - never a scale-in during the cooldown: a target below the previous one
//     is at least every throughput recommendation the returned state still
//     holds (unless a saturated dependency caps it);
//   - never a scale-in while panicking, never above the scale-up limit
//     (×4 at least while panicking);
//   - the state stays bounded and never holds anything after now.
func FuzzDecide(f *testing.F) {
	s, ms := int64(time.Second), int64(time.Millisecond)
	inf := math.Inf(1)
	// min, max, c, prefetch, targetAge, processing, cooldown, window, u, activation,
	// depth, inFlight, produced, consumed, rate, oldest, measured, step, steps,
	// failures, p95, ready, deliveries, shadow, deadLetter, lock
	f.Add(0, 20, 4, 8, 30*s, 250*ms, 300*s, 60*s, 0.8, 0.0, 1200.0, 0.0, 1000.0, nan, nan, 45*s, int64(-1), 15*s, uint8(12), nan, int64(-1), 0, int64(0), false, 10, 60*s)
	f.Add(0, 0, 0, 0, int64(0), int64(0), int64(0), int64(0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, int64(0), int64(0), int64(0), uint8(0), 0.0, int64(0), 0, int64(0), false, 0, int64(0))
	f.Add(0, 10, 1, 1, s, ms, s, s, 1.0, 0.0, nan, nan, nan, nan, nan, int64(-1), int64(-1), s, uint8(8), nan, int64(-1), -1, int64(-1), true, -1, int64(-1))
	f.Add(-5, -7, -1, -9, -s, -s, -s, -s, -0.5, -3.0, -10.0, -4.0, -100.0, -50.0, -2.0, -s, -s, -s, uint8(9), -1.0, -s, -5, int64(-9), true, -3, -s)
	f.Add(3, 1, 2, 1, 30*s, 100*ms, 60*s, 60*s, 7.0, nan, 50.0, 5.0, 1e6, 1e6, 3.0, 5*s, 2*s, 30*s, uint8(10), 9.0, 8*s, 3, int64(12), false, 10, 30*s)
	f.Add(math.MaxInt, math.MaxInt, math.MaxInt, math.MinInt, int64(math.MaxInt64), int64(math.MaxInt64), int64(math.MaxInt64), int64(math.MaxInt64),
		math.MaxFloat64, math.MaxFloat64, math.MaxFloat64, math.MaxFloat64, math.MaxFloat64, math.MaxFloat64, math.MaxFloat64,
		int64(math.MaxInt64), int64(math.MaxInt64), int64(math.MaxInt64), uint8(255), math.MaxFloat64, int64(math.MaxInt64), math.MaxInt, int64(math.MaxInt64), true, math.MaxInt, int64(math.MaxInt64))
	f.Add(0, 50, 4, 8, int64(1), int64(1), int64(1), int64(1), 1e-300, 0.0, inf, inf, inf, inf, inf, int64(math.MaxInt64), int64(1), int64(1), uint8(3), inf, int64(1), 1, int64(1), false, 1, int64(1))
	f.Add(1, 5, 3, 3, 10*s, 10*s, 60*s, 10*s, math.SmallestNonzeroFloat64, 1e300, 1e308, 1e308, 1e15, 1e15, 1e15, int64(math.MinInt64), int64(math.MinInt64), int64(math.MinInt64), uint8(7), 1e15, int64(math.MinInt64), math.MinInt, int64(math.MinInt64), true, math.MinInt, int64(math.MinInt64))
	f.Add(0, 100, 4, 8, 30*s, 500*ms, 300*s, 60*s, 0.8, 0.0, 5000.0, 1.0, 1e5, 9e4, 0.0, 200*s, 500*ms, 15*s, uint8(20), 0.0, 900*ms, 12, int64(3), false, 10, 60*s)

	f.Fuzz(func(t *testing.T, minR, maxR, c, prefetch int, targetAge, processing, cooldown, window int64,
		u, activation, depth, inFlight, produced, consumed, rate float64, oldest, measured, step int64, steps uint8,
		failures float64, p95 int64, ready int, deliveries int64, shadow bool, deadLetter int, lock int64) {
		p := Params{
			MinReplicas: minR, MaxReplicas: maxR, Concurrency: c, Prefetch: prefetch,
			TargetAge: time.Duration(targetAge), ProcessingTime: time.Duration(processing),
			ScaleDownCooldown: time.Duration(cooldown), RateWindow: time.Duration(window),
			TargetUtilization: u, ActivationDepth: activation,
			DeadLetterAfter: deadLetter, LockDuration: time.Duration(lock), PodStartup: time.Duration(step),
			Kind: []string{"", KindCPUBound, KindIOBound, KindMemoryHeavy}[int(steps)%4],
		}
		if shadow {
			p.Mode, p.MessageCount = ModeShadow, u*100
		}
		sp := p.Sanitize()
		if diff := cmp.Diff(sp, sp.Sanitize()); diff != "" {
			t.Fatalf("Sanitize is not idempotent (-once +twice):\n%s", diff)
		}
		if sp.MinReplicas < 0 || sp.MaxReplicas < max(1, sp.MinReplicas) || sp.Concurrency < 1 || sp.Prefetch < sp.Concurrency ||
			sp.TargetAge <= 0 || sp.ProcessingTime <= 0 || !(sp.TargetUtilization > 0 && sp.TargetUtilization <= 1) ||
			sp.ScaleDownCooldown < 0 || !(sp.ActivationDepth >= 0) || sp.RateWindow <= 0 || !(sp.MessageCount > 0) ||
			!(sp.ScaleUpFactor >= 1) || sp.ScaleUpPods < 1 || sp.ScaleUpPeriod <= 0 || sp.PanicWindow <= 0 ||
			!(sp.MaxFailureRate > 0 && sp.MaxFailureRate <= 1) || sp.StallDeliveries < 2 {
			t.Fatalf("Sanitize(%+v) = %+v, still nonsense", p, sp)
		}

		var (
			st        State
			now       = t0
			monotonic = true
		)
		for i := range int(steps%24) + 1 {
			k := float64(i%5) / 2 // vary the inputs between steps
			in := Inputs{
				Depth: depth * k, InFlight: inFlight, OldestAge: time.Duration(oldest), MaxDeliveries: deliveries,
				ProducedTotal: produced + float64(i)*rate, ConsumedTotal: consumed + float64(i)*rate/2,
				ConsumptionRate: rate, ProcessingTime: time.Duration(measured) * time.Duration(1+i%3),
				ProcessingTimeP95: time.Duration(p95), FailureRate: failures, ReadyReplicas: ready + i%4,
			}
			if i > 0 {
				// A negative step walks the clock back every third decision only.
				d := time.Duration(step)
				if d < 0 && i%3 != 0 {
					d = -d
				}
				now = now.Add(d)
				monotonic = monotonic && d >= 0
			}
			prev := -1
			if n := len(st.Served); n > 0 {
				prev = st.Served[n-1].Replicas
			}
			d, next := Decide(p, in, st, now)
			checkDecision(t, sp, in, d)
			checkState(t, sp, next, now)
			target := d.Terms.PolicyReplicas
			if !strings.Contains(d.Reason, "saturated") && prev >= 0 && target < prev {
				for _, r := range next.Recommendations {
					if target < clampInt(r.Replicas, sp.MinReplicas, sp.MaxReplicas) {
						t.Fatalf("step %d: target %d below the held recommendation %d (%v): scale-in during the cooldown; %s", i, target, r.Replicas, r.At, d.Reason)
					}
				}
				if monotonic && d.Terms.Panicking && prev >= 0 && target < min(prev, sp.MaxReplicas) {
					t.Fatalf("step %d: target %d below %d while panicking; %s", i, target, prev, d.Reason)
				}
			}
			if monotonic && prev >= 0 && target > prev {
				f := sp.ScaleUpFactor
				if d.Terms.Panicking {
					f = max(f, panicScaleUpFactor)
				}
				if lim := max(math.Ceil(float64(prev)*f), float64(prev)+float64(sp.ScaleUpPods)); float64(target) > lim && target > sp.MinReplicas {
					// The base is at most the previous target while the clock only moves forward.
					base := st.Served[0].Replicas
					for _, r := range st.Served {
						base = max(base, r.Replicas)
					}
					if float64(target) > max(math.Ceil(float64(base)*f), float64(base)+float64(sp.ScaleUpPods)) {
						t.Fatalf("step %d: target %d from %d beyond the scale-up limit; %s", i, target, prev, d.Reason)
					}
				}
			}
			if sp.Mode == ModeShadow {
				if want := clampInt(podsFor(min(max(depth*k, 0), huge)/sp.MessageCount, 1), sp.MinReplicas, sp.MaxReplicas); !math.IsNaN(depth) && d.Replicas != want {
					t.Fatalf("shadow: Replicas %d, want the classic %d", d.Replicas, want)
				}
			} else if d.Replicas != target {
				t.Fatalf("Replicas %d != PolicyReplicas %d outside shadow mode", d.Replicas, target)
			}
			st = next
		}
	})
}

// checkDecision asserts the per-decision invariants.
func checkDecision(t *testing.T, sp Params, in Inputs, d Decision) {
	t.Helper()
	tm := d.Terms
	for _, r := range []int{d.Replicas, tm.Recommended, tm.PolicyReplicas} {
		if r < sp.MinReplicas || r > sp.MaxReplicas {
			t.Fatalf("replicas %d outside [%d, %d]: %+v", r, sp.MinReplicas, sp.MaxReplicas, d)
		}
	}
	if tm.Raw < 0 || tm.InFlightFloor < 0 {
		t.Fatalf("negative Raw %d or InFlightFloor %d", tm.Raw, tm.InFlightFloor)
	}
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	if !finite(tm.SteadySlots) || !finite(tm.DrainSlots) || tm.SteadySlots < 0 || tm.DrainSlots < 0 {
		t.Fatalf("slots steady %v drain %v, want finite and >= 0", tm.SteadySlots, tm.DrainSlots)
	}
	for _, r := range []float64{tm.ArrivalRate, tm.BurstRate, tm.ConsumptionRate} {
		if math.IsInf(r, 0) || r < 0 {
			t.Fatalf("rate %v, want finite and >= 0, or NaN for unknown", r)
		}
	}
	ok := func(x float64) bool { return finite(x) && x >= 0 }
	if ok(in.Depth) && ok(in.InFlight) && in.Depth+in.InFlight > sp.ActivationDepth && !d.Active {
		t.Fatalf("depth %v + in flight %v > activation %v but inactive: %s", in.Depth, in.InFlight, sp.ActivationDepth, d.Reason)
	}
	if tm.ProcessingTime < 0 || (tm.ProcessingFrom != "measured" && tm.ProcessingFrom != "configured") {
		t.Fatalf("processing time %v from %q", tm.ProcessingTime, tm.ProcessingFrom)
	}
	if d.Reason == "" || strings.Contains(d.Reason, "NaN") || strings.Contains(d.Reason, "\n") {
		t.Fatalf("reason %q: want one line without NaN", d.Reason)
	}
	if d.Hints.Prefetch < d.Hints.Concurrency || d.Hints.Concurrency < 1 || d.Hints.Cooldown < 0 || strings.Contains(d.Hints.Basis, "NaN") {
		t.Fatalf("hints %+v", d.Hints)
	}
}

// checkState asserts the returned state is bounded and holds nothing after now.
func checkState(t *testing.T, sp Params, st State, now time.Time) {
	t.Helper()
	if len(st.Samples) < 1 || len(st.Samples) > 34 {
		t.Fatalf("%d samples kept, want 1..34", len(st.Samples))
	}
	if limit := sp.MaxReplicas - sp.MinReplicas + 1; len(st.Recommendations) < 1 || len(st.Recommendations) > limit {
		t.Fatalf("%d recommendations kept, want 1..%d", len(st.Recommendations), limit)
	}
	if len(st.Served) < 1 || len(st.Served) > 64 || len(st.Points) > 64 {
		t.Fatalf("%d served targets and %d points kept", len(st.Served), len(st.Points))
	}
	for _, x := range st.Served {
		if x.At.After(now) {
			t.Fatalf("served target at %v after now %v", x.At, now)
		}
	}
	for _, s := range st.Samples {
		if s.At.After(now) {
			t.Fatalf("sample at %v after now %v", s.At, now)
		}
	}
	for _, r := range st.Recommendations {
		if r.At.After(now) {
			t.Fatalf("recommendation at %v after now %v", r.At, now)
		}
	}
}

func BenchmarkDecide(b *testing.B) {
	p := testParams()
	q := &queue{}
	var st State
	now := t0
	inputs := make([]Inputs, 64)
	for i := range inputs {
		q.produced += float64(400 + i%7*50)
		q.consumed += 380
		inputs[i] = q.inputs(time.Duration(i%40) * time.Second)
	}
	for i := range 200 { // warm up to a full state
		now = now.Add(time.Second)
		_, st = Decide(p, inputs[i%len(inputs)], st, now)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		now = now.Add(time.Second)
		_, st = Decide(p, inputs[i%len(inputs)], st, now)
	}
}
