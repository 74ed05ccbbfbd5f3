package policy

import (
	"fmt"
	"math"
	"time"
)

// huge stands in for +Inf in the slot arithmetic, so that sums and products
// of capped terms stay finite. Nothing real comes near it.
const huge = 1e300

// Decide turns one observation into a replica target and returns the state to
// remember for the next call. It never mutates st, never panics, and never
// returns NaN or ±Inf except ArrivalRate and ConsumptionRate being NaN for
// "unknown". Params are sanitized first (see Params.Sanitize).
//
// With W the processing time per message in seconds (measured when
// in.ProcessingTime > 0, else configured), λ the arrival rate in messages
// per second over about RateWindow (see measure), B the visible backlog, T
// the TargetAge in seconds, u the TargetUtilization and c the Concurrency:
//
//	urgency     = clamp(OldestAge ÷ T, 1, 4)                 (1 when the age is unknown)
//	steady      = min(λ·W ÷ u, erlangSlots(λ·W, W, T))       (0 while λ is unknown)
//	drain       = (B ÷ T)·W·urgency
//	Raw         = ceil((steady + drain) ÷ c)
//	Throughput  = ceil(steady ÷ c)
//	floor       = ceil(InFlight ÷ prefetch)                  (pods holding work already delivered)
//	Recommended = clamp(max(Raw, floor, Active ? 1 : 0), MinReplicas, MaxReplicas)
//	target      = max(Recommended, max(Throughput over the last ScaleDownCooldown))
//
// (a held Throughput made for more than twice today's λ, a burst that has
// ended, is let go: see stabilise), then, against the previous target:
//
//   - scale-down only when B + InFlight <= target × c × T ÷ W (the pods
//     kept finish all the work within T), the oldest message is within T,
//     and no burst is being answered (panic mode, see panicking);
//   - scale-up at most to max(ceil(base × ScaleUpFactor), base + ScaleUpPods),
//     base the target served ScaleUpPeriod ago (see scaleUpLimit);
//   - when scaling cannot help (see detectStall) the drain term is dropped,
//     a saturation cap applies, and the backlog is only planned for when a
//     poison message is about to be dead-lettered.
//
// Active is B + InFlight > ActivationDepth. In shadow mode Replicas is the
// classic ceil(B ÷ MessageCount) and Terms.PolicyReplicas the target above.
func Decide(p Params, in Inputs, st State, now time.Time) (Decision, State) {
	p = p.Sanitize()
	obs := observe(in)
	w, from := processingTime(p, in)
	p95 := max(in.ProcessingTimeP95, 0)
	cs2 := serviceSCV(w.Seconds(), p95.Seconds())
	samples := remember(st.Samples, obs.sample(now), p.RateWindow)
	r, samples := measure(samples, obs.consumptionRate)
	burst := burstRate(samples, p.PanicWindow, obs.consumptionRate)
	urg := urgency(in.OldestAge, p.TargetAge)
	prev, served := previous(st.Served, now)

	t := Terms{
		ArrivalRate:     r.arrival,
		BurstRate:       burst,
		ConsumptionRate: r.consumption,
		ProcessingTime:  w,
		ProcessingFrom:  from,
		ProcessingP95:   p95,
	}
	panicUntil := panicking(p, st.PanicUntil, now, burst, r.arrival, podsFor(steadySlots(burst, w, p, cs2), p.Concurrency), prev, in.ReadyReplicas)
	t.Panicking = now.Before(panicUntil)
	lam := r.arrival
	if t.Panicking && !math.IsNaN(burst) && (math.IsNaN(lam) || burst > lam) {
		lam = burst
	}
	t.SteadySlots = steadySlots(lam, w, p, cs2)
	t.DrainSlots = drainSlots(obs.slotDepth(), p.TargetAge, w, urg)
	t.Raw = podsFor(t.SteadySlots+t.DrainSlots, p.Concurrency)
	t.ThroughputPods = podsFor(t.SteadySlots, p.Concurrency)
	t.InFlightFloor = podsFor(min(obs.inFlight, huge), max(p.Prefetch, p.Concurrency))
	active := obs.depth+obs.inFlight > p.ActivationDepth
	t.Recommended = recommend(t.Raw, t.InFlightFloor, active, p)
	hold := clampInt(t.ThroughputPods, p.MinReplicas, p.MaxReplicas)

	ready, readySince, points := settle(st, in, r, now, p)
	s := detectStall(p, in, obs, r, w, points, ready, readySince, now)
	if s.reason != "" {
		t.Stalled = s.reason
		t.Recommended = recommend(t.ThroughputPods, t.InFlightFloor, active, p)
		if pre := prescale(p, in, obs, lam, w, cs2, t.Recommended); s.poison && pre.note != "" {
			t.Recommended = max(t.Recommended, pre.replicas)
			s.note = pre.note
		}
		if s.cap > 0 {
			t.Recommended = min(t.Recommended, max(s.cap, p.MinReplicas))
		}
	}

	held, heldUntil, recs := stabilise(st.Recommendations, Recommendation{At: now, Replicas: hold, Rate: rateOf(lam)}, p.ScaleDownCooldown)
	target := max(t.Recommended, clampInt(held, p.MinReplicas, p.MaxReplicas))
	if target > t.Recommended {
		t.HeldUntil = heldUntil
	}
	if s.cap > 0 && target > s.cap {
		target = max(s.cap, p.MinReplicas)
		if target <= t.Recommended {
			t.HeldUntil = time.Time{}
		}
	}
	var notes []string
	target, notes = gate(p, obs, in, t, s, prev, target, panicUntil)
	if prev >= 0 && target > prev {
		limit, why := scaleUpLimit(served, now, p, points, ready, in, t.Panicking)
		if limit = max(limit, prev); target > limit {
			target = limit
			notes = append(notes, why)
		}
	}
	target = clampInt(target, p.MinReplicas, p.MaxReplicas)
	t.PolicyReplicas = target

	d := Decision{Replicas: target, Mode: p.Mode, Active: active, Hints: hints(p, w, p95), Terms: t}
	if p.Mode == ModeShadow {
		d.Replicas = clampInt(podsFor(obs.slotDepth()/p.MessageCount, 1), p.MinReplicas, p.MaxReplicas)
	}
	d.Reason = explain(p, in, obs, r, urg, d, s, notes)
	return d, State{
		Samples:         samples,
		Recommendations: recs,
		Served:          rememberServed(served, Recommendation{At: now, Replicas: target}, now.Add(-p.ScaleUpPeriod)),
		PanicUntil:      panicUntil,
		Ready:           ready,
		ReadySince:      readySince,
		Points:          points,
	}
}

