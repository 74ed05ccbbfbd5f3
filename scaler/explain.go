package scaler

import (
	"context"
	"math"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flowscaler/flowscaler/policy"
	flowscalerv1 "github.com/flowscaler/flowscaler/proto/flowscaler/v1"
)

// DecisionService serves flowscaler's own API, flowscaler.v1.DecisionService,
// from the server's latest evaluations: it reads no source, so asking it
// never adds load on a broker and never changes a decision.
type DecisionService struct {
	flowscalerv1.UnimplementedDecisionServiceServer
	srv *Server
}

var _ flowscalerv1.DecisionServiceServer = (*DecisionService)(nil)

// NewDecisionService serves srv's decisions.
func NewDecisionService(srv *Server) *DecisionService { return &DecisionService{srv: srv} }

// objectSnapshot is one object as Explain and Hints see it.
type objectSnapshot struct {
	obj Object
	// last is the latest good evaluation, marked Stale when the latest read
	// failed; nil before the first good reading.
	last    *Evaluation
	failure string
}

// snapshot copies what the server knows of every object, under each
// object's lock, without reading anything.
func (s *Server) snapshot() []objectSnapshot {
	var out []objectSnapshot
	s.objects.Range(func(_, v any) bool {
		st := v.(*objectState)
		st.mu.Lock()
		o := objectSnapshot{obj: st.obj, failure: st.failure}
		if st.last != nil {
			ev := *st.last
			if st.failure != "" {
				ev.Stale, ev.StaleErr = true, st.failure
			}
			o.last = &ev
		}
		st.mu.Unlock()
		out = append(out, o)
		return true
	})
	return out
}

// Explain returns the latest decision for one ScaledObject (every
// flowscaler trigger of it), or for every object when All is set.
func (d *DecisionService) Explain(_ context.Context, req *flowscalerv1.ExplainRequest) (*flowscalerv1.ExplainResponse, error) {
	ns, name := req.GetNamespace(), req.GetName()
	switch {
	case req.GetAll() && name != "":
		return nil, status.Errorf(codes.InvalidArgument, "name = %q: must be empty when all is set", name)
	case !req.GetAll() && ns == "":
		return nil, status.Error(codes.InvalidArgument, `namespace = "": required unless all is set`)
	case !req.GetAll() && name == "":
		return nil, status.Error(codes.InvalidArgument, `name = "": required unless all is set`)
	}
	now := d.srv.now()
	staleAfter := time.Duration(d.srv.Config().Server.StaleAfter)
	var out []*flowscalerv1.ObjectDecision
	for _, o := range d.srv.snapshot() {
		if (ns != "" && o.obj.Namespace != ns) || (name != "" && o.obj.Name != name) {
			continue
		}
		if o.last == nil && o.failure == "" {
			continue // asked about, but no read has finished yet
		}
		out = append(out, objectDecision(o, now, staleAfter))
	}
	if len(out) == 0 && !req.GetAll() {
		return nil, status.Errorf(codes.NotFound,
			"%s/%s: no decision on this flowscaler instance: KEDA has not asked it about this ScaledObject since it started (each flowscaler replica knows only the objects KEDA asked it about)", ns, name)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.DecidedAtUnixMillis != b.DecidedAtUnixMillis {
			return a.DecidedAtUnixMillis > b.DecidedAtUnixMillis
		}
		return a.MetricName < b.MetricName
	})
	return &flowscalerv1.ExplainResponse{Decisions: out}, nil
}

// Hints sends the hints of the object's latest decision at once, then
// whenever they change, checking every streamCheckInterval. It ends with
// nil (OK at the client) when the server drains or the client leaves, and
// with NotFound when the object is unknown or forgotten.
func (d *DecisionService) Hints(req *flowscalerv1.HintsRequest, stream flowscalerv1.DecisionService_HintsServer) error {
	ns, name := req.GetNamespace(), req.GetName()
	switch {
	case ns == "":
		return status.Error(codes.InvalidArgument, `namespace = "": required`)
	case name == "":
		return status.Error(codes.InvalidArgument, `name = "": required`)
	}
	ctx := stream.Context()
	var sent *flowscalerv1.Hints
	for {
		ev, ok := d.srv.latest(ns, name)
		switch {
		case !ok && sent == nil:
			return status.Errorf(codes.NotFound, "%s/%s: no decision on this flowscaler instance yet: KEDA has not asked it about this ScaledObject, or every read has failed", ns, name)
		case !ok:
			return status.Errorf(codes.NotFound, "%s/%s: forgotten: KEDA has not asked about it for %s", ns, name, idleObjectTTL)
		}
		h := hintsOf(ev.Decision.Hints)
		if sent == nil || !proto.Equal(h, sent) {
			if err := stream.Send(&flowscalerv1.HintsResponse{
				Namespace: ns, Name: name, Hints: h, DecidedAtUnixMillis: ev.DecidedAt.UnixMilli(),
			}); err != nil {
				return err
			}
			sent = h
		}
		if !d.srv.wait(ctx, time.Duration(d.srv.Config().Server.StreamCheckInterval)) {
			return nil
		}
	}
}

