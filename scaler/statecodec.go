package scaler

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/flowscaler/flowscaler/policy"
	"github.com/flowscaler/flowscaler/sources"
)

// stateSchema is the version of the stored JSON. A replica refuses (and
// decides from its own memory) a schema it does not know, so a rolling
// upgrade that changes it must bump it.
const stateSchema = 1

// The wire form of memory: explicit fields so that the stored JSON is a
// stable, documented format rather than whatever the Go structs are today;
// TestStateWireCoversEveryField fails when a field is added to one of them.
type wireMemory struct {
	Schema      int                     `json:"schema"`
	Policy      wireState               `json:"policy"`
	Last        *wireEvaluation         `json:"last,omitempty"`
	Consumers   map[string]wireLastGood `json:"consumers,omitempty"`
	DeadLetters []wireDeadLetterSample  `json:"deadLetters,omitempty"`
}

type wireState struct {
	Samples         []wireSample         `json:"samples"`
	Recommendations []wireRecommendation `json:"recommendations"`
	Served          []wireRecommendation `json:"served"`
	PanicUntil      time.Time            `json:"panicUntil"`
	Ready           int                  `json:"ready"`
	ReadySince      time.Time            `json:"readySince"`
	Points          []wirePoint          `json:"points"`
}

type wireSample struct {
	At       time.Time `json:"at"`
	Depth    num       `json:"depth"`
	Produced num       `json:"produced"`
	Consumed num       `json:"consumed"`
}

type wireRecommendation struct {
	At       time.Time `json:"at"`
	Replicas int       `json:"replicas"`
	Rate     num       `json:"rate"`
}

type wirePoint struct {
	At       time.Time     `json:"at"`
	Replicas int           `json:"replicas"`
	Rate     num           `json:"rate"`
	W        time.Duration `json:"w"`
	Busy     bool          `json:"busy"`
}

type wireLastGood struct {
	Value num       `json:"value"`
	At    time.Time `json:"at"`
}

type wireDeadLetterSample struct {
	At     time.Time `json:"at"`
	Dead   num       `json:"dead"`
	Active num       `json:"active"`
}

type wireEvaluation struct {
	Reading     wireReading     `json:"reading"`
	Decision    wireDecision    `json:"decision"`
	DecidedAt   time.Time       `json:"decidedAt"`
	Previous    int             `json:"previous"`
	Consumers   *wireConsumers  `json:"consumers,omitempty"`
	DeadLetters wireDeadLetters `json:"deadLetters"`
}

type wireReading struct {
	At                time.Time     `json:"at"`
	Depth             num           `json:"depth"`
	DepthCapped       bool          `json:"depthCapped"`
	InFlight          num           `json:"inFlight"`
	OldestAge         time.Duration `json:"oldestAge"`
	OldestPendingIdle time.Duration `json:"oldestPendingIdle"`
	MaxDeliveries     int64         `json:"maxDeliveries"`
	ProducedTotal     num           `json:"producedTotal"`
	ConsumedTotal     num           `json:"consumedTotal"`
	DeadLetter        num           `json:"deadLetter"`
	Scheduled         num           `json:"scheduled"`
}

type wireDecision struct {
	Replicas int       `json:"replicas"`
	Mode     string    `json:"mode"`
	Active   bool      `json:"active"`
	Hints    wireHints `json:"hints"`
	Terms    wireTerms `json:"terms"`
	Reason   string    `json:"reason"`
}

type wireHints struct {
	Concurrency int           `json:"concurrency"`
	Prefetch    int           `json:"prefetch"`
	Cooldown    time.Duration `json:"cooldown"`
	Basis       string        `json:"basis"`
}

