package scaler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flowscaler/flowscaler/policy"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

// Reader reads one queue; the server sees the sources through this alone.
type Reader interface {
	Read(ctx context.Context, q sources.Query) (sources.Reading, error)
}

// Options configure a Server. Reader is required; the rest have defaults.
type Options struct {
	Reader Reader
	// MetricsReader reads consumer metrics for objects that ask for them;
	// without it their processing time is the configured one.
	MetricsReader MetricsReader
	Config        *config.Config
	Metrics       *Metrics
	Logger        *slog.Logger
	// Now is the clock; tests move it by hand.
	Now func() time.Time
	// TracerProvider gets the spans of each evaluation (queue read, metrics
	// read, decision); nil records none.
	TracerProvider trace.TracerProvider
	// StateStore, when set, holds every object's state so that replicas
	// share it and a restart keeps it (see sharedstate.go); nil keeps it in
	// this process alone.
	StateStore StateStore
}

// Server implements KEDA's externalscaler service.
type Server struct {
	pb.UnimplementedExternalScalerServer

	reader        Reader
	metricsReader MetricsReader
	metrics       *Metrics
	log           *slog.Logger
	now           func() time.Time
	tracer        trace.Tracer

	cfg      atomic.Pointer[config.Config]
	parsed   sync.Map // metadataKey -> parseResult, for the current config
	objects  sync.Map // Object.ID -> *objectState
	draining chan struct{}
	drainOne sync.Once
	swept    atomic.Int64 // unix nanos of the last sweep of idle objects

	store        StateStore
	storeFailing atomic.Bool // logged once per change, not per call
}

type parseResult struct {
	obj Object
	err error
}

// objectState is what the server remembers of one object between calls.
type objectState struct {
	mu       sync.Mutex
	obj      Object
	lastUsed time.Time
	memory
	// seq is the state store's sequence number of memory (0: not stored).
	seq uint64
	// failure is the error of the latest read when it failed; "" after a
	// good one.
	failure string
}

// memory is what decisions read and write of one object; with a state
// store, it is what replicas share.
type memory struct {
	state policy.State
	// last is the latest decision from a good reading; served while a source
	// fails, for at most staleAfter after good.At.
	last *Evaluation
	// consumers remembers the last good consumer metrics.
	consumers consumerMemory
	// deadLetters remembers dead-letter counts to measure their growth.
	deadLetters deadLetterMemory
}

// Evaluation is one decision with what it was made from.
type Evaluation struct {
	Object   Object
	Reading  sources.Reading
	Decision policy.Decision
	// DecidedAt is when the policy ran; Reading.At is when the queue was read.
	DecidedAt time.Time
	// Previous is the target served by the evaluation before this one (0 for the first).
	Previous int
	// Stale is set when the source failed and this is the last good answer.
	Stale    bool
	StaleErr string
	// Consumers are the consumer metrics behind the decision; nil when the
	// object reads none.
	Consumers *ConsumerInputs
	// DeadLetters are the dead-letter count and growth behind the decision
	// (Count NaN when the source knows none).
	DeadLetters DeadLetters
}

// errNoMetricsReader is the cause given when an object asks for consumer
// metrics and the server has no reader for them.
var errNoMetricsReader = errors.New("no consumer metrics reader configured")

// idleObjectTTL is how long an object nobody asks about keeps its state.
// It is longer than any sensible cooldown so that a slow poller never loses
// its scale-down stabilisation.
const idleObjectTTL = 2 * time.Hour

