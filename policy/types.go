package policy

import "time"

// Params are the tunables of one ScaledObject after profile and per-object
// overrides have been applied. Validation happens where they are parsed; the
// policy still defends itself against nonsense (see sanitize).
type Params struct {
	// MinReplicas and MaxReplicas bound the target; 0 <= MinReplicas <= MaxReplicas, MaxReplicas >= 1.
	MinReplicas int
	MaxReplicas int
	// TargetAge is the message-age objective: a message should wait no longer than this. > 0.
	TargetAge time.Duration
	// Concurrency is how many messages one pod works on at once (c). >= 1.
	Concurrency int
	// Prefetch is how many messages one pod holds locally; >= Concurrency.
	Prefetch int
	// ProcessingTime is the fallback processing time per message (W) when no
	// measurement is available. > 0.
	ProcessingTime time.Duration
	// TargetUtilization is the fraction of each pod's slots the target plans
	// to keep busy (u), in (0, 1].
	TargetUtilization float64
	// ScaleDownCooldown is how long a higher recommendation is held before the
	// target may fall: the target is the maximum recommendation in this window. >= 0.
	ScaleDownCooldown time.Duration
	// ActivationDepth: the object is active when visible plus in-flight work exceeds it. >= 0.
	ActivationDepth float64
	// RateWindow is the span over which rates are measured from counter deltas. > 0.
	RateWindow time.Duration
}

// Inputs is one observation of the queue and its consumers. Unknown values are
// NaN (floats) or negative (durations); the policy never treats unknown as 0.
type Inputs struct {
	// Depth is the visible backlog in messages: list length, or undelivered
	// entries (lag) of a stream consumer group. >= 0.
	Depth float64
	// InFlight is delivered but not yet acknowledged work (stream pending entries). >= 0.
	InFlight float64
	// OldestAge is the age of the oldest undelivered message; < 0 when unknown.
	OldestAge time.Duration
	// MaxDeliveries is the highest delivery count among pending messages; 0 when none or unknown.
	MaxDeliveries int64
	// ProducedTotal is a cumulative count of messages ever added (stream
	// entries-added); NaN when unknown. Its rate is the arrival rate.
	ProducedTotal float64
	// ConsumedTotal is a cumulative count of messages handed to consumers
	// (stream entries-read); NaN when unknown.
	ConsumedTotal float64
	// ConsumptionRate is a directly measured consumption rate in messages per
	// second (from consumer metrics); NaN when unknown.
	ConsumptionRate float64
	// ProcessingTime is the measured mean processing time per message; <= 0 when unknown.
	ProcessingTime time.Duration
}

// Sample is one remembered observation used to measure rates.
type Sample struct {
	At       time.Time
	Depth    float64 // NaN when unknown
	Produced float64 // NaN when unknown
	Consumed float64 // NaN when unknown
}

// Recommendation is one raw (pre-cooldown) replica recommendation.
type Recommendation struct {
	At       time.Time
	Replicas int
}

// State is what the policy remembers between decisions for one ScaledObject.
// The zero value is a valid empty state. Decide never mutates the State it is
// given; it returns a new one.
type State struct {
	// Samples are observations within RateWindow, oldest first, plus the
	// newest one at or before the window start so a rate spans the window;
	// spaced about RateWindow/32 apart (about 33 at most).
	Samples []Sample
	// Recommendations are raw recommendations within ScaleDownCooldown, oldest
	// first; one that is not above a later one can never be the maximum again
	// and is dropped, so Replicas strictly decrease along the slice.
	Recommendations []Recommendation
}

// Hints are advice for consumers and operators, served next to the target.
type Hints struct {
	// Concurrency is the recommended per-pod concurrent-message limit.
	Concurrency int
	// Prefetch is the recommended per-pod prefetch; >= Concurrency.
	Prefetch int
	// Cooldown is the scale-down stabilisation window in effect.
	Cooldown time.Duration
}

// Terms are the numbers behind a decision, kept so that a person can follow it.
type Terms struct {
	ArrivalRate     float64       // λ, messages per second (NaN when not measurable yet)
	ConsumptionRate float64       // messages per second (NaN when unknown)
	ProcessingTime  time.Duration // W used in the formula
	ProcessingFrom  string        // "measured" or "configured"
	SteadySlots     float64       // λ·W ÷ u
	DrainSlots      float64       // (B ÷ T)·W·urgency
	InFlightFloor   int           // ceil(in-flight ÷ prefetch): pods holding work already delivered
	Raw             int           // ceil((steady + drain) ÷ c) before floors and clamps
	Recommended     int           // after floors and the [min, max] clamp, before cooldown
	HeldUntil       time.Time     // when a held higher recommendation expires; zero when not holding
}

// Decision is the outcome of one evaluation.
type Decision struct {
	Replicas int  // the target served to KEDA, within [MinReplicas, MaxReplicas]
	Active   bool // visible plus in-flight work exceeds ActivationDepth
	Hints    Hints
	Terms    Terms
	Reason   string // one line a person can follow without reading code
}