// rateOf is λ for remembering: 0 when unknown.
func rateOf(lam float64) float64 {
	if math.IsNaN(lam) {
		return 0
	}
	return lam
}

// observation is Inputs made safe to compute with. Depth and InFlight are
// messages, NaN or negative read as 0 (with a note), +Inf kept so that
// activity stays exact; counters and rates are NaN when unknown, non-finite
// or negative.
type observation struct {
	depth           float64 // visible backlog, messages, >= 0 (may be +Inf)
	depthKnown      bool    // false when in.Depth was NaN or negative
	inFlight        float64 // delivered, unacknowledged messages, >= 0 (may be +Inf)
	produced        float64 // cumulative messages added; NaN when unknown
	consumed        float64 // cumulative messages delivered; NaN when unknown
	consumptionRate float64 // messages per second; NaN when unknown
	failureRate     float64 // failed messages per second; NaN when unknown
	notes           []string
}

// observe sanitizes in, noting every input it had to read as 0.
func observe(in Inputs) observation {
	o := observation{
		produced:        counter(in.ProducedTotal),
		consumed:        counter(in.ConsumedTotal),
		consumptionRate: counter(in.ConsumptionRate),
		failureRate:     counter(in.FailureRate),
	}
	o.depth, o.depthKnown = nonNegative(in.Depth, "depth", &o.notes)
	o.inFlight, _ = nonNegative(in.InFlight, "in-flight", &o.notes)
	return o
}