// New builds a Server. It does no I/O.
func New(opts Options) (*Server, error) {
	if opts.Reader == nil {
		return nil, errors.New("scaler.New: Options.Reader is required")
	}
	if opts.Config == nil {
		return nil, errors.New("scaler.New: Options.Config is required")
	}
	s := &Server{
		reader:        opts.Reader,
		metricsReader: opts.MetricsReader,
		metrics:       opts.Metrics,
		log:           opts.Logger,
		now:           opts.Now,
		draining:      make(chan struct{}),
		store:         opts.StateStore,
	}
	if s.metrics == nil {
		s.metrics = NewMetrics(nil)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	tp := opts.TracerProvider
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	s.tracer = tp.Tracer(tracerName)
	s.SetConfig(opts.Config)
	return s, nil
}

// SetConfig swaps the config; later calls parse their metadata against it.
// Objects keep their policy state across a reload.
func (s *Server) SetConfig(c *config.Config) {
	s.cfg.Store(c)
	s.parsed.Clear()
}

// Config is the config in force.
func (s *Server) Config() *config.Config { return s.cfg.Load() }

// Drain ends every open stream cleanly (the client sees io.EOF) so that a
// graceful stop does not wait for streams that never end by themselves.
func (s *Server) Drain() { s.drainOne.Do(func() { close(s.draining) }) }

// parse resolves metadata into an Object, cached per config generation.
func (s *Server) parse(ref *pb.ScaledObjectRef) (Object, error) {
	if ref == nil {
		return Object{}, status.Error(codes.InvalidArgument, "scaledObjectRef: must be set")
	}
	key := metadataKey(ref.GetNamespace(), ref.GetName(), ref.GetScalerMetadata())
	if r, ok := s.parsed.Load(key); ok {
		pr := r.(parseResult)
		return pr.obj, pr.err
	}
	obj, err := ParseObject(s.cfg.Load(), ref.GetNamespace(), ref.GetName(), ref.GetScalerMetadata())
	if err != nil {
		err = status.Error(codes.InvalidArgument, fmt.Sprintf("invalid metadata for %s/%s: %s", ref.GetNamespace(), ref.GetName(), joinLines(err)))
	}
	s.parsed.Store(key, parseResult{obj: obj, err: err})
	return obj, err
}

// Evaluate reads the object's queue and decides. A source failure is served
// from the last good decision while it is younger than staleAfter, and is an
// Unavailable error after that: never a 0 and never "inactive". Consumer
// metrics, when the object reads them, are read alongside; their failure
// only changes where the processing time comes from (see merge).
func (s *Server) Evaluate(ctx context.Context, ref *pb.ScaledObjectRef) (Evaluation, error) {
	return s.evaluate(ctx, ref, s.tracer)
}

// evaluate is Evaluate with the spans of the reads and the decision made by
// tr, children of the span in ctx (the gRPC call's), which gets the object
// and the outcome.
func (s *Server) evaluate(ctx context.Context, ref *pb.ScaledObjectRef, tr trace.Tracer) (Evaluation, error) {
	obj, err := s.parse(ref)
	if err != nil {
		return Evaluation{}, err
	}
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		span.SetAttributes(objectAttributes(obj)...)
	}
	srv := s.cfg.Load().Server
	st := s.stateOf(obj)

	readCtx, cancel := context.WithTimeout(ctx, time.Duration(srv.ReadTimeout))
	// Consumer metrics are read next to the queue, within the same timeout;
	// their failure never fails the call.
	var m sources.Metrics
	metricsErr := errNoMetricsReader
	var wg sync.WaitGroup
	if obj.Metrics != nil && s.metricsReader != nil {
		wg.Go(func() { m, metricsErr = s.readConsumerMetrics(readCtx, tr, obj) })
	}
	reading, readErr := s.readQueue(readCtx, tr, obj)
	wg.Wait()
	cancel()

	st.mu.Lock()
	defer st.mu.Unlock()
	now := s.now()
	st.lastUsed = now
	st.obj = obj
	if s.store != nil {
		return s.evaluateShared(ctx, span, tr, st, obj, reading, readErr, m, metricsErr, now, srv)
	}
	if readErr != nil {
		ev, err := s.staleOrFail(ctx, st, readErr, now, time.Duration(srv.StaleAfter))
		if err == nil {
			outcome(span, ev)
		}
		return ev, err
	}
	st.failure = ""
	if st.last != nil && !st.last.Stale && st.last.Reading.At.Equal(reading.At) {
		// The same coalesced reading: deciding again would count it twice.
		span.SetAttributes(attrReused.Bool(true))
		outcome(span, *st.last)
		return *st.last, nil
	}
	ev := s.decideOn(ctx, tr, obj, &st.memory, reading, m, metricsErr, now, time.Duration(srv.StaleAfter), "")
	s.metrics.observeDecision(ev)
	outcome(span, ev)
	s.sweep(now)
	return ev, nil
}

// decideOn runs the policy on a good reading against mem and records the
// decision in mem; note is added to the reason.
func (s *Server) decideOn(ctx context.Context, tr trace.Tracer, obj Object, mem *memory, reading sources.Reading, m sources.Metrics, metricsErr error, now time.Time, staleAfter time.Duration, note string) Evaluation {
	in := inputsOf(reading)
	var consumers *ConsumerInputs
	if obj.Metrics != nil {
		if mem.consumers == nil {
			mem.consumers = consumerMemory{}
		}
		ci := mem.consumers.merge(*obj.Metrics, m, metricsErr, now, staleAfter, obj.Params.ProcessingTime)
		ci.apply(&in)
		consumers = &ci
	}
	dl := mem.deadLetters.observe(reading, now, obj.Params.RateWindow)
	dl.apply(&in)
	var notes string
	if consumers != nil {
		notes = consumers.note()
	}
	notes += dl.note() + note
	dec, next := decide(ctx, tr, obj, in, mem.state, now, notes)
	mem.state = next
	ev := Evaluation{Object: obj, Reading: reading, Decision: dec, DecidedAt: now, Consumers: consumers, DeadLetters: dl}
	if mem.last != nil {
		ev.Previous = mem.last.Decision.Replicas
	}
	mem.last = &ev
	return ev
}

