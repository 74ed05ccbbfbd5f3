package sim

import (
	"math"
	"time"
)

// HPAPolicy is one scaling policy of an HPA behaviour: at most Value pods,
// or Value percent of the replicas at the start of the period, per Period.
type HPAPolicy struct {
	Percent bool
	Value   int
	Period  time.Duration
}

// HPARules are the scaleUp or scaleDown rules of an HPA behaviour.
type HPARules struct {
	// Stabilization: scale-up uses the minimum, scale-down the maximum
	// recommendation of this window.
	Stabilization time.Duration
	Policies      []HPAPolicy
	// SelectMin picks the policy allowing the smallest change (selectPolicy
	// Min); the default picks the largest (Max).
	SelectMin bool
	// Tolerance: the HPA ignores a usage ratio within this fraction of 1 in
	// this direction (the per-HPA tolerance of Kubernetes 1.33+; 0.1 before).
	Tolerance float64
}

// HPABehavior is spec.behavior of a HorizontalPodAutoscaler.
type HPABehavior struct {
	ScaleUp, ScaleDown HPARules
}

// DefaultHPABehavior is what an HPA does when behavior is not set: up by
// 100% or 4 pods per 15 s, whichever is more; down by up to 100% per 15 s
// after a 300 s stabilisation window; tolerance 0.1 both ways.
func DefaultHPABehavior() HPABehavior {
	return HPABehavior{
		ScaleUp: HPARules{
			Policies:  []HPAPolicy{{Percent: true, Value: 100, Period: 15 * time.Second}, {Value: 4, Period: 15 * time.Second}},
			Tolerance: 0.1,
		},
		ScaleDown: HPARules{
			Stabilization: 300 * time.Second,
			Policies:      []HPAPolicy{{Percent: true, Value: 100, Period: 15 * time.Second}},
			Tolerance:     0.1,
		},
	}
}

// Deployment is how a policy is deployed: KEDA's ScaledObject settings and
// the behaviour of the HPA KEDA creates.
type Deployment struct {
	// PollingInterval is how often KEDA checks activity (0 <-> 1).
	PollingInterval time.Duration
	// CooldownPeriod is how long KEDA waits after the last active check before 1 -> 0.
	CooldownPeriod time.Duration
	HPA            HPABehavior
}

// DefaultDeployment is a ScaledObject with KEDA's defaults: polling every
// 30 s, cooldown 300 s, no HPA behaviour.
func DefaultDeployment() Deployment {
	return Deployment{PollingInterval: 30 * time.Second, CooldownPeriod: 300 * time.Second, HPA: DefaultHPABehavior()}
}

type hpaEvent struct {
	at     int // second
	change int
}

type hpaRec struct {
	at       int
	replicas int
}

// hpa is the horizontal pod autoscaler's controller for one target, as in
// Kubernetes' podautoscaler package: replica calculation for an External
// metric with an AverageValue target, tolerance, stabilisation and rate
// policies.
type hpa struct {
	b          HPABehavior
	min, max   int
	recs       []hpaRec
	up, down   []hpaEvent
	lastChange int
}

// desired is the HPA's decision for metric value v against AverageValue
// target per pod, with cur replicas now, at second now:
//
//	ratio = v ÷ (target × cur);   raw = cur if 1 − tolDown <= ratio <= 1 + tolUp, else ceil(v ÷ target)
//	stabilised = clamp(cur, min over up window, max over down window)
//	rate-limited by the policies from the replica count at each period's start
func (h *hpa) desired(v, target float64, cur, now int) int {
	raw := cur
	ratio := v / (target * float64(cur))
	if ratio < 1-h.b.ScaleDown.Tolerance || ratio > 1+h.b.ScaleUp.Tolerance {
		raw = int(math.Min(math.Ceil(v/target-1e-9), 1e9))
	}
	// Stabilisation.
	upRec, downRec := raw, raw
	keep := h.recs[:0]
	horizon := max(h.b.ScaleUp.Stabilization, h.b.ScaleDown.Stabilization)
	for _, r := range h.recs {
		age := time.Duration(now-r.at) * time.Second
		if age < horizon {
			keep = append(keep, r)
		}
		if age < h.b.ScaleUp.Stabilization {
			upRec = min(upRec, r.replicas)
		}
		if age < h.b.ScaleDown.Stabilization {
			downRec = max(downRec, r.replicas)
		}
	}
	h.recs = append(keep, hpaRec{at: now, replicas: raw})
	d := cur
	if d < upRec {
		d = upRec
	}
	if d > downRec {
		d = downRec
	}
	// Rate policies.
	switch {
	case d > cur:
		d = min(d, max(cur, h.upLimit(cur, now)))
	case d < cur:
		d = max(d, min(cur, h.downLimit(cur, now)))
	}
	return max(h.min, min(d, h.max))
}

func changeIn(events []hpaEvent, period time.Duration, now int) int {
	n := 0
	for _, e := range events {
		if time.Duration(now-e.at)*time.Second < period {
			n += e.change
		}
	}
	return n
}

func (h *hpa) upLimit(cur, now int) int {
	r := h.b.ScaleUp
	if len(r.Policies) == 0 {
		return cur
	}
	limit := math.MinInt
	if r.SelectMin {
		limit = math.MaxInt
	}
	for _, p := range r.Policies {
		start := cur - changeIn(h.up, p.Period, now) + changeIn(h.down, p.Period, now)
		proposed := start + p.Value
		if p.Percent {
			proposed = int(math.Ceil(float64(start) * (1 + float64(p.Value)/100)))
		}
		if r.SelectMin {
			limit = min(limit, proposed)
		} else {
			limit = max(limit, proposed)
		}
	}
	return limit
}

func (h *hpa) downLimit(cur, now int) int {
	r := h.b.ScaleDown
	if len(r.Policies) == 0 {
		return cur
	}
	limit := math.MaxInt
	if r.SelectMin {
		limit = math.MinInt
	}
	for _, p := range r.Policies {
		start := cur + changeIn(h.down, p.Period, now) - changeIn(h.up, p.Period, now)
		proposed := start - p.Value
		if p.Percent {
			proposed = int(float64(start) * (1 - float64(p.Value)/100))
		}
		if r.SelectMin {
			limit = max(limit, proposed)
		} else {
			limit = min(limit, proposed)
		}
	}
	return limit
}

// record notes a change the HPA made, for the rate policies.
func (h *hpa) record(from, to, now int) {
	horizon := 0 * time.Second
	for _, p := range append(append([]HPAPolicy(nil), h.b.ScaleUp.Policies...), h.b.ScaleDown.Policies...) {
		horizon = max(horizon, p.Period)
	}
	trim := func(ev []hpaEvent) []hpaEvent {
		out := ev[:0]
		for _, e := range ev {
			if time.Duration(now-e.at)*time.Second < horizon {
				out = append(out, e)
			}
		}
		return out
	}
	h.up, h.down = trim(h.up), trim(h.down)
	switch {
	case to > from:
		h.up = append(h.up, hpaEvent{at: now, change: to - from})
	case to < from:
		h.down = append(h.down, hpaEvent{at: now, change: from - to})
	}
}