// nonNegative returns x when x >= 0, else 0 and a note saying so.
func nonNegative(x float64, name string, notes *[]string) (float64, bool) {
	switch {
	case x >= 0:
		return x, true
	case math.IsNaN(x):
		*notes = append(*notes, name+" unknown, counted as 0")
	default:
		*notes = append(*notes, fmt.Sprintf("%s %v invalid, counted as 0", name, x))
	}
	return 0, false
}

// counter returns x when it is finite and >= 0, else NaN (unknown).
func counter(x float64) float64 {
	if x >= 0 && !math.IsInf(x, 1) {
		return x
	}
	return math.NaN()
}

// slotDepth is the backlog, messages, capped at huge for the slot arithmetic.
func (o observation) slotDepth() float64 { return min(o.depth, huge) }

// sample is the observation as a rate Sample taken at now; Depth is NaN when
// the backlog is unknown so that it never fakes a depth change.
func (o observation) sample(now time.Time) Sample {
	s := Sample{At: now, Depth: o.slotDepth(), Produced: o.produced, Consumed: o.consumed}
	if !o.depthKnown {
		s.Depth = math.NaN()
	}
	return s
}

// processingTime is W: in.ProcessingTime when measured (> 0), else the
// configured p.ProcessingTime. A measured 0 is treated as unknown: no real
// consumer is free, and W = 0 would erase both terms of the formula.
func processingTime(p Params, in Inputs) (time.Duration, string) {
	if in.ProcessingTime > 0 {
		return in.ProcessingTime, "measured"
	}
	return p.ProcessingTime, "configured"
}

// urgency = clamp(oldest ÷ target, 1, 4); 1 when oldest < 0 (unknown). It
// grows the drain term while messages wait longer than the target, and the
// cap bounds the growth: a backlog already late is cleared in T ÷ 4, never
// by asking for every pod there is.
func urgency(oldest, target time.Duration) float64 {
	if oldest < 0 {
		return 1
	}
	return max(1, min(float64(oldest)/float64(target), 4))
}

// steadySlots = min(A ÷ u, erlangSlots(A, W, T, cs²)) with A = λ·W, in busy
// slots; 0 while λ is unknown (NaN). Little's law: A messages are in
// service on average. A fraction u of the slots is planned to be busy,
// unless Erlang C shows fewer slots keep 99% of messages within T: with T
// many processing times long, a queue of a few seconds absorbs the
// randomness and pods can run nearly full.
func steadySlots(arrival float64, w time.Duration, p Params, cs2 float64) float64 {
	if math.IsNaN(arrival) || arrival <= 0 {
		return 0
	}
	a := min(arrival*w.Seconds(), huge)
	simple := min(a/p.TargetUtilization, huge)
	return min(simple, erlangSlots(a, w.Seconds(), p.TargetAge.Seconds(), cs2, math.Ceil(simple)))
}

// drainSlots = (B ÷ T)·W·urgency, in busy slots: the extra rate B ÷ T
// (messages per second) that clears backlog B within the target age T, times
// W seconds per message, pushed harder when messages are already late.
func drainSlots(depth float64, target, w time.Duration, urgency float64) float64 {
	rate := min(depth/target.Seconds(), huge)
	return min(rate*w.Seconds()*urgency, huge)
}

// podsFor = ceil(slots ÷ c) in pods, 0 for slots <= 0, capped at 2³¹-1.
// A tolerance of 1e-9 (plus 1e-12 relative) keeps float noise such as
// 7.0000000001 from adding a pod.
func podsFor(slots float64, c int) int {
	x := slots / float64(c)
	switch {
	case !(x > 0): // also catches NaN
		return 0
	case x >= replicaLimit:
		return replicaLimit
	}
	return int(math.Ceil(x - 1e-9 - x*1e-12))
}

// recommend = clamp(max(raw, floor, active ? 1 : 0), MinReplicas, MaxReplicas).
func recommend(raw, floor int, active bool, p Params) int {
	r := max(raw, floor)
	if active && r < 1 {
		r = 1
	}
	return clampInt(r, p.MinReplicas, p.MaxReplicas)
}
