package policy

import (
	"math"
	"time"
)

// Fallbacks used by Sanitize when a parameter is nonsense. They match the
// built-in defaults of the config layer, which is where real validation (with
// error messages) happens; these only keep the policy from dividing by zero.
const (
	fallbackTargetAge      = 30 * time.Second       // replaces TargetAge <= 0
	fallbackProcessingTime = 100 * time.Millisecond // replaces ProcessingTime <= 0
	fallbackUtilization    = 0.8                    // replaces TargetUtilization <= 0 or NaN
	fallbackRateWindow     = time.Minute            // replaces RateWindow <= 0
	fallbackMessageCount   = 5                      // replaces MessageCount <= 0 or NaN: KEDA's default
	fallbackPanicWindow    = 6 * time.Second        // replaces PanicWindow <= 0: a tenth of the rate window, as in Knative
	fallbackScaleUpFactor  = 2                      // replaces ScaleUpFactor < 1 or NaN
	fallbackScaleUpPods    = 4                      // replaces ScaleUpPods < 1
	fallbackScaleUpPeriod  = 15 * time.Second       // replaces ScaleUpPeriod <= 0
	fallbackStallDelivers  = 5                      // replaces StallDeliveries < 2
	fallbackMaxFailureRate = 0.5                    // replaces MaxFailureRate outside (0, 1]

	// replicaLimit bounds every replica count: Kubernetes replica counts are int32.
	replicaLimit = math.MaxInt32
)

// Sanitize returns p with nonsense coerced to safe values. It is
// belt-and-braces: the config layer rejects such values with an error, but
// the policy must not divide by zero, overflow or panic if one slips through.
//
//	MinReplicas       clamp(MinReplicas, 0, 2³¹-1)
//	MaxReplicas       clamp(MaxReplicas, max(1, MinReplicas), 2³¹-1)   (Max < Min raises Max to Min)
//	Concurrency       max(1, Concurrency)
//	Prefetch          max(Prefetch, Concurrency)
//	TargetAge         30s when <= 0
//	ProcessingTime    100ms when <= 0
//	TargetUtilization 0.8 when <= 0 or NaN, 1 when > 1
//	ScaleDownCooldown 0 when < 0
//	ActivationDepth   0 when < 0 or NaN (+Inf is kept: never active)
//	RateWindow        1m when <= 0
//	Mode              ModeFlowscaler unless ModeShadow
//	MessageCount      5 when <= 0, NaN or +Inf
//	DeadLetterAfter   0 when < 0
//	LockDuration      0 when < 0
//	PodStartup        0 when < 0
//	PanicWindow       6s when <= 0
//	ScaleUpFactor     2 when < 1 or NaN, 1000 when > 1000
//	ScaleUpPods       4 when < 1
//	ScaleUpPeriod     15s when <= 0
//	StallDeliveries   5 when < 2
//	MaxFailureRate    0.5 when outside (0, 1] or NaN
//	Kind              "" unless one of the known kinds
//
// Sanitize is idempotent.
func (p Params) Sanitize() Params {
	p.MinReplicas = clampInt(p.MinReplicas, 0, replicaLimit)
	p.MaxReplicas = clampInt(p.MaxReplicas, max(1, p.MinReplicas), replicaLimit)
	p.Concurrency = clampInt(p.Concurrency, 1, math.MaxInt)
	p.Prefetch = max(p.Prefetch, p.Concurrency)
	p.TargetAge = positiveOr(p.TargetAge, fallbackTargetAge)
	p.ProcessingTime = positiveOr(p.ProcessingTime, fallbackProcessingTime)
	p.TargetUtilization = utilization(p.TargetUtilization)
	p.ScaleDownCooldown = max(p.ScaleDownCooldown, 0)
	if !(p.ActivationDepth >= 0) { // also catches NaN
		p.ActivationDepth = 0
	}
	p.RateWindow = positiveOr(p.RateWindow, fallbackRateWindow)
	if p.Mode != ModeShadow {
		p.Mode = ModeFlowscaler
	}
	if !(p.MessageCount > 0) || math.IsInf(p.MessageCount, 1) {
		p.MessageCount = fallbackMessageCount
	}
	p.DeadLetterAfter = max(p.DeadLetterAfter, 0)
	p.LockDuration = max(p.LockDuration, 0)
	p.PodStartup = max(p.PodStartup, 0)
	p.PanicWindow = positiveOr(p.PanicWindow, fallbackPanicWindow)
	switch {
	case !(p.ScaleUpFactor >= 1):
		p.ScaleUpFactor = fallbackScaleUpFactor
	case p.ScaleUpFactor > 1000:
		p.ScaleUpFactor = 1000
	}
	if p.ScaleUpPods < 1 {
		p.ScaleUpPods = fallbackScaleUpPods
	}
	p.ScaleUpPeriod = positiveOr(p.ScaleUpPeriod, fallbackScaleUpPeriod)
	if p.StallDeliveries < 2 {
		p.StallDeliveries = fallbackStallDelivers
	}
	if !(p.MaxFailureRate > 0 && p.MaxFailureRate <= 1) {
		p.MaxFailureRate = fallbackMaxFailureRate
	}
	switch p.Kind {
	case KindCPUBound, KindIOBound, KindMemoryHeavy:
	default:
		p.Kind = ""
	}
	return p
}

// utilization maps u into (0, 1]: 0.8 when u <= 0 or NaN, 1 when u > 1.
func utilization(u float64) float64 {
	switch {
	case !(u > 0): // also catches NaN
		return fallbackUtilization
	case u > 1:
		return 1
	}
	return u
}

// positiveOr returns d when d > 0, else fallback.
func positiveOr(d, fallback time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return fallback
}

// clampInt returns v limited to [lo, hi]; lo wins when lo > hi.
func clampInt(v, lo, hi int) int {
	return max(lo, min(v, hi))
}
