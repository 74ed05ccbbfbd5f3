package sim

import "math"

// Report is the outcome of one policy on one trace.
type Report struct {
	// P50AgeSeconds, P95AgeSeconds and P99AgeSeconds are percentiles of how
	// long messages waited before their first delivery (messages never
	// delivered count with the age they reached).
	P50AgeSeconds float64 `json:"p50AgeSeconds"`
	P95AgeSeconds float64 `json:"p95AgeSeconds"`
	P99AgeSeconds float64 `json:"p99AgeSeconds"`
	// SecondsOverObjective counts seconds in which the oldest visible
	// message was older than the target age.
	SecondsOverObjective int `json:"secondsOverObjective"`
	// SecondsAfterFirstScaleUp counts seconds from the first scale-up on;
	// SecondsOverObjectiveAfterFirstScaleUp those of them over the objective.
	SecondsAfterFirstScaleUp              int     `json:"secondsAfterFirstScaleUp"`
	SecondsOverObjectiveAfterFirstScaleUp int     `json:"secondsOverObjectiveAfterFirstScaleUp"`
	ObjectiveMetAfterFirstScaleUp         float64 `json:"objectiveMetAfterFirstScaleUp"`
	// MaxBacklog is the largest visible backlog, messages.
	MaxBacklog float64 `json:"maxBacklog"`
	// ReplicaSeconds is the sum over seconds of the pods that existed,
	// ready or starting.
	ReplicaSeconds float64 `json:"replicaSeconds"`
	// PeakReplicas is the most pods at once.
	PeakReplicas int `json:"peakReplicas"`
	// ScaleEvents counts changes of the replica count.
	ScaleEvents int `json:"scaleEvents"`
	// DeadLettered counts messages moved to the dead-letter queue.
	DeadLettered float64 `json:"deadLettered"`
	// Processed counts messages acknowledged.
	Processed float64 `json:"processed"`
	// StalledDecisions counts decisions whose reason says the policy held
	// because scaling would not help; StallReason is the first such reason.
	StalledDecisions int    `json:"stalledDecisions,omitempty"`
	StallReason      string `json:"stallReason,omitempty"`
}

// Result is a Report with the time series behind it.
type Result struct {
	Policy string
	Report Report
	Series Series
}

// Series are the time series of a run, in buckets of Step seconds: the
// mean arrival rate and the maximum of the others in each bucket.
type Series struct {
	Step      int       // seconds per point
	Seconds   []float64 // start of each bucket
	Arrivals  []float64 // messages per second
	Backlog   []float64 // visible messages
	OldestAge []float64 // seconds
	Replicas  []float64 // pods
	// Own is the policy's own replica answer where it differs from what it
	// serves (shadow mode); NaN elsewhere.
	Own []float64
}

type seriesBuilder struct {
	step int
	n    []int // seconds in each bucket, for the arrival mean
	s    Series
}

func newSeriesBuilder(steps, points int) seriesBuilder {
	if points <= 0 {
		points = 1500
	}
	step := max(1, (steps+points-1)/points)
	return seriesBuilder{step: step, s: Series{Step: step}}
}

func (b *seriesBuilder) add(t int, rate, backlog, age, replicas float64, own int) {
	s := &b.s
	ownV := math.NaN()
	if own >= 0 {
		ownV = float64(own)
	}
	if t%b.step == 0 {
		b.n = append(b.n, 1)
		s.Seconds = append(s.Seconds, float64(t))
		s.Arrivals = append(s.Arrivals, rate)
		s.Backlog = append(s.Backlog, backlog)
		s.OldestAge = append(s.OldestAge, age)
		s.Replicas = append(s.Replicas, replicas)
		s.Own = append(s.Own, ownV)
		return
	}
	i := len(s.Seconds) - 1
	b.n[i]++
	s.Arrivals[i] += rate
	s.Backlog[i] = max(s.Backlog[i], backlog)
	s.OldestAge[i] = max(s.OldestAge[i], age)
	s.Replicas[i] = max(s.Replicas[i], replicas)
	if !math.IsNaN(ownV) {
		if math.IsNaN(s.Own[i]) {
			s.Own[i] = ownV
		}
		s.Own[i] = max(s.Own[i], ownV)
	}
}

func (b *seriesBuilder) build() Series {
	for i, n := range b.n {
		b.s.Arrivals[i] /= float64(n)
	}
	return b.s
}

// Oracle is a lower bound on the replica-seconds of any policy: the work of
// every message processed once at full per-pod throughput, Σ rate × W ÷ c.
func Oracle(tr Trace, sc Scenario) float64 {
	sc = sc.withDefaults()
	return tr.Work() / float64(sc.Concurrency)
}
