package policy

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// sim runs Decide against a virtual clock, feeding each new state back in.
type sim struct {
	p   Params
	st  State
	now time.Time
}

func newSim(p Params) *sim { return &sim{p: p, now: t0} }

// after advances the clock by d (negative goes back) and decides.
func (s *sim) after(d time.Duration, in Inputs) Decision {
	s.now = s.now.Add(d)
	dec, next := Decide(s.p, in, s.st, s.now)
	s.st = next
	return dec
}

// queue is a toy stream: producer and consumer counters and the backlog between them.
type queue struct{ produced, consumed float64 }

func (q *queue) inputs(oldest time.Duration) Inputs {
	in := unknownInputs()
	in.Depth = q.produced - q.consumed
	in.ProducedTotal, in.ConsumedTotal, in.OldestAge = q.produced, q.consumed, oldest
	return in
}

func TestScenarioRisingBacklogScalesUpImmediately(t *testing.T) {
	s := newSim(testParams())
	q := &queue{}
	var got []int
	for i := range 6 {
		// 40/s arrive, 10/s consumed: the backlog grows by 450 each 15s.
		q.produced += 600
		q.consumed += 150
		dec := s.after(15*time.Second, q.inputs(time.Duration(i)*15*time.Second))
		if dec.Replicas != dec.Terms.Recommended || !dec.Terms.HeldUntil.IsZero() {
			t.Errorf("step %d: Replicas %d, Recommended %d, HeldUntil %v: scale-up must not wait",
				i, dec.Replicas, dec.Terms.Recommended, dec.Terms.HeldUntil)
		}
		got = append(got, dec.Replicas)
	}
	// Step 0 knows only the backlog: drain 450 ÷ 30 × 0.25 = 3.75 slots → 1.
	// Then λ = 40/s (A = 10 busy slots; 12.5 at u = 0.8, 11 by Erlang C)
	// plus a growing, increasingly urgent drain: 900: 7.5 → 5 (panic mode:
	// the burst needs 3 pods where 1 serves); 1350: 11.25 × 1 → 6;
	// 1800 at 45s: 15 × 1.5 → 9; 2250 at 60s: 18.75 × 2 → 13;
	// 2700 at 75s: 22.5 × 2.5 → 17. Each step is within ×2 or +4 per 15s.
	want := []int{1, 5, 6, 9, 13, 17}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("replicas while the backlog rises (-want +got):\n%s", diff)
	}
}

func TestScenarioDrainedBacklogReleasesPodsAtOnce(t *testing.T) {
	p := testParams()
	s := newSim(p)
	q := &queue{}
	// A burst: 6000 messages arrive at once and nothing after them.
	q.produced = 6000
	peak := s.after(0, q.inputs(2*time.Minute))
	if peak.Replicas != 20 {
		t.Fatalf("peak Replicas = %d, want 20 (clamped to max); %s", peak.Replicas, peak.Reason)
	}
	// Half drained, and the oldest message is still late: keep every pod.
	q.consumed = 3000
	if dec := s.after(15*time.Second, q.inputs(time.Minute)); dec.Replicas != 20 || !strings.Contains(dec.Reason, "keeping 20") {
		t.Fatalf("half drained: Replicas %d, want 20 kept; %s", dec.Replicas, dec.Reason)
	}
	// Drained: the backlog term is gone and nothing arrives, so the pods go
	// without waiting out the cooldown, which holds arrival-rate capacity only.
	q.consumed = q.produced
	dec := s.after(15*time.Second, q.inputs(-1))
	if dec.Replicas != 0 || dec.Active || !dec.Terms.HeldUntil.IsZero() {
		t.Fatalf("drained: Replicas %d, Active %v, HeldUntil %v; want 0, false, zero; %s", dec.Replicas, dec.Active, dec.Terms.HeldUntil, dec.Reason)
	}
}

func TestScenarioCooldownHoldsArrivalRateThroughADip(t *testing.T) {
	p := testParams()
	p.TargetAge, p.ProcessingTime = 30*time.Second, 2*time.Second
	s := newSim(p)
	q := &queue{}
	step := func(rate float64) Decision {
		q.produced += rate * 15
		q.consumed = q.produced
		return s.after(15*time.Second, q.inputs(time.Second))
	}
	// 20/s × 2s = 40 busy slots; Erlang C: 41 → 11 pods.
	var steady Decision
	for range 8 {
		steady = step(20)
	}
	if steady.Replicas != 11 {
		t.Fatalf("steady Replicas = %d, want 11; %s", steady.Replicas, steady.Reason)
	}
	peakAt := s.now
	// A dip to 12/s (not below half) is held for the cooldown.
	for s.now.Before(peakAt.Add(p.ScaleDownCooldown - 15*time.Second)) {
		if dec := step(12); dec.Replicas != 11 || !strings.Contains(dec.Reason, "holding 11 for the arrival rate") {
			t.Fatalf("at +%v in the dip: Replicas %d, want 11 held; %s", s.now.Sub(peakAt), dec.Replicas, dec.Reason)
		}
	}
	for range 4 {
		step(12)
	}
	// 12/s × 2s = 24 busy: Erlang C 25 slots → 7 pods once the hold has expired.
	if dec := step(12); dec.Replicas != 7 {
		t.Fatalf("after the cooldown: Replicas %d, want 7; %s", dec.Replicas, dec.Reason)
	}
	// A fall to under half the rate is the end of a burst, not a dip: the
	// held recommendation is forgotten as soon as the stable rate shows it.
	for range 4 {
		step(20)
	}
	var dec Decision
	for range 5 {
		dec = step(2)
	}
	if dec.Replicas >= 7 {
		t.Fatalf("a minute after the rate fell from 20/s to 2/s: Replicas %d, want below 7; %s", dec.Replicas, dec.Reason)
	}
}

