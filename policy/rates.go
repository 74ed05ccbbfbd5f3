package policy

import (
	"math"
	"sort"
	"time"
)

// minRateSpan is the shortest span a rate is measured over; below it λ is unknown.
const minRateSpan = time.Second

// rates are the measured rates behind one decision.
type rates struct {
	arrival     float64 // λ, messages per second; NaN when unknown
	consumption float64 // messages per second; NaN when unknown
	lowerBound  bool    // λ is only ΔDepth ÷ dt: consumption is unknown
	unknown     string  // why λ is unknown, "" when known
}

// remember returns a new slice: prev without samples after s.At (the clock
// went backwards), in time order, plus s, trimmed to the window.
//
// Spacing keeps the state at about 33 samples: when the newest kept sample
// is less than window ÷ 32 after the one before it, it is only provisional
// and s replaces it instead of being appended. (Comparing with the previous
// sample rather than with now means a decision every second still builds up
// a history when window ÷ 32 is longer than a second.) A sample at the same
// instant as the newest is replaced too.
func remember(prev []Sample, s Sample, window time.Duration) []Sample {
	out := make([]Sample, 0, len(prev)+1)
	for _, x := range prev {
		if !x.At.After(s.At) {
			out = append(out, x)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	if n := len(out); n > 0 && (out[n-1].At.Equal(s.At) || n >= 2 && out[n-1].At.Sub(out[n-2].At) < window/32) {
		out[n-1] = s
	} else {
		out = append(out, s)
	}
	return trim(out, s.At.Add(-window))
}

// trim drops samples before start but keeps the newest sample at or before
// start, so that a rate spans about the whole window.
func trim(samples []Sample, start time.Time) []Sample {
	keep := 0
	for i, s := range samples {
		if s.At.After(start) {
			break
		}
		keep = i
	}
	return samples[keep:]
}

// lastReset is the index of the newest sample at which a known Produced or
// Consumed counter fell below its previous known value (a counter reset), or
// 0. Samples before it must not be used for deltas.
func lastReset(samples []Sample) int {
	cut := 0
	prevP, prevC := math.NaN(), math.NaN()
	for i, s := range samples {
		if s.Produced < prevP || s.Consumed < prevC { // false while either is NaN
			cut = i
		}
		if !math.IsNaN(s.Produced) {
			prevP = s.Produced
		}
		if !math.IsNaN(s.Consumed) {
			prevC = s.Consumed
		}
	}
	return cut
}

// measure returns the rates over the oldest kept sample o and the newest n,
// dt = n.At − o.At seconds, and the samples to keep (those before a counter
// reset are dropped). λ is unknown (NaN) with fewer than 2 samples or
// dt < 1s; otherwise, first that applies:
//
//	Produced known in o and n:  λ = ΔProduced ÷ dt
//	Consumed known in o and n:  λ = max(0, (ΔDepth + ΔConsumed) ÷ dt)
//	consumption rate r known:   λ = max(0, ΔDepth ÷ dt + r)
//	otherwise:                  λ = max(0, ΔDepth ÷ dt), a lower bound
//
// The consumption rate is the given rate r (messages per second) when known,
// else ΔConsumed ÷ dt, else NaN. Both rates are capped at huge.
func measure(samples []Sample, given float64) (rates, []Sample) {
	r := rates{arrival: math.NaN(), consumption: given}
	reset := lastReset(samples)
	samples = samples[reset:]
	if len(samples) < 2 {
		r.unknown = "measuring arrival rate"
		if reset > 0 {
			r.unknown = "counter reset, measuring arrival rate"
		}
		return r, samples
	}
	o, n := samples[0], samples[len(samples)-1]
	dt := n.At.Sub(o.At).Seconds()
	if dt < minRateSpan.Seconds() {
		r.unknown = "measuring arrival rate"
		return r, samples
	}
	if math.IsNaN(r.consumption) {
		r.consumption = min((n.Consumed-o.Consumed)/dt, huge) // NaN stays NaN
	}
	r.arrival, r.lowerBound, r.unknown = arrival(o, n, dt, given)
	r.arrival = min(r.arrival, huge)
	return r, samples
}

// arrival is λ in messages per second between samples o and n, dt seconds
// apart (see measure); NaN with a reason when the depth it needs is unknown.
func arrival(o, n Sample, dt, given float64) (float64, bool, string) {
	known := func(a, b float64) bool { return !math.IsNaN(a) && !math.IsNaN(b) }
	dDepth := n.Depth - o.Depth
	switch {
	case known(o.Produced, n.Produced):
		return (n.Produced - o.Produced) / dt, false, ""
	case !known(o.Depth, n.Depth):
		return math.NaN(), false, "depth unknown"
	case known(o.Consumed, n.Consumed):
		return max(0, (dDepth+n.Consumed-o.Consumed)/dt), false, ""
	case !math.IsNaN(given):
		return max(0, dDepth/dt+given), false, ""
	}
	return max(0, dDepth/dt), true, ""
}