func (s *Server) staleOrFail(ctx context.Context, st *objectState, readErr error, now time.Time, staleAfter time.Duration) (Evaluation, error) {
	q := st.obj.Query
	if ctx.Err() != nil {
		// The caller gave up; its deadline, not the source, ended the read.
		return Evaluation{}, status.FromContextError(ctx.Err()).Err()
	}
	if callerDeadlineEnded(ctx, readErr) {
		return Evaluation{}, status.Errorf(codes.DeadlineExceeded, "%s: the call's deadline passed during the read", q)
	}
	s.metrics.sourceFailure(st.obj)
	st.failure = readErr.Error()
	if st.last != nil {
		age := now.Sub(st.last.Reading.At)
		if age <= staleAfter {
			ev := *st.last
			ev.Stale = true
			ev.StaleErr = readErr.Error()
			ev.Decision.Reason = fmt.Sprintf("stale (%s old, source failing: %v): %s", formatDuration(age), readErr, st.last.Decision.Reason)
			s.metrics.staleAnswer(st.obj)
			return ev, nil
		}
		return Evaluation{}, status.Errorf(codes.Unavailable, "%s: read failed: %s; last good reading is %s old, beyond staleAfter %s", q, cause(q, readErr), formatDuration(age), staleAfter)
	}
	return Evaluation{}, status.Errorf(codes.Unavailable, "%s: read failed: %s; no good reading yet", q, cause(q, readErr))
}

// deadlineSlack is how close to the caller's deadline a timed-out read
// counts as ended by that deadline. A shared read's timer and the call's own
// fire at the same instant but not in a fixed order; when the read's fires
// first, ctx.Err() is still nil for a moment.
var deadlineSlack = 20 * time.Millisecond // a variable for tests only

// callerDeadlineEnded reports whether a read that timed out was cut by the
// caller's deadline rather than by readTimeout: a slow source is then not
// counted as failing, and no stale answer goes to a caller that is gone.
func callerDeadlineEnded(ctx context.Context, readErr error) bool {
	dl, ok := ctx.Deadline()
	if !ok || time.Until(dl) > deadlineSlack {
		return false
	}
	var ne net.Error
	return errors.Is(readErr, context.DeadlineExceeded) || (errors.As(readErr, &ne) && ne.Timeout())
}

// cause is readErr's text without the query it may start with, which the
// message around it names already.
func cause(q sources.Query, readErr error) string {
	msg := readErr.Error()
	if rest, ok := strings.CutPrefix(msg, q.String()+": "); ok {
		return rest
	}
	return msg
}

func (s *Server) stateOf(obj Object) *objectState {
	if v, ok := s.objects.Load(obj.ID); ok {
		return v.(*objectState)
	}
	v, _ := s.objects.LoadOrStore(obj.ID, &objectState{obj: obj})
	return v.(*objectState)
}

// sweep forgets objects nobody has asked about for idleObjectTTL, at most
// once a minute, so deleted ScaledObjects do not leak memory or series.
func (s *Server) sweep(now time.Time) {
	last := s.swept.Load()
	if now.UnixNano()-last < int64(time.Minute) || !s.swept.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	s.objects.Range(func(k, v any) bool {
		st := v.(*objectState)
		if st.mu.TryLock() {
			idle := now.Sub(st.lastUsed) > idleObjectTTL
			obj := st.obj // evaluate writes it under the lock
			st.mu.Unlock()
			if idle {
				s.objects.Delete(k)
				s.metrics.forget(obj)
			}
		}
		return true
	})
}

// Evaluations lists the latest evaluation of every object that has had a
// good reading, marked Stale when the latest read failed.
func (s *Server) Evaluations() []Evaluation {
	var out []Evaluation
	for _, o := range s.snapshot() {
		if o.last != nil {
			out = append(out, *o.last)
		}
	}
	return out
}

// inputsOf maps a source reading to policy inputs; what the source cannot
// know stays unknown (NaN or negative), never 0.
func inputsOf(r sources.Reading) policy.Inputs {
	return policy.Inputs{
		Depth:           r.Depth,
		InFlight:        r.InFlight,
		OldestAge:       r.OldestAge,
		MaxDeliveries:   r.MaxDeliveries,
		ProducedTotal:   r.ProducedTotal,
		ConsumedTotal:   r.ConsumedTotal,
		ConsumptionRate: math.NaN(),
		ProcessingTime:  -1,
		FailureRate:     math.NaN(),
	}
}