func TestScenarioCounterReset(t *testing.T) {
	s := newSim(testParams())
	q := &queue{produced: 1e6, consumed: 1e6}
	for range 4 {
		q.produced += 150 // 10/s
		q.consumed += 150
		s.after(15*time.Second, q.inputs(0))
	}
	if got := s.after(0, q.inputs(0)).Terms.ArrivalRate; math.Abs(got-10) > 1e-9 {
		t.Fatalf("ArrivalRate before the reset = %v, want 10", got)
	}

	*q = queue{produced: 150, consumed: 150} // the stream was recreated
	dec := s.after(15*time.Second, q.inputs(0))
	if !math.IsNaN(dec.Terms.ArrivalRate) || !math.IsNaN(dec.Terms.ConsumptionRate) {
		t.Errorf("after reset: ArrivalRate %v, ConsumptionRate %v; want unknown (NaN)", dec.Terms.ArrivalRate, dec.Terms.ConsumptionRate)
	}
	if len(s.st.Samples) != 1 || !strings.Contains(dec.Reason, "counter reset, measuring arrival rate") {
		t.Errorf("after reset: %d samples, reason %q; want 1 and the reset explained", len(s.st.Samples), dec.Reason)
	}

	q.produced += 300 // 20/s
	q.consumed += 300
	dec = s.after(15*time.Second, q.inputs(0))
	if diff := cmp.Diff([]float64{20, 20}, []float64{dec.Terms.ArrivalRate, dec.Terms.ConsumptionRate}); diff != "" {
		t.Errorf("rates after the reset (-want +got):\n%s", diff)
	}
}

func TestScenarioClockGoesBackwards(t *testing.T) {
	p := testParams()
	s := newSim(p)
	q := &queue{}
	for range 4 {
		q.produced += 600
		s.after(15*time.Second, q.inputs(10*time.Second))
	}
	for _, back := range []time.Duration{-45 * time.Second, -time.Hour, -time.Second, 0} {
		q.produced += 10
		dec := s.after(back, q.inputs(10*time.Second))
		for _, r := range []float64{dec.Terms.ArrivalRate, dec.Terms.ConsumptionRate} {
			if r < 0 || math.IsInf(r, 0) {
				t.Errorf("after %v: rate %v, want >= 0 or unknown", back, r)
			}
		}
		if dec.Replicas < p.MinReplicas || dec.Replicas > p.MaxReplicas {
			t.Errorf("after %v: Replicas %d outside [%d, %d]", back, dec.Replicas, p.MinReplicas, p.MaxReplicas)
		}
		for _, x := range s.st.Samples {
			if x.At.After(s.now) {
				t.Errorf("after %v: kept sample at %v after now %v", back, x.At, s.now)
			}
		}
		for _, r := range s.st.Recommendations {
			if r.At.After(s.now) {
				t.Errorf("after %v: kept recommendation at %v after now %v", back, r.At, s.now)
			}
		}
	}
	// Jumping back a whole hour leaves a single sample: the rate is unknown
	// until the clock has moved on by at least a second.
	s.after(-time.Hour, q.inputs(0))
	if dec := s.after(500*time.Millisecond, q.inputs(0)); !math.IsNaN(dec.Terms.ArrivalRate) {
		t.Errorf("ArrivalRate over 500ms = %v, want unknown", dec.Terms.ArrivalRate)
	}
	q.produced += 50
	// The 500ms sample was provisional and is replaced: λ spans 5.5s.
	if dec := s.after(5*time.Second, q.inputs(0)); math.Abs(dec.Terms.ArrivalRate-50/5.5) > 1e-9 {
		t.Errorf("ArrivalRate over 5.5s = %v, want 50 ÷ 5.5; %s", dec.Terms.ArrivalRate, dec.Reason)
	}
}

func TestScenarioStateStaysBounded(t *testing.T) {
	for _, step := range []time.Duration{100 * time.Millisecond, time.Second, 7 * time.Second, 2 * time.Minute} {
		t.Run(step.String(), func(t *testing.T) {
			p := testParams()
			s := newSim(p)
			q := &queue{}
			maxSamples, maxRecs := 0, 0
			for i := range 10000 {
				// A saw-tooth load that keeps the recommendation moving.
				q.produced += float64((i * 7919) % 97)
				q.consumed = max(q.consumed, q.produced-float64((i*104729)%5000))
				s.after(step, q.inputs(time.Duration(i%90)*time.Second))
				maxSamples = max(maxSamples, len(s.st.Samples))
				maxRecs = max(maxRecs, len(s.st.Recommendations))
			}
			// ≤ 33 spaced samples inside the window plus one at its start;
			// recommendations strictly decrease inside [min, max].
			if maxSamples > 34 {
				t.Errorf("up to %d samples kept, want <= 34", maxSamples)
			}
			if limit := p.MaxReplicas - p.MinReplicas + 1; maxRecs > limit {
				t.Errorf("up to %d recommendations kept, want <= %d", maxRecs, limit)
			}
			if maxSamples < 2 {
				t.Errorf("up to %d samples kept: no rate could ever be measured", maxSamples)
			}
		})
	}
}