// latest is the newest good evaluation of any trigger of namespace/name.
func (s *Server) latest(namespace, name string) (Evaluation, bool) {
	var best *Evaluation
	for _, o := range s.snapshot() {
		if o.last != nil && o.obj.Namespace == namespace && o.obj.Name == name &&
			(best == nil || o.last.DecidedAt.After(best.DecidedAt)) {
			best = o.last
		}
	}
	if best == nil {
		return Evaluation{}, false
	}
	return *best, true
}

func hintsOf(h policy.Hints) *flowscalerv1.Hints {
	return &flowscalerv1.Hints{
		Concurrency: int32(h.Concurrency), Prefetch: int32(h.Prefetch),
		CooldownSeconds: h.Cooldown.Seconds(), Basis: h.Basis,
	}
}

// objectDecision is the API form of what the server knows of one object:
// the inputs, the terms of
//
//	replicas = ceil((λ·W ÷ u + (B ÷ T)·W·urgency) ÷ c)
//
// recomputed where the policy does not keep them (λ as used, urgency,
// whether Erlang C was the smaller), the decision and its hints.
func objectDecision(o objectSnapshot, now time.Time, staleAfter time.Duration) *flowscalerv1.ObjectDecision {
	obj := o.obj
	if o.last != nil {
		obj = o.last.Object
	}
	p := obj.Params.Sanitize()
	od := &flowscalerv1.ObjectDecision{
		Namespace: obj.Namespace, Name: obj.Name, MetricName: obj.MetricName,
		Source: obj.Query.String(), Profile: obj.Profile,
		Params:            paramsOf(p),
		StaleAfterSeconds: staleAfter.Seconds(),
	}
	if o.last == nil {
		od.Stale, od.Unavailable, od.StaleError = true, true, o.failure
		return od
	}
	ev := *o.last
	r, d, t := ev.Reading, ev.Decision, ev.Decision.Terms
	od.Stale, od.StaleError = ev.Stale, ev.StaleErr
	od.ReadingAgeSeconds = now.Sub(r.At).Seconds()
	od.DecisionAgeSeconds = now.Sub(ev.DecidedAt).Seconds()
	od.ReadAtUnixMillis = r.At.UnixMilli()
	od.DecidedAtUnixMillis = ev.DecidedAt.UnixMilli()
	od.Unavailable = ev.Stale && now.Sub(r.At) > staleAfter

	in := &flowscalerv1.Inputs{
		DepthMessages: r.Depth, DepthCapped: r.DepthCapped, InFlightMessages: r.InFlight,
		OldestAgeSeconds: known(r.OldestAge.Seconds(), r.OldestAge >= 0),
		ArrivalRate:      known(t.ArrivalRate, !math.IsNaN(t.ArrivalRate)),
		BurstRate:        known(t.BurstRate, !math.IsNaN(t.BurstRate)),
		MaxDeliveries:    r.MaxDeliveries,
		ProcessingTime:   &flowscalerv1.ConsumerMetric{Value: proto.Float64(t.ProcessingTime.Seconds()), From: t.ProcessingFrom},
		ConsumptionRate:  &flowscalerv1.ConsumerMetric{From: fromUnknown},
	}
	if c := ev.Consumers; c != nil {
		in.ConsumerMetricsSource = c.Source
		in.ProcessingTime.From, in.ProcessingTime.AgeSeconds, in.ProcessingTime.Why = c.ProcessingTime.From, c.ProcessingTime.Age.Seconds(), c.ProcessingTime.Why
		in.ProcessingTimeP95 = consumerMetric(c.ProcessingP95)
		in.FailureRate = consumerMetric(c.FailureRate)
		in.ReadyPods = consumerMetric(c.ReadyPods)
		in.ConsumptionRate = consumerMetric(c.ConsumptionRate)
	} else if t.ProcessingP95 > 0 {
		in.ProcessingTimeP95 = &flowscalerv1.ConsumerMetric{Value: proto.Float64(t.ProcessingP95.Seconds()), From: fromMeasured}
	}
	// The policy measures consumption from the consumers' metrics or else
	// from the queue's own counters (a stream's entries-read).
	if !math.IsNaN(t.ConsumptionRate) {
		if !usable(metricInputOf(ev.Consumers, func(c *ConsumerInputs) MetricInput { return c.ConsumptionRate })) {
			in.ConsumptionRate = &flowscalerv1.ConsumerMetric{From: fromCounters}
		}
		in.ConsumptionRate.Value = proto.Float64(t.ConsumptionRate)
	}
	if !math.IsNaN(r.DeadLetter) {
		in.DeadLetterMessages = proto.Float64(r.DeadLetter)
		in.DeadLetterRate = known(ev.DeadLetters.Rate, !math.IsNaN(ev.DeadLetters.Rate))
		// The dead-letter growth stands in for a failure rate the
		// consumers' metrics do not give (see DeadLetters.apply).
		if ev.DeadLetters.Rate > 0 && !usable(metricInputOf(ev.Consumers, func(c *ConsumerInputs) MetricInput { return c.FailureRate })) {
			in.FailureRate = &flowscalerv1.ConsumerMetric{Value: proto.Float64(ev.DeadLetters.Rate), From: fromDeadLetters}
		}
	}
	od.Inputs = in

	lam := t.ArrivalRate
	if t.Panicking && !math.IsNaN(t.BurstRate) && (math.IsNaN(lam) || t.BurstRate > lam) {
		lam = t.BurstRate
	}
	simple := lam * t.ProcessingTime.Seconds() / p.TargetUtilization
	od.Terms = &flowscalerv1.Terms{
		RateUsed:       known(lam, !math.IsNaN(lam)),
		SteadySlots:    t.SteadySlots,
		ErlangC:        lam > 0 && t.SteadySlots < simple-1e-9,
		Urgency:        urgencyOf(r.OldestAge, p.TargetAge),
		DrainSlots:     t.DrainSlots,
		Raw:            int32(t.Raw),
		ThroughputPods: int32(t.ThroughputPods),
		InFlightFloor:  int32(t.InFlightFloor),
		Recommended:    int32(t.Recommended),
		PolicyReplicas: int32(t.PolicyReplicas),
		Panicking:      t.Panicking,
		Stalled:        t.Stalled,
	}
	if !t.HeldUntil.IsZero() {
		od.Terms.HeldUntilUnixMillis = t.HeldUntil.UnixMilli()
	}
	mode := d.Mode
	if mode == "" {
		mode = policy.ModeFlowscaler
	}
	od.Decision = &flowscalerv1.Decision{
		Replicas: int32(d.Replicas), PreviousReplicas: int32(ev.Previous),
		Active: d.Active, Reason: d.Reason, Mode: mode,
	}
	od.Hints = hintsOf(d.Hints)
	return od
}