// GetMetricSpec answers from metadata alone: KEDA calls it before every
// evaluation, and if it failed on a source outage KEDA's fallback could
// never engage. The target is 1, so the HPA's AverageValue maths
// ceil(value / 1) makes the metric value the replica count.
//
// Bad metadata still gets its spec: the spec depends on the object's name
// alone, and KEDA v2.21 only logs a failed GetMetricSpec (in the operator's
// log, where a ScaledObject's owner rarely looks) and never asks again. With
// the spec it creates the HPA, and every GetMetrics and IsActive then
// answers InvalidArgument, which KEDA records as a KEDAScalerFailed event on
// the ScaledObject and the HPA shows in its conditions: the message reaches
// `kubectl describe`. Nothing scales on it; a configured fallback engages,
// as for any scaler that cannot answer.
func (s *Server) GetMetricSpec(_ context.Context, ref *pb.ScaledObjectRef) (*pb.GetMetricSpecResponse, error) {
	obj, err := s.parse(ref)
	if err != nil {
		if !namedRef(ref) {
			return nil, err
		}
		obj = Object{MetricName: metricName(ref.GetNamespace(), ref.GetName())}
	}
	return specOf(obj), nil
}

// namedRef reports whether ref names an object: a namespace and a name
// within Kubernetes' limits.
func namedRef(ref *pb.ScaledObjectRef) bool {
	ns, name := ref.GetNamespace(), ref.GetName()
	return ns != "" && name != "" && len(ns) <= 63 && len(name) <= 253
}

func specOf(obj Object) *pb.GetMetricSpecResponse {
	return &pb.GetMetricSpecResponse{MetricSpecs: []*pb.MetricSpec{{
		MetricName: obj.MetricName, TargetSize: 1, TargetSizeFloat: 1,
	}}}
}

// GetMetrics returns the replica target as the single metric value.
func (s *Server) GetMetrics(ctx context.Context, req *pb.GetMetricsRequest) (*pb.GetMetricsResponse, error) {
	ev, err := s.Evaluate(ctx, req.GetScaledObjectRef())
	if err != nil {
		return nil, err
	}
	return &pb.GetMetricsResponse{MetricValues: []*pb.MetricValue{{
		MetricName:       ev.Object.MetricName,
		MetricValue:      int64(ev.Decision.Replicas),
		MetricValueFloat: float64(ev.Decision.Replicas),
	}}}, nil
}

// IsActive reports whether visible plus in-flight work exceeds the activation depth.
func (s *Server) IsActive(ctx context.Context, ref *pb.ScaledObjectRef) (*pb.IsActiveResponse, error) {
	ev, err := s.Evaluate(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &pb.IsActiveResponse{Result: ev.Decision.Active}, nil
}

// StreamIsActive sends the current activity at once, then on every change,
// checking every streamCheckInterval (I) with readings no older than I/2, so
// a first message is pushed within about 1.5·I (750 ms by default) instead
// of waiting for the shared read cache. It ends with nil (io.EOF at KEDA) on
// shutdown; a source failure past staleAfter ends it with Unavailable, and
// KEDA reconnects with its own backoff.
func (s *Server) StreamIsActive(ref *pb.ScaledObjectRef, stream pb.ExternalScaler_StreamIsActiveServer) error {
	ctx := stream.Context()
	var sent *bool
	for {
		interval := time.Duration(s.cfg.Load().Server.StreamCheckInterval)
		ev, err := s.evaluate(sources.WithMaxAge(ctx, interval/2), ref, quietTracer)
		if err != nil {
			return err
		}
		if sent == nil || *sent != ev.Decision.Active {
			if err := stream.Send(&pb.IsActiveResponse{Result: ev.Decision.Active}); err != nil {
				return err
			}
			pushed(ctx, ev)
			active := ev.Decision.Active
			sent = &active
		}
		if !s.wait(ctx, interval) {
			return nil
		}
	}
}

// StreamMetricSpec sends the spec at once and again whenever a config reload
// changes it, so that it never diverges from GetMetricSpec.
func (s *Server) StreamMetricSpec(ref *pb.ScaledObjectRef, stream pb.ExternalScaler_StreamMetricSpecServer) error {
	ctx := stream.Context()
	var sent string
	for {
		obj, err := s.parse(ref)
		if err != nil {
			return err
		}
		spec := specOf(obj)
		if key := spec.String(); key != sent {
			if err := stream.Send(spec); err != nil {
				return err
			}
			sent = key
		}
		if !s.wait(ctx, time.Duration(s.cfg.Load().Server.StreamCheckInterval)) {
			return nil
		}
	}
}

// wait sleeps for d; false means stop: the server drains or the client left.
func (s *Server) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.draining:
		return false
	}
}

func joinLines(err error) string {
	var b []byte
	for i, line := range splitJoined(err) {
		if i > 0 {
			b = append(b, "; "...)
		}
		b = append(b, line...)
	}
	return string(b)
}

func splitJoined(err error) []string {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range j.Unwrap() {
			out = append(out, splitJoined(e)...)
		}
		return out
	}
	return []string{err.Error()}
}