type wireTerms struct {
	ArrivalRate     num           `json:"arrivalRate"`
	BurstRate       num           `json:"burstRate"`
	ConsumptionRate num           `json:"consumptionRate"`
	ProcessingTime  time.Duration `json:"processingTime"`
	ProcessingFrom  string        `json:"processingFrom"`
	ProcessingP95   time.Duration `json:"processingP95"`
	SteadySlots     num           `json:"steadySlots"`
	DrainSlots      num           `json:"drainSlots"`
	InFlightFloor   int           `json:"inFlightFloor"`
	Raw             int           `json:"raw"`
	ThroughputPods  int           `json:"throughputPods"`
	Recommended     int           `json:"recommended"`
	PolicyReplicas  int           `json:"policyReplicas"`
	HeldUntil       time.Time     `json:"heldUntil"`
	Panicking       bool          `json:"panicking"`
	Stalled         string        `json:"stalled"`
}

type wireConsumers struct {
	Source          string          `json:"source"`
	ProcessingTime  wireMetricInput `json:"processingTime"`
	ProcessingP95   wireMetricInput `json:"processingP95"`
	ConsumptionRate wireMetricInput `json:"consumptionRate"`
	FailureRate     wireMetricInput `json:"failureRate"`
	ReadyPods       wireMetricInput `json:"readyPods"`
}

type wireMetricInput struct {
	Value num           `json:"value"`
	From  string        `json:"from"`
	Age   time.Duration `json:"age"`
	Why   string        `json:"why"`
}

type wireDeadLetters struct {
	Count      num  `json:"count"`
	Rate       num  `json:"rate"`
	ActiveFlat bool `json:"activeFlat"`
}

// num is a float64 whose unknown (NaN) is JSON null and whose infinities
// are the strings "+Inf" and "-Inf": JSON has neither, and the policy's
// "unknown" must never come back as 0.
type num float64

func (n num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	switch {
	case math.IsNaN(f):
		return []byte("null"), nil
	case math.IsInf(f, 1):
		return []byte(`"+Inf"`), nil
	case math.IsInf(f, -1):
		return []byte(`"-Inf"`), nil
	}
	return strconv.AppendFloat(nil, f, 'g', -1, 64), nil
}

func (n *num) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case "null":
		*n = num(math.NaN())
		return nil
	case `"+Inf"`:
		*n = num(math.Inf(1))
		return nil
	case `"-Inf"`:
		*n = num(math.Inf(-1))
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("%s: must be a number, null, \"+Inf\" or \"-Inf\"", b)
	}
	*n = num(f)
	return nil
}

// encodeMemory is the stored form of an object's memory. The last
// evaluation is stored without its Object, which every replica parses from
// KEDA's request itself.
func encodeMemory(m *memory) ([]byte, error) {
	w := wireMemory{Schema: stateSchema, Policy: wireStateOf(m.state)}
	if m.last != nil {
		e := wireEvaluationOf(*m.last)
		w.Last = &e
	}
	if len(m.consumers) > 0 {
		w.Consumers = make(map[string]wireLastGood, len(m.consumers))
		for metric, lg := range m.consumers {
			if lg.ok {
				w.Consumers[string(metric)] = wireLastGood{Value: num(lg.value), At: lg.at}
			}
		}
	}
	for _, s := range m.deadLetters.samples {
		w.DeadLetters = append(w.DeadLetters, wireDeadLetterSample{At: s.at, Dead: num(s.dead), Active: num(s.active)})
	}
	return json.Marshal(w)
}

// decodeMemory reads what encodeMemory wrote; obj becomes the last
// evaluation's Object. A value it cannot read is an error, never a panic
// and never an empty state passed off as the stored one.
func decodeMemory(data []byte, obj Object) (memory, error) {
	var w wireMemory
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return memory{}, fmt.Errorf("stored state is not valid: %w", err)
	}
	if w.Schema != stateSchema {
		return memory{}, fmt.Errorf("stored state schema = \"%d\": must be %d (written by another flowscaler version)", w.Schema, stateSchema)
	}
	m := memory{state: w.Policy.state()}
	if w.Last != nil {
		ev := w.Last.evaluation(obj)
		m.last = &ev
	}
	if len(w.Consumers) > 0 {
		m.consumers = make(consumerMemory, len(w.Consumers))
		for metric, lg := range w.Consumers {
			m.consumers[sources.Metric(metric)] = lastGood{value: float64(lg.Value), at: lg.At, ok: true}
		}
	}
	for _, s := range w.DeadLetters {
		m.deadLetters.samples = append(m.deadLetters.samples, deadLetterSample{at: s.At, dead: float64(s.Dead), active: float64(s.Active)})
	}
	return m, nil
}

