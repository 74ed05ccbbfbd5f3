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
//	urgency     = clamp(OldestAge ÷ T, 1, 4)            (1 when the age is unknown)
//	steady      = λ·W ÷ u                               (0 while λ is unknown)
//	drain       = (B ÷ T)·W·urgency
//	Raw         = ceil((steady + drain) ÷ c)
//	floor       = ceil(InFlight ÷ prefetch)             (pods holding work already delivered)
//	Recommended = clamp(max(Raw, floor, Active ? 1 : 0), MinReplicas, MaxReplicas)
//	Replicas    = max(Recommended over the last ScaleDownCooldown)
//
// Active is B + InFlight > ActivationDepth. Scale-up is immediate; scale-down
// waits until every higher recommendation has left the cooldown window.
func Decide(p Params, in Inputs, st State, now time.Time) (Decision, State) {
	p = p.Sanitize()
	obs := observe(in)
	w, from := processingTime(p, in)
	samples := remember(st.Samples, obs.sample(now), p.RateWindow)
	r, samples := measure(samples, obs.consumptionRate)
	urg := urgency(in.OldestAge, p.TargetAge)

	t := Terms{
		ArrivalRate:     r.arrival,
		ConsumptionRate: r.consumption,
		ProcessingTime:  w,
		ProcessingFrom:  from,
		SteadySlots:     steadySlots(r.arrival, w, p.TargetUtilization),
		DrainSlots:      drainSlots(obs.slotDepth(), p.TargetAge, w, urg),
	}
	t.Raw = podsFor(t.SteadySlots+t.DrainSlots, p.Concurrency)
	t.InFlightFloor = podsFor(min(obs.inFlight, huge), max(p.Prefetch, p.Concurrency))
	active := obs.depth+obs.inFlight > p.ActivationDepth
	t.Recommended = recommend(t.Raw, t.InFlightFloor, active, p)

	replicas, heldUntil, recs := stabilise(st.Recommendations, Recommendation{At: now, Replicas: t.Recommended}, p.ScaleDownCooldown)
	replicas = clampInt(replicas, p.MinReplicas, p.MaxReplicas)
	if replicas > t.Recommended {
		t.HeldUntil = heldUntil
	}
	d := Decision{Replicas: replicas, Active: active, Hints: hints(p), Terms: t}
	d.Reason = explain(p, in, obs, r, urg, d)
	return d, State{Samples: samples, Recommendations: recs}
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
	notes           []string
}

// observe sanitizes in, noting every input it had to read as 0.
func observe(in Inputs) observation {
	o := observation{
		produced:        counter(in.ProducedTotal),
		consumed:        counter(in.ConsumedTotal),
		consumptionRate: counter(in.ConsumptionRate),
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
// grows the drain term while messages wait longer than the target.
func urgency(oldest, target time.Duration) float64 {
	if oldest < 0 {
		return 1
	}
	return max(1, min(float64(oldest)/float64(target), 4))
}

// steadySlots = λ·W ÷ u, in busy slots (concurrent messages); 0 while λ is
// unknown (NaN). Little's law: λ·W messages are in service on average, and
// only a fraction u of the slots is planned to be busy.
func steadySlots(arrival float64, w time.Duration, u float64) float64 {
	if math.IsNaN(arrival) {
		return 0
	}
	return min(arrival*w.Seconds()/u, huge)
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

// hints are served next to the target: per-pod concurrency c, prefetch
// max(Prefetch, c) and the scale-down cooldown in effect.
func hints(p Params) Hints {
	return Hints{
		Concurrency: p.Concurrency,
		Prefetch:    max(p.Prefetch, p.Concurrency),
		Cooldown:    p.ScaleDownCooldown,
	}
}
