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
	// Mode is ModeFlowscaler (serve flowscaler's answer; "" means the same)
	// or ModeShadow (serve the classic answer, compute flowscaler's alongside).
	Mode string
	// MessageCount is the classic messages-per-pod target served in shadow mode. > 0.
	MessageCount float64
	// DeadLetterAfter is the delivery count at which the broker or the
	// consumer dead-letters a message; 0 when unknown.
	DeadLetterAfter int
	// LockDuration is how long a delivered message stays locked (visibility
	// timeout, peek-lock duration, XAUTOCLAIM min-idle); 0 when unknown.
	LockDuration time.Duration
	// PodStartup is how long a new pod takes to become ready. >= 0.
	PodStartup time.Duration
	// PanicWindow is the short span over which a burst is measured; the
	// effective span is at least the time since the previous decision. > 0.
	PanicWindow time.Duration
	// ScaleUpFactor, ScaleUpPods and ScaleUpPeriod limit scale-up: within
	// ScaleUpPeriod the target may grow to max(ceil(base × factor), base +
	// pods), base the target served at the period's start. Factor >= 1,
	// pods >= 1, period > 0.
	ScaleUpFactor float64
	ScaleUpPods   int
	ScaleUpPeriod time.Duration
	// StallDeliveries: when the oldest pending message has been delivered
	// this often, scaling is judged unable to help. >= 2.
	StallDeliveries int
	// MaxFailureRate: when at least this fraction of finished messages
	// fails, scaling is judged unable to help. In (0, 1].
	MaxFailureRate float64
	// Kind is the workload kind behind the concurrency hints: KindCPUBound,
	// KindIOBound, KindMemoryHeavy, or "" (start from Concurrency and Prefetch).
	Kind string
}

// Workload kinds of Params.Kind, with the prefetch / concurrency starting
// points of the usual consumer table: 8/4, 64/32, 4/2.
const (
	KindCPUBound    = "cpu-bound"
	KindIOBound     = "io-bound"
	KindMemoryHeavy = "memory-heavy"
)

// Modes of Params.Mode.
const (
	ModeFlowscaler = "flowscaler"
	ModeShadow     = "shadow"
)

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
	// ProcessingTimeP95 is the measured 95th percentile processing time; <= 0 when unknown.
	ProcessingTimeP95 time.Duration
	// FailureRate is failed (nacked, abandoned, timed-out) messages per
	// second from consumer metrics; NaN when unknown.
	FailureRate float64
	// ReadyReplicas is the number of ready consumer pods; 0 when unknown
	// (the policy then cannot judge per-pod throughput).
	ReadyReplicas int
}

// Sample is one remembered observation used to measure rates.
type Sample struct {
	At       time.Time
	Depth    float64 // NaN when unknown
	Produced float64 // NaN when unknown
	Consumed float64 // NaN when unknown
}

// Recommendation is one replica count at one instant: a throughput
// recommendation held for the cooldown, or a target served.
type Recommendation struct {
	At       time.Time
	Replicas int
	// Rate is the arrival rate (messages per second) a throughput
	// recommendation was made for; 0 when unknown or for a served target.
	Rate float64
}

// Point is a settled measurement of the consumers: ready replicas unchanged
// for half a RateWindow, so that the rates reflect them.
type Point struct {
	At       time.Time
	Replicas int
	Rate     float64       // acknowledged messages per second
	W        time.Duration // measured mean processing time
	// Busy: messages were waiting, so Rate is what the pods could do.
	Busy bool
}

// State is what the policy remembers between decisions for one ScaledObject.
// The zero value is a valid empty state. Decide never mutates the State it is
// given; it returns a new one.
type State struct {
	// Samples are observations within RateWindow, oldest first, plus the
	// newest one at or before the window start so a rate spans the window;
	// spaced about RateWindow/32 apart (about 33 at most).
	Samples []Sample
	// Recommendations are throughput recommendations within
	// ScaleDownCooldown, oldest first; one that is not above a later one can
	// never be the maximum again and is dropped, so Replicas strictly
	// decrease along the slice.
	Recommendations []Recommendation
	// Served are the targets served within ScaleUpPeriod plus the one in
	// effect at its start, oldest first: the base of the scale-up limit.
	// The last one is the previous target.
	Served []Recommendation
	// PanicUntil is when panic mode ends unless a burst renews it.
	PanicUntil time.Time
	// Ready is the ready-replica count last seen and ReadySince when it
	// last changed; Points are settled measurements, one per replica count,
	// within max(4 × ScaleDownCooldown, 20 minutes).
	Ready      int
	ReadySince time.Time
	Points     []Point
}

// Hints are advice for consumers and operators, served next to the target.
type Hints struct {
	// Concurrency is the recommended per-pod concurrent-message limit.
	Concurrency int
	// Prefetch is the recommended per-pod prefetch; >= Concurrency.
	Prefetch int
	// Cooldown is the scale-down stabilisation window in effect.
	Cooldown time.Duration
	// Basis says where the hints come from, for people.
	Basis string
}

// Terms are the numbers behind a decision, kept so that a person can follow it.
type Terms struct {
	ArrivalRate     float64       // λ, messages per second (NaN when not measurable yet)
	BurstRate       float64       // λ over the panic window (NaN when not measurable yet)
	ConsumptionRate float64       // messages per second (NaN when unknown)
	ProcessingTime  time.Duration // W used in the formula
	ProcessingFrom  string        // "measured" or "configured"
	ProcessingP95   time.Duration // measured p95 of W; 0 when unknown
	SteadySlots     float64       // min(λ·W ÷ u, Erlang-C slots)
	DrainSlots      float64       // (B ÷ T)·W·urgency
	InFlightFloor   int           // ceil(in-flight ÷ prefetch): pods holding work already delivered
	Raw             int           // ceil((steady + drain) ÷ c) before floors and clamps
	ThroughputPods  int           // ceil(steady ÷ c): the part the cooldown holds
	Recommended     int           // after floors and the [min, max] clamp, before cooldown
	PolicyReplicas  int           // flowscaler's own answer; equals Decision.Replicas unless in shadow mode
	HeldUntil       time.Time     // when a held higher recommendation expires; zero when not holding
	Panicking       bool          // a burst is being answered: no scale-down
	Stalled         string        // why scaling cannot help ("" when it can)
}

// Decision is the outcome of one evaluation.
type Decision struct {
	Replicas int    // the target served to KEDA, within [MinReplicas, MaxReplicas]
	Mode     string // ModeFlowscaler, or ModeShadow when Replicas is the classic answer
	Active   bool   // visible plus in-flight work exceeds ActivationDepth
	Hints    Hints
	Terms    Terms
	Reason   string // one line a person can follow without reading code
}