// Where a rate came from when not from the consumers' metrics: the queue's
// own counters, or the growth of its dead-letter queue.
const (
	fromCounters    = "counters"
	fromDeadLetters = "dead-letters"
)

func metricInputOf(c *ConsumerInputs, f func(*ConsumerInputs) MetricInput) MetricInput {
	if c == nil {
		return MetricInput{}
	}
	return f(c)
}

func consumerMetric(m MetricInput) *flowscalerv1.ConsumerMetric {
	return &flowscalerv1.ConsumerMetric{
		Value: known(m.Value, !math.IsNaN(m.Value) && m.From != ""),
		From:  m.From, AgeSeconds: m.Age.Seconds(), Why: m.Why,
	}
}

func paramsOf(p policy.Params) *flowscalerv1.Params {
	mode := p.Mode
	if mode == "" {
		mode = policy.ModeFlowscaler
	}
	return &flowscalerv1.Params{
		MinReplicas: int32(p.MinReplicas), MaxReplicas: int32(p.MaxReplicas),
		TargetAgeSeconds: p.TargetAge.Seconds(), Concurrency: int32(p.Concurrency), Prefetch: int32(p.Prefetch),
		TargetUtilization: p.TargetUtilization, ProcessingTimeSeconds: p.ProcessingTime.Seconds(),
		ScaleDownCooldownSeconds: p.ScaleDownCooldown.Seconds(), ActivationDepth: p.ActivationDepth,
		RateWindowSeconds: p.RateWindow.Seconds(), Mode: mode, MessageCount: p.MessageCount,
	}
}

// urgencyOf = clamp(oldest ÷ target, 1, 4), 1 when oldest < 0 (unknown):
// the policy's urgency, which it does not keep in its Terms.
func urgencyOf(oldest, target time.Duration) float64 {
	if oldest < 0 || target <= 0 {
		return 1
	}
	return max(1, min(float64(oldest)/float64(target), 4))
}

// known is v when ok, else nil: unknown stays absent, never 0.
func known(v float64, ok bool) *float64 {
	if !ok {
		return nil
	}
	return &v
}