func wireStateOf(s policy.State) wireState {
	w := wireState{PanicUntil: s.PanicUntil, Ready: s.Ready, ReadySince: s.ReadySince}
	for _, x := range s.Samples {
		w.Samples = append(w.Samples, wireSample{At: x.At, Depth: num(x.Depth), Produced: num(x.Produced), Consumed: num(x.Consumed)})
	}
	w.Recommendations = wireRecommendations(s.Recommendations)
	w.Served = wireRecommendations(s.Served)
	for _, p := range s.Points {
		w.Points = append(w.Points, wirePoint{At: p.At, Replicas: p.Replicas, Rate: num(p.Rate), W: p.W, Busy: p.Busy})
	}
	return w
}

func wireRecommendations(rs []policy.Recommendation) []wireRecommendation {
	var out []wireRecommendation
	for _, r := range rs {
		out = append(out, wireRecommendation{At: r.At, Replicas: r.Replicas, Rate: num(r.Rate)})
	}
	return out
}

func (w wireState) state() policy.State {
	s := policy.State{PanicUntil: w.PanicUntil, Ready: w.Ready, ReadySince: w.ReadySince}
	for _, x := range w.Samples {
		s.Samples = append(s.Samples, policy.Sample{At: x.At, Depth: float64(x.Depth), Produced: float64(x.Produced), Consumed: float64(x.Consumed)})
	}
	s.Recommendations = recommendations(w.Recommendations)
	s.Served = recommendations(w.Served)
	for _, p := range w.Points {
		s.Points = append(s.Points, policy.Point{At: p.At, Replicas: p.Replicas, Rate: float64(p.Rate), W: p.W, Busy: p.Busy})
	}
	return s
}

func recommendations(ws []wireRecommendation) []policy.Recommendation {
	var out []policy.Recommendation
	for _, r := range ws {
		out = append(out, policy.Recommendation{At: r.At, Replicas: r.Replicas, Rate: float64(r.Rate)})
	}
	return out
}

func wireEvaluationOf(ev Evaluation) wireEvaluation {
	r, d, t := ev.Reading, ev.Decision, ev.Decision.Terms
	w := wireEvaluation{
		Reading: wireReading{
			At: r.At, Depth: num(r.Depth), DepthCapped: r.DepthCapped, InFlight: num(r.InFlight),
			OldestAge: r.OldestAge, OldestPendingIdle: r.OldestPendingIdle, MaxDeliveries: r.MaxDeliveries,
			ProducedTotal: num(r.ProducedTotal), ConsumedTotal: num(r.ConsumedTotal),
			DeadLetter: num(r.DeadLetter), Scheduled: num(r.Scheduled),
		},
		Decision: wireDecision{
			Replicas: d.Replicas, Mode: d.Mode, Active: d.Active, Reason: d.Reason,
			Hints: wireHints{Concurrency: d.Hints.Concurrency, Prefetch: d.Hints.Prefetch, Cooldown: d.Hints.Cooldown, Basis: d.Hints.Basis},
			Terms: wireTerms{
				ArrivalRate: num(t.ArrivalRate), BurstRate: num(t.BurstRate), ConsumptionRate: num(t.ConsumptionRate),
				ProcessingTime: t.ProcessingTime, ProcessingFrom: t.ProcessingFrom, ProcessingP95: t.ProcessingP95,
				SteadySlots: num(t.SteadySlots), DrainSlots: num(t.DrainSlots), InFlightFloor: t.InFlightFloor,
				Raw: t.Raw, ThroughputPods: t.ThroughputPods, Recommended: t.Recommended, PolicyReplicas: t.PolicyReplicas,
				HeldUntil: t.HeldUntil, Panicking: t.Panicking, Stalled: t.Stalled,
			},
		},
		DecidedAt:   ev.DecidedAt,
		Previous:    ev.Previous,
		DeadLetters: wireDeadLetters{Count: num(ev.DeadLetters.Count), Rate: num(ev.DeadLetters.Rate), ActiveFlat: ev.DeadLetters.ActiveFlat},
	}
	if c := ev.Consumers; c != nil {
		w.Consumers = &wireConsumers{
			Source: c.Source, ProcessingTime: wireMetric(c.ProcessingTime), ProcessingP95: wireMetric(c.ProcessingP95),
			ConsumptionRate: wireMetric(c.ConsumptionRate), FailureRate: wireMetric(c.FailureRate), ReadyPods: wireMetric(c.ReadyPods),
		}
	}
	return w
}

