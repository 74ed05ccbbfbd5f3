package scaler

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	flowscalerv1 "github.com/flowscaler/flowscaler/proto/flowscaler/v1"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

func dialDecisions(t *testing.T, srv *Server) flowscalerv1.DecisionServiceClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	flowscalerv1.RegisterDecisionServiceServer(gs, NewDecisionService(srv))
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return flowscalerv1.NewDecisionServiceClient(conn)
}

func (s *scripted) setReading(r sources.Reading) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reading, s.err = r, nil
}

func (s *scripted) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// A backlog of 100 with the oldest 40 s old against a 10 s target: urgency
// 4, drain (100 ÷ 10 s) × 2 s × 4 = 80 slots, 80 ÷ 2 per pod = 40 pods,
// clamped to maxReplicas 30; λ is not measurable from one reading.
func TestExplainShowsInputsTermsDecisionAndAges(t *testing.T) {
	srv, rd, clk := newTestServer(t)
	rd.setReading(sources.Reading{Depth: 100, InFlight: 4, OldestAge: 40 * time.Second, OldestPendingIdle: -1,
		MaxDeliveries: 2, ProducedTotal: math.NaN(), ConsumedTotal: math.NaN(), DeadLetter: math.NaN(), Scheduled: math.NaN()})
	r := ref(stream("processingTime", "2s", "targetAge", "10s", "concurrency", "2", "prefetch", "8"))
	if v, err := metricValue(t, srv, r); err != nil || v != 30 {
		t.Fatalf("GetMetrics = %v, %v; want 30", v, err)
	}
	decidedAt := clk.Now()
	clk.Add(3 * time.Second)
	client := dialDecisions(t, srv)
	got, err := client.Explain(context.Background(), &flowscalerv1.ExplainRequest{Namespace: "shop", Name: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	want := &flowscalerv1.ExplainResponse{Decisions: []*flowscalerv1.ObjectDecision{{
		Namespace: "shop", Name: "orders", MetricName: "flowscaler-shop-orders",
		Source: "redis-stream local/orders#workers",
		Params: &flowscalerv1.Params{
			MinReplicas: 0, MaxReplicas: 30, TargetAgeSeconds: 10, Concurrency: 2, Prefetch: 8,
			TargetUtilization: 0.8, ProcessingTimeSeconds: 2, ScaleDownCooldownSeconds: 300,
			RateWindowSeconds: 60, Mode: "flowscaler", MessageCount: 5,
		},
		Inputs: &flowscalerv1.Inputs{
			DepthMessages: 100, InFlightMessages: 4, OldestAgeSeconds: proto.Float64(40), MaxDeliveries: 2,
			ProcessingTime:  &flowscalerv1.ConsumerMetric{Value: proto.Float64(2), From: "configured"},
			ConsumptionRate: &flowscalerv1.ConsumerMetric{From: "unknown"},
		},
		Terms: &flowscalerv1.Terms{
			Urgency: 4, DrainSlots: 80, Raw: 40, InFlightFloor: 1, Recommended: 30, PolicyReplicas: 30,
		},
		Decision:            &flowscalerv1.Decision{Replicas: 30, Active: true, Mode: "flowscaler"},
		Hints:               &flowscalerv1.Hints{Concurrency: 2, Prefetch: 8, CooldownSeconds: 300, Basis: "configured"},
		ReadingAgeSeconds:   3,
		DecisionAgeSeconds:  3,
		ReadAtUnixMillis:    decidedAt.UnixMilli(),
		DecidedAtUnixMillis: decidedAt.UnixMilli(),
		StaleAfterSeconds:   60,
	}}}
	if diff := cmp.Diff(want, got, protocmp.Transform(), protocmp.IgnoreFields(&flowscalerv1.Decision{}, "reason")); diff != "" {
		t.Errorf("Explain (-want +got):\n%s", diff)
	}
	if reason := got.GetDecisions()[0].GetDecision().GetReason(); !strings.Contains(reason, "clamped to max 30") {
		t.Errorf("reason = %q, want the clamp named", reason)
	}
}

// A failing source shows as stale with the error while the last good
// decision is served, then as unavailable past staleAfter; an object that
// never had a good reading is unavailable with the error alone.
func TestExplainStaleAndUnavailable(t *testing.T) {
	srv, rd, clk := newTestServer(t)
	client := dialDecisions(t, srv)
	ctx := context.Background()
	rd.set(7, nil)
	r := ref(stream())
	if _, err := metricValue(t, srv, r); err != nil {
		t.Fatal(err)
	}
	rd.fail(errors.New("dial tcp: connection refused"))
	clk.Add(10 * time.Second)
	if _, err := metricValue(t, srv, r); err != nil {
		t.Fatalf("within staleAfter: %v", err)
	}
	type view struct {
		Stale, Unavailable bool
		Err                string
		ReadingAge         float64
		Replicas           int32
	}
	explain := func(name string) view {
		t.Helper()
		resp, err := client.Explain(ctx, &flowscalerv1.ExplainRequest{Namespace: "shop", Name: name})
		if err != nil {
			t.Fatal(err)
		}
		d := resp.GetDecisions()[0]
		return view{d.GetStale(), d.GetUnavailable(), d.GetStaleError(), d.GetReadingAgeSeconds(), d.GetDecision().GetReplicas()}
	}
	if diff := cmp.Diff(view{Stale: true, Err: "dial tcp: connection refused", ReadingAge: 10, Replicas: 1}, explain("orders")); diff != "" {
		t.Errorf("stale (-want +got):\n%s", diff)
	}
	clk.Add(61 * time.Second)
	if diff := cmp.Diff(view{Stale: true, Unavailable: true, Err: "dial tcp: connection refused", ReadingAge: 71, Replicas: 1}, explain("orders")); diff != "" {
		t.Errorf("past staleAfter (-want +got):\n%s", diff)
	}
	rd.set(7, nil)
	if _, err := metricValue(t, srv, r); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(view{Replicas: 1}, explain("orders")); diff != "" {
		t.Errorf("after recovery (-want +got):\n%s", diff)
	}

	rd.fail(errors.New("NOGROUP no such key"))
	never := &flowscalerv1.ExplainRequest{Namespace: "shop", Name: "never"}
	if _, err := metricValue(t, srv, &pb.ScaledObjectRef{Namespace: "shop", Name: "never", ScalerMetadata: stream("stream", "never")}); status.Code(err) != codes.Unavailable {
		t.Fatalf("no good reading: %v, want Unavailable", err)
	}
	resp, err := client.Explain(ctx, never)
	if err != nil {
		t.Fatal(err)
	}
	if d := resp.GetDecisions()[0]; !d.GetUnavailable() || d.GetStaleError() != "NOGROUP no such key" || d.GetDecision() != nil {
		t.Errorf("never read = %v; want unavailable with the error and no decision", d)
	}
}

func TestExplainRequestErrors(t *testing.T) {
	srv, rd, _ := newTestServer(t)
	rd.set(1, nil)
	if _, err := metricValue(t, srv, ref(stream())); err != nil {
		t.Fatal(err)
	}
	client := dialDecisions(t, srv)
	tests := []struct {
		name string
		req  *flowscalerv1.ExplainRequest
		code codes.Code
		msg  string
	}{
		{"no name", &flowscalerv1.ExplainRequest{Namespace: "shop"}, codes.InvalidArgument, `name = "": required unless all is set`},
		{"no namespace", &flowscalerv1.ExplainRequest{Name: "orders"}, codes.InvalidArgument, `namespace = "": required unless all is set`},
		{"all with a name", &flowscalerv1.ExplainRequest{All: true, Name: "orders"}, codes.InvalidArgument, `name = "orders": must be empty when all is set`},
		{"unknown", &flowscalerv1.ExplainRequest{Namespace: "shop", Name: "payments"}, codes.NotFound,
			"shop/payments: no decision on this flowscaler instance: KEDA has not asked it about this ScaledObject since it started (each flowscaler replica knows only the objects KEDA asked it about)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client.Explain(context.Background(), tt.req)
			if st := status.Convert(err); st.Code() != tt.code || st.Message() != tt.msg {
				t.Errorf("Explain = %v %q; want %v %q", st.Code(), st.Message(), tt.code, tt.msg)
			}
		})
	}
}

func TestExplainAll(t *testing.T) {
	srv, rd, _ := newTestServer(t)
	rd.set(1, nil)
	for _, o := range []struct{ ns, name string }{{"shop", "orders"}, {"billing", "invoices"}, {"shop", "emails"}} {
		if _, err := metricValue(t, srv, &pb.ScaledObjectRef{Namespace: o.ns, Name: o.name, ScalerMetadata: stream()}); err != nil {
			t.Fatal(err)
		}
	}
	client := dialDecisions(t, srv)
	names := func(req *flowscalerv1.ExplainRequest) []string {
		resp, err := client.Explain(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range resp.GetDecisions() {
			out = append(out, d.GetNamespace()+"/"+d.GetName())
		}
		return out
	}
	if diff := cmp.Diff([]string{"billing/invoices", "shop/emails", "shop/orders"}, names(&flowscalerv1.ExplainRequest{All: true})); diff != "" {
		t.Errorf("all (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"shop/emails", "shop/orders"}, names(&flowscalerv1.ExplainRequest{All: true, Namespace: "shop"})); diff != "" {
		t.Errorf("all in shop (-want +got):\n%s", diff)
	}
}

// Hints are sent at once, again when they change (here: the ScaledObject
// is edited to a new concurrency, so its newest decision has other hints),
// not when they do not, and the stream ends cleanly on Drain.
func TestHintsStreamSendsAtOnceThenOnChangeAndEndsCleanly(t *testing.T) {
	srv, rd, clk := newTestServer(t)
	srv.Config().Server.StreamCheckInterval = config.Duration(10 * time.Millisecond)
	rd.set(3, nil)
	if _, err := metricValue(t, srv, ref(stream("concurrency", "2", "prefetch", "4"))); err != nil {
		t.Fatal(err)
	}
	client := dialDecisions(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs, err := client.Hints(ctx, &flowscalerv1.HintsRequest{Namespace: "shop", Name: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := hs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	want := &flowscalerv1.Hints{Concurrency: 2, Prefetch: 4, CooldownSeconds: 300, Basis: "configured"}
	if diff := cmp.Diff(want, first.GetHints(), protocmp.Transform()); diff != "" {
		t.Errorf("first (-want +got):\n%s", diff)
	}
	// A new decision with the same hints sends nothing; the edit does.
	clk.Add(time.Second)
	if _, err := metricValue(t, srv, ref(stream("concurrency", "2", "prefetch", "4"))); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if _, err := metricValue(t, srv, ref(stream("concurrency", "6", "prefetch", "12"))); err != nil {
		t.Fatal(err)
	}
	second, err := hs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	want = &flowscalerv1.Hints{Concurrency: 6, Prefetch: 12, CooldownSeconds: 300, Basis: "configured"}
	if diff := cmp.Diff(want, second.GetHints(), protocmp.Transform()); diff != "" {
		t.Errorf("after the edit (-want +got):\n%s", diff)
	}
	if got, want := second.GetDecidedAtUnixMillis(), clk.Now().UnixMilli(); got != want {
		t.Errorf("decidedAt = %d, want %d (the edited object's decision)", got, want)
	}
	srv.Drain()
	if _, err := hs.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after Drain: %v, want io.EOF", err)
	}
}

func TestHintsStreamErrors(t *testing.T) {
	srv, _, _ := newTestServer(t)
	client := dialDecisions(t, srv)
	tests := []struct {
		name string
		req  *flowscalerv1.HintsRequest
		code codes.Code
		msg  string
	}{
		{"no namespace", &flowscalerv1.HintsRequest{Name: "orders"}, codes.InvalidArgument, `namespace = "": required`},
		{"no name", &flowscalerv1.HintsRequest{Namespace: "shop"}, codes.InvalidArgument, `name = "": required`},
		{"unknown", &flowscalerv1.HintsRequest{Namespace: "shop", Name: "orders"}, codes.NotFound,
			"shop/orders: no decision on this flowscaler instance yet: KEDA has not asked it about this ScaledObject, or every read has failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs, err := client.Hints(context.Background(), tt.req)
			if err == nil {
				_, err = hs.Recv()
			}
			if st := status.Convert(err); st.Code() != tt.code || st.Message() != tt.msg {
				t.Errorf("Hints = %v %q; want %v %q", st.Code(), st.Message(), tt.code, tt.msg)
			}
		})
	}
}

// A source with a dead-letter queue: its count, its growth, and the growth
// standing in for the failure rate the consumers' metrics do not give.
func TestExplainDeadLetters(t *testing.T) {
	srv, rd, clk := newTestServer(t)
	reading := func(dead float64) sources.Reading {
		return sources.Reading{Depth: 5, OldestAge: -1, OldestPendingIdle: -1, ProducedTotal: math.NaN(), ConsumedTotal: math.NaN(),
			DeadLetter: dead, Scheduled: math.NaN()}
	}
	rd.setReading(reading(10))
	if _, err := metricValue(t, srv, ref(stream())); err != nil {
		t.Fatal(err)
	}
	clk.Add(10 * time.Second)
	rd.setReading(reading(30))
	if _, err := metricValue(t, srv, ref(stream())); err != nil {
		t.Fatal(err)
	}
	resp, err := dialDecisions(t, srv).Explain(context.Background(), &flowscalerv1.ExplainRequest{Namespace: "shop", Name: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	in := resp.GetDecisions()[0].GetInputs()
	type view struct {
		Dead, Rate, Failure float64
		From                string
	}
	got := view{in.GetDeadLetterMessages(), in.GetDeadLetterRate(), in.GetFailureRate().GetValue(), in.GetFailureRate().GetFrom()}
	// (30 − 10) dead-lettered over 10 s = 2 per second.
	if diff := cmp.Diff(view{Dead: 30, Rate: 2, Failure: 2, From: "dead-letters"}, got); diff != "" {
		t.Errorf("dead letters (-want +got):\n%s", diff)
	}
}
