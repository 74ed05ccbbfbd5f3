package policy

import (
	"fmt"
	"math"
	"time"
)

// panicThreshold: a burst whose arrival rate needs this many times the pods
// in service starts panic mode, as in Knative.
const panicThreshold = 2

// panicScaleUpFactor is the least scale-up factor while panicking: a burst
// is answered in fewer steps (Knative allows 1000× in panic mode).
const panicScaleUpFactor = 4

// previous is the target served last (−1 when none) and the served history
// without entries after now (the clock went backwards).
func previous(served []Recommendation, now time.Time) (int, []Recommendation) {
	out := make([]Recommendation, 0, len(served)+1)
	for _, r := range served {
		if !r.At.After(now) {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		return -1, out
	}
	return out[len(out)-1].Replicas, out
}

// rememberServed appends cur to the served history unless it repeats the last
// value (the value in effect at any instant is the newest entry at or
// before it), and drops entries older than the newest one at or before
// start, which is the scale-up limit's base.
func rememberServed(served []Recommendation, cur Recommendation, start time.Time) []Recommendation {
	if n := len(served); n == 0 || served[n-1].Replicas != cur.Replicas {
		served = append(served, cur)
	}
	keep := 0
	for i, r := range served {
		if r.At.After(start) {
			break
		}
		keep = i
	}
	return served[keep:]
}

// scaleUpLimit is the highest target allowed now:
//
//	limit = max(ceil(base × f), base + ScaleUpPods)
//	f     = ScaleUpFactor, at least 4 while panicking
//
// with base the target in effect ScaleUpPeriod ago (the newest served entry
// at or before now − ScaleUpPeriod, else the oldest one). While a probe is
// open (see probing) the limit is the previous target.
func scaleUpLimit(served []Recommendation, now time.Time, p Params, points []Point, ready int, in Inputs, panicMode bool) (int, string) {
	if why := probing(points, ready, in); why != "" {
		return served[len(served)-1].Replicas, why
	}
	start := now.Add(-p.ScaleUpPeriod)
	base := served[0].Replicas
	for _, r := range served {
		if r.At.After(start) {
			break
		}
		base = r.Replicas
	}
	f := p.ScaleUpFactor
	if panicMode {
		f = max(f, panicScaleUpFactor)
	}
	limit := max(math.Ceil(float64(base)*f), float64(base)+float64(p.ScaleUpPods))
	l := int(min(limit, replicaLimit))
	return l, fmt.Sprintf("scale-up limited to %d (×%g or +%d per %v from %d)", l, f, p.ScaleUpPods, p.ScaleUpPeriod, base)
}

// probing holds scale-up while the pods added last made every message
// slower: the measured processing time is 25% above the last settled
// measurement, taken with fewer ready replicas than now. Scaling on waits
// until the new replica count has settled, so that detectStall can tell a
// saturated dependency (slower because of more pods) from a slower release
// (slower at the same pods).
func probing(points []Point, ready int, in Inputs) string {
	if len(points) == 0 || ready <= 0 || in.ProcessingTime <= 0 {
		return ""
	}
	last := points[len(points)-1]
	if ready > last.Replicas && float64(in.ProcessingTime) >= 1.25*float64(last.W) {
		return fmt.Sprintf("probing: processing time %v at %d ready pods, %v at %d: waiting for it to settle before adding more",
			round(in.ProcessingTime), ready, round(last.W), last.Replicas)
	}
	return ""
}

// panicking returns when panic mode ends: now + RateWindow when the burst
// (panic-window) arrival rate needs burstPods >= 2 × the pods in service
// (ready replicas when known, else the previous target, at least 1) and,
// to enter panic mode, is at least twice the stable rate (when known), else
// the previous end (never more than RateWindow ahead, should the clock
// have gone back). While panicking the burst rate is used when higher and
// the target does not fall.
func panicking(p Params, until, now time.Time, burst, stable float64, burstPods, prev, ready int) time.Time {
	if limit := now.Add(p.RateWindow); until.After(limit) {
		until = limit
	}
	if prev < 0 && ready <= 0 {
		return until // nothing known to be in service: no baseline for a burst
	}
	inService := max(1, prev)
	if ready > 0 {
		inService = ready
	}
	// Entering needs a burst against the stable rate; staying needs the pods only.
	if float64(burstPods) >= panicThreshold*float64(inService) && burstPods > 1 && (now.Before(until) || !(burst < panicThreshold*stable)) {
		return now.Add(p.RateWindow)
	}
	return until
}

// burstRate is λ over the panic window: between the newest sample and the
// newest one at least PanicWindow before it (else the oldest), by the rules
// of measure; NaN when unknown.
func burstRate(samples []Sample, window time.Duration, given float64) float64 {
	if len(samples) < 2 {
		return math.NaN()
	}
	n := samples[len(samples)-1]
	o := samples[0]
	for _, s := range samples[:len(samples)-1] {
		if s.At.After(n.At.Add(-window)) {
			break
		}
		o = s
	}
	dt := n.At.Sub(o.At).Seconds()
	if dt < minRateSpan.Seconds() {
		return math.NaN()
	}
	a, _, _ := arrival(o, n, dt, given)
	return min(a, huge)
}

// gate keeps the previous target when the new one is lower but pods must
// not be removed yet: while panicking, or (unless scaling cannot help)
// while the backlog plus in-flight work is more than the target's pods
// finish within T (target × c × T ÷ W), or the oldest message is older
// than T. Removing pods then would abandon work in progress and let
// messages wait longer.
func gate(p Params, obs observation, in Inputs, t Terms, s stall, prev, target int, panicUntil time.Time) (int, []string) {
	if prev < 0 || target >= prev || s.cap > 0 {
		return target, nil
	}
	if t.Panicking {
		return prev, []string{fmt.Sprintf("panicking until %s: not scaling in", panicUntil.UTC().Format("15:04:05"))}
	}
	if s.reason != "" {
		return target, nil
	}
	work := obs.depth + obs.inFlight
	finishable := float64(target) * float64(p.Concurrency) * p.TargetAge.Seconds() / t.ProcessingTime.Seconds()
	switch {
	case work > finishable:
		return prev, []string{fmt.Sprintf("keeping %d: %s messages waiting or in flight, more than %d pods finish within %v", prev, count(work), target, p.TargetAge)}
	case in.OldestAge > p.TargetAge:
		return prev, []string{fmt.Sprintf("keeping %d: oldest %v > target %v", prev, round(in.OldestAge), p.TargetAge)}
	}
	return target, nil
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(time.Second)
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d
}
