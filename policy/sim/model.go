package sim

import (
	"math"
	"math/rand/v2"
	"time"
)

// Scenario is what every policy of one comparison shares: the objective,
// the consumers and the broker.
type Scenario struct {
	// TargetAge is the message-age objective T.
	TargetAge time.Duration
	// Concurrency is the messages one pod processes at once (c).
	Concurrency int
	// PodStartup is how long a new pod takes to become ready.
	PodStartup time.Duration
	// MinReplicas and MaxReplicas are the ScaledObject's bounds.
	MinReplicas, MaxReplicas int
	// DeadLetterAfter is the broker's maximum delivery count: a message that
	// fails on this delivery is dead-lettered.
	DeadLetterAfter int
	// LockDuration is how long a failed or abandoned delivery stays locked
	// before the message is visible again.
	LockDuration time.Duration
	// ProcessingCV is the coefficient of variation of the (lognormal)
	// processing time.
	ProcessingCV float64
	// MetricsWindow is the window of the consumers' own metrics (rates,
	// processing time), as a Prometheus rate() would see them.
	MetricsWindow time.Duration
	// HPASync is the HPA controller's sync period.
	HPASync time.Duration
	// Seed makes the Poisson arrivals reproducible; every policy of a
	// comparison sees the same arrivals.
	Seed uint64
}

// DefaultScenario: 30 s objective, 4 slots per pod, 30 s start-up, up to
// 100 pods, dead-letter after 10 deliveries with a 60 s lock (Azure Service
// Bus' defaults), 15 s HPA sync, consumer metrics over 30 s.
func DefaultScenario() Scenario {
	return Scenario{
		TargetAge:       30 * time.Second,
		Concurrency:     4,
		PodStartup:      30 * time.Second,
		MinReplicas:     0,
		MaxReplicas:     100,
		DeadLetterAfter: 10,
		LockDuration:    60 * time.Second,
		ProcessingCV:    0.6,
		MetricsWindow:   30 * time.Second,
		HPASync:         15 * time.Second,
		Seed:            1,
	}
}

// Observation is what the policies can read at one instant: the queue as a
// broker reports it and the consumers' own metrics.
type Observation struct {
	// Depth is the visible backlog, messages.
	Depth float64
	// InFlight is delivered, unacknowledged messages: in processing, or
	// locked after a failure.
	InFlight float64
	// OldestAge is the age of the oldest visible message; 0 when none.
	OldestAge time.Duration
	// MaxDeliveries is the delivery count of the oldest pending message.
	MaxDeliveries int64
	// ProducedTotal counts messages ever added; ConsumedTotal first deliveries.
	ProducedTotal, ConsumedTotal float64
	// ConsumptionRate and FailureRate are acknowledged and failed messages
	// per second over the metrics window; NaN until a window has passed.
	ConsumptionRate, FailureRate float64
	// ProcessingTime and ProcessingTimeP95 are the mean and 95th percentile
	// processing time over the metrics window; -1 when nothing completed.
	ProcessingTime, ProcessingTimeP95 time.Duration
	// ReadyReplicas are pods ready to consume; Replicas all pods.
	ReadyReplicas, Replicas int
}

// cohort is a group of messages that arrived in the same second and have
// been delivered the same number of times.
type cohort struct {
	enq        float64 // mean arrival second
	deliveries int
	n          float64
	due        int  // retries: the second they become visible again
	poison     bool // the message that always fails
}

// fifo is a queue of cohorts.
type fifo struct {
	items []cohort
	head  int
	total float64
}

func (q *fifo) push(c cohort) {
	q.items = append(q.items, c)
	q.total += c.n
}

func (q *fifo) empty() bool { return q.head >= len(q.items) }

func (q *fifo) front() *cohort { return &q.items[q.head] }

func (q *fifo) pop() {
	q.total -= q.items[q.head].n
	q.head++
	if q.head > 1024 && q.head*2 > len(q.items) {
		q.items = append(q.items[:0], q.items[q.head:]...)
		q.head = 0
	}
	if q.empty() {
		q.total = 0
	}
}