func wireMetric(m MetricInput) wireMetricInput {
	return wireMetricInput{Value: num(m.Value), From: m.From, Age: m.Age, Why: m.Why}
}

func (m wireMetricInput) input() MetricInput {
	return MetricInput{Value: float64(m.Value), From: m.From, Age: m.Age, Why: m.Why}
}

func (w wireEvaluation) evaluation(obj Object) Evaluation {
	r, d, t := w.Reading, w.Decision, w.Decision.Terms
	ev := Evaluation{
		Object: obj,
		Reading: sources.Reading{
			At: r.At, Depth: float64(r.Depth), DepthCapped: r.DepthCapped, InFlight: float64(r.InFlight),
			OldestAge: r.OldestAge, OldestPendingIdle: r.OldestPendingIdle, MaxDeliveries: r.MaxDeliveries,
			ProducedTotal: float64(r.ProducedTotal), ConsumedTotal: float64(r.ConsumedTotal),
			DeadLetter: float64(r.DeadLetter), Scheduled: float64(r.Scheduled),
		},
		Decision: policy.Decision{
			Replicas: d.Replicas, Mode: d.Mode, Active: d.Active, Reason: d.Reason,
			Hints: policy.Hints{Concurrency: d.Hints.Concurrency, Prefetch: d.Hints.Prefetch, Cooldown: d.Hints.Cooldown, Basis: d.Hints.Basis},
			Terms: policy.Terms{
				ArrivalRate: float64(t.ArrivalRate), BurstRate: float64(t.BurstRate), ConsumptionRate: float64(t.ConsumptionRate),
				ProcessingTime: t.ProcessingTime, ProcessingFrom: t.ProcessingFrom, ProcessingP95: t.ProcessingP95,
				SteadySlots: float64(t.SteadySlots), DrainSlots: float64(t.DrainSlots), InFlightFloor: t.InFlightFloor,
				Raw: t.Raw, ThroughputPods: t.ThroughputPods, Recommended: t.Recommended, PolicyReplicas: t.PolicyReplicas,
				HeldUntil: t.HeldUntil, Panicking: t.Panicking, Stalled: t.Stalled,
			},
		},
		DecidedAt:   w.DecidedAt,
		Previous:    w.Previous,
		DeadLetters: DeadLetters{Count: float64(w.DeadLetters.Count), Rate: float64(w.DeadLetters.Rate), ActiveFlat: w.DeadLetters.ActiveFlat},
	}
	if c := w.Consumers; c != nil {
		ev.Consumers = &ConsumerInputs{
			Source: c.Source, ProcessingTime: c.ProcessingTime.input(), ProcessingP95: c.ProcessingP95.input(),
			ConsumptionRate: c.ConsumptionRate.input(), FailureRate: c.FailureRate.input(), ReadyPods: c.ReadyPods.input(),
		}
	}
	return ev
}