// take removes up to n messages from the front cohort and returns them.
func (q *fifo) take(n float64) cohort {
	f := q.front()
	c := *f
	if n >= f.n-1e-9 {
		q.pop()
		return c
	}
	c.n = n
	f.n -= n
	q.total -= n
	return c
}

// ring holds future per-step quantities by delivery count: the messages
// completing in each step, their summed arrival seconds, and busy slots.
type ring struct {
	size, width int
	n, enq      []float64 // [slot*width + delivery]
	busy        []float64 // [slot]
}

func newRing(size, width int) *ring {
	return &ring{size: size, width: width, n: make([]float64, size*width), enq: make([]float64, size*width), busy: make([]float64, size)}
}

func (r *ring) add(t int, k *kernel, c cohort) {
	d := min(c.deliveries, r.width-1)
	for i, f := range k.done {
		if f == 0 {
			continue
		}
		s := ((t+i)%r.size)*r.width + d
		r.n[s] += c.n * f
		r.enq[s] += c.n * f * c.enq
	}
	for i, b := range k.busy {
		r.busy[(t+i)%r.size] += c.n * b
	}
}

// Run replays trace tr under scenario sc with policy p, deployed as
// p.Deployment() says. It is deterministic: the same arguments give the
// same Result.
func Run(tr Trace, sc Scenario, p Policy, o Options) Result {
	sc = sc.withDefaults()
	m := newModel(tr, sc, p, o)
	for t := range m.steps {
		m.step(t)
		if o.Progress != nil && ((t+1)%m.progressEvery == 0 || t+1 == m.steps) {
			o.Progress(t+1, m.steps)
		}
	}
	return m.result()
}

// Options tune a run without changing its outcome.
type Options struct {
	// Progress, when set, is called about 100 times with the seconds
	// simulated so far and the total.
	Progress func(done, total int)
	// SeriesPoints is about how many points each time series keeps (the
	// maximum of each bucket); 0 means 1500.
	SeriesPoints int
}

func (sc Scenario) withDefaults() Scenario {
	d := DefaultScenario()
	if sc.TargetAge <= 0 {
		sc.TargetAge = d.TargetAge
	}
	if sc.Concurrency < 1 {
		sc.Concurrency = d.Concurrency
	}
	if sc.PodStartup < 0 {
		sc.PodStartup = 0
	}
	if sc.MaxReplicas < 1 {
		sc.MaxReplicas = d.MaxReplicas
	}
	sc.MinReplicas = max(0, min(sc.MinReplicas, sc.MaxReplicas))
	if sc.DeadLetterAfter < 1 {
		sc.DeadLetterAfter = d.DeadLetterAfter
	}
	if sc.LockDuration <= 0 {
		sc.LockDuration = d.LockDuration
	}
	if !(sc.ProcessingCV > 0) {
		sc.ProcessingCV = d.ProcessingCV
	}
	if sc.MetricsWindow < time.Second {
		sc.MetricsWindow = d.MetricsWindow
	}
	if sc.HPASync < time.Second {
		sc.HPASync = d.HPASync
	}
	return sc
}

// Arrivals draws the Poisson arrivals of every second of tr with sc.Seed:
// the same for every policy of a comparison.
func Arrivals(tr Trace, seed uint64) []float64 {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	out := make([]float64, len(tr.Points))
	for i, p := range tr.Points {
		out[i] = poisson(rng, p.Rate)
	}
	return out
}

// poisson draws a Poisson count with mean r: by multiplication of uniforms
// below 30, else by the normal approximation rounded to a whole message.
func poisson(rng *rand.Rand, r float64) float64 {
	switch {
	case r <= 0:
		return 0
	case r < 30:
		l, k, p := math.Exp(-r), 0, 1.0
		for {
			p *= rng.Float64()
			if p <= l {
				return float64(k)
			}
			k++
		}
	}
	return max(0, math.Round(r+math.Sqrt(r)*rng.NormFloat64()))
}
