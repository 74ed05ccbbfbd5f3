package scaler

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

// scripted is a Reader whose answers the test sets; it stands in for a
// broker only where the test is about the server's own rules (staleness,
// streams), not about reading a broker.
type scripted struct {
	mu      sync.Mutex
	reading sources.Reading
	err     error
	calls   int
	now     func() time.Time
}

func (s *scripted) Read(ctx context.Context, q sources.Query) (sources.Reading, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.err != nil {
		return sources.Reading{}, s.err
	}
	r := s.reading
	r.At = s.now()
	return r, nil
}

func (s *scripted) set(depth float64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reading = sources.Reading{Depth: depth, OldestAge: -1, OldestPendingIdle: -1, ProducedTotal: math.NaN(), ConsumedTotal: math.NaN()}
	s.err = err
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestServer(t *testing.T) (*Server, *scripted, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)}
	rd := &scripted{now: clk.Now}
	rd.set(0, nil)
	srv, err := New(Options{Reader: rd, Config: testConfig(t), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return srv, rd, clk
}

func ref(md map[string]string) *pb.ScaledObjectRef {
	return &pb.ScaledObjectRef{Namespace: "shop", Name: "orders", ScalerMetadata: md}
}

func metricValue(t *testing.T, srv *Server, r *pb.ScaledObjectRef) (float64, error) {
	t.Helper()
	resp, err := srv.GetMetrics(context.Background(), &pb.GetMetricsRequest{ScaledObjectRef: r, MetricName: "flowscaler-shop-orders"})
	if err != nil {
		return 0, err
	}
	if n := len(resp.MetricValues); n != 1 {
		t.Fatalf("GetMetrics returned %d values, want exactly 1", n)
	}
	v := resp.MetricValues[0]
	if float64(v.MetricValue) != v.MetricValueFloat {
		t.Errorf("int %d and float %v values disagree", v.MetricValue, v.MetricValueFloat)
	}
	return v.MetricValueFloat, nil
}

func TestGetMetricSpecDoesNoSourceIO(t *testing.T) {
	srv, rd, _ := newTestServer(t)
	rd.set(0, errors.New("broker down"))
	resp, err := srv.GetMetricSpec(context.Background(), ref(stream()))
	if err != nil {
		t.Fatalf("GetMetricSpec must not depend on the source: %v", err)
	}
	want := []*pb.MetricSpec{{MetricName: "flowscaler-shop-orders", TargetSize: 1, TargetSizeFloat: 1}}
	if len(resp.MetricSpecs) != 1 || resp.MetricSpecs[0].String() != want[0].String() {
		t.Errorf("spec = %v, want %v", resp.MetricSpecs, want)
	}
	if rd.calls != 0 {
		t.Errorf("GetMetricSpec read the source %d times", rd.calls)
	}
}

// Bad metadata gets its metric spec (it depends on the name alone), so
// that KEDA creates the HPA and reports the InvalidArgument of every
// GetMetrics and IsActive as an event; a ref that names no object does not.
func TestInvalidMetadataSpecServed(t *testing.T) {
	srv, _, _ := newTestServer(t)
	resp, err := srv.GetMetricSpec(context.Background(), ref(stream("targetAge", "5x")))
	if err != nil {
		t.Fatalf("GetMetricSpec: %v, want the spec", err)
	}
	want := &pb.MetricSpec{MetricName: "flowscaler-shop-orders", TargetSize: 1, TargetSizeFloat: 1}
	if len(resp.MetricSpecs) != 1 || resp.MetricSpecs[0].String() != want.String() {
		t.Errorf("spec = %v, want %v", resp.MetricSpecs, want)
	}
	for name, r := range map[string]*pb.ScaledObjectRef{
		"no ref":       nil,
		"no name":      {Namespace: "shop", ScalerMetadata: stream("targetAge", "5x")},
		"no namespace": {Name: "orders", ScalerMetadata: stream("targetAge", "5x")},
	} {
		if _, err := srv.GetMetricSpec(context.Background(), r); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: GetMetricSpec error = %v, want InvalidArgument", name, err)
		}
	}
}

func TestInvalidMetadataIsInvalidArgument(t *testing.T) {
	srv, _, _ := newTestServer(t)
	calls := map[string]func() error{
		"GetMetrics": func() error { _, err := metricValue(t, srv, ref(stream("targetAge", "5x"))); return err },
		"IsActive":   func() error { _, err := srv.IsActive(context.Background(), ref(stream("targetAge", "5x"))); return err },
	}
	for name, call := range calls {
		err := call()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: code = %v, want InvalidArgument (%v)", name, status.Code(err), err)
		}
		if !strings.Contains(status.Convert(err).Message(), `targetAge = "5x": must be a duration like 30s`) {
			t.Errorf("%s: message %q does not name key, value and rule", name, status.Convert(err).Message())
		}
	}
}

// A source failure serves the last good answer until staleAfter, then fails
// loudly; it never turns into 0 or inactive, and it recovers at once.
func TestSourceOutageServesLastGoodThenUnavailable(t *testing.T) {
	srv, rd, clk := newTestServer(t)
	r := ref(stream("processingTime", "1s", "targetAge", "10s", "concurrency", "1"))
	rd.set(40, nil)
	good, err := metricValue(t, srv, r)
	if err != nil {
		t.Fatal(err)
	}
	if good != 4 { // drain term: 40 ÷ 10s × 1s ÷ 1 per pod
		t.Fatalf("good value = %v, want 4", good)
	}
	rd.set(0, errors.New("dial tcp 127.0.0.1:6379: connection refused"))
	for _, step := range []time.Duration{time.Second, 30 * time.Second, 29 * time.Second} {
		clk.Add(step)
		got, err := metricValue(t, srv, r)
		if err != nil {
			t.Fatalf("within staleAfter: %v", err)
		}
		if got != good {
			t.Fatalf("within staleAfter: value = %v, want the last good %v", got, good)
		}
		act, err := srv.IsActive(context.Background(), r)
		if err != nil || !act.Result {
			t.Fatalf("within staleAfter: IsActive = %v, %v; want true", act, err)
		}
	}
	clk.Add(time.Second + time.Millisecond) // now just past staleAfter (60s)
	_, err = metricValue(t, srv, r)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("past staleAfter: code = %v (%v), want Unavailable", status.Code(err), err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "redis-stream local/orders#workers") || !strings.Contains(msg, "connection refused") {
		t.Errorf("Unavailable message %q must name the source and the cause", msg)
	}
	_, err = srv.IsActive(context.Background(), r)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("IsActive past staleAfter: %v, want Unavailable", err)
	}
	rd.set(80, nil)
	clk.Add(time.Second)
	got, err := metricValue(t, srv, r)
	// 80 ÷ 10s × 1s = 8 slots to drain, plus the depth growth seen as arrivals.
	if err != nil || got < 8 {
		t.Fatalf("after recovery: %v, %v; want a fresh decision of at least 8", got, err)
	}
}

// A read that timed out as the caller's own deadline ran out is the
// caller's deadline, not a failing source: no stale answer for a caller that
// is gone, and the object is not marked failing. A timeout well before the
// deadline is the source's, and is served stale.
func TestReadTimeoutAtCallersDeadline(t *testing.T) {
	// The deadline is always a minute away, so the test does not race the
	// clock; the slack says whether that counts as "at" the deadline.
	cases := []struct {
		name      string
		slack     time.Duration
		readErr   error
		wantCode  codes.Code
		wantStale bool
	}{
		{name: "shared read's timer fired just before the call's", slack: time.Hour,
			readErr: context.DeadlineExceeded, wantCode: codes.DeadlineExceeded},
		{name: "network timeout just before the call's deadline", slack: time.Hour,
			readErr: &net.OpError{Op: "read", Net: "tcp", Err: timeoutErr{}}, wantCode: codes.DeadlineExceeded},
		{name: "readTimeout, caller has time left", slack: time.Millisecond,
			readErr: context.DeadlineExceeded, wantCode: codes.OK, wantStale: true},
		{name: "refused just before the call's deadline", slack: time.Hour,
			readErr: errors.New("connection refused"), wantCode: codes.OK, wantStale: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, rd, clk := newTestServer(t)
			r := ref(stream("processingTime", "1s", "targetAge", "10s", "concurrency", "1"))
			rd.set(40, nil)
			if _, err := metricValue(t, srv, r); err != nil {
				t.Fatal(err)
			}
			rd.set(0, tc.readErr)
			clk.Add(2 * time.Second)
			defer func(s time.Duration) { deadlineSlack = s }(deadlineSlack)
			deadlineSlack = tc.slack
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			ev, err := srv.Evaluate(ctx, r)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code = %v (%v), want %v", got, err, tc.wantCode)
			}
			if ev.Stale != tc.wantStale {
				t.Errorf("stale = %v, want %v", ev.Stale, tc.wantStale)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// A source error that starts with the query (as the readers' do) names it
// once in the Unavailable message, not twice.
func TestUnavailableNamesTheQueryOnce(t *testing.T) {
	srv, rd, _ := newTestServer(t)
	const q = "redis-stream local/orders#workers"
	rd.set(0, errors.New(q+": XINFO STREAM: connection refused"))
	_, err := metricValue(t, srv, ref(stream()))
	want := q + ": read failed: XINFO STREAM: connection refused; no good reading yet"
	if got := status.Convert(err).Message(); got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
}

func TestNoGoodReadingYetIsUnavailable(t *testing.T) {
	srv, rd, _ := newTestServer(t)
	rd.set(0, errors.New("no route to host"))
	_, err := metricValue(t, srv, ref(stream()))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no good reading yet") {
		t.Fatalf("got %v, want Unavailable saying there is no good reading yet", err)
	}
}

// The policy's state is kept across calls: the scale-up limit starts from
// the target served before (×2 or +4 per 15s).
func TestCooldownAcrossCalls(t *testing.T) {
	srv, rd, clk := newTestServer(t)
	r := ref(stream("processingTime", "1s", "targetAge", "10s", "concurrency", "1", "scaleDownCooldown", "2m"))
	rd.set(10, nil)
	if v, _ := metricValue(t, srv, r); v != 1 {
		t.Fatalf("first = %v, want 1", v)
	}
	rd.set(1000, nil)
	clk.Add(time.Second)
	if v, _ := metricValue(t, srv, r); v != 5 {
		t.Fatalf("after the backlog grew = %v, want 5 (1 + 4, the scale-up limit from the kept state)", v)
	}
}

func dialBufconn(t *testing.T, srv *Server) pb.ExternalScalerClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	pb.RegisterExternalScalerServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewExternalScalerClient(conn)
}

func TestStreamIsActiveSendsAtOnceThenOnChangeAndEndsCleanly(t *testing.T) {
	srv, rd, clk := newTestServer(t)
	srv.Config().Server.StreamCheckInterval = config.Duration(10 * time.Millisecond)
	client := dialBufconn(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	active, err := client.StreamIsActive(ctx, ref(stream()))
	if err != nil {
		t.Fatal(err)
	}
	first, err := active.Recv()
	if err != nil || first.Result {
		t.Fatalf("first = %v, %v; want inactive at once", first, err)
	}
	rd.set(5, nil)
	clk.Add(time.Second)
	second, err := active.Recv()
	if err != nil || !second.Result {
		t.Fatalf("second = %v, %v; want active after the change", second, err)
	}
	srv.Drain()
	if _, err := active.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after Drain: %v, want io.EOF", err)
	}
}

func TestStreamMetricSpecSendsAtOnce(t *testing.T) {
	srv, _, _ := newTestServer(t)
	client := dialBufconn(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	specs, err := client.StreamMetricSpec(ctx, ref(stream()))
	if err != nil {
		t.Fatal(err)
	}
	got, err := specs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := srv.GetMetricSpec(ctx, ref(stream()))
	if got.String() != spec.String() {
		t.Errorf("streamed %v, GetMetricSpec %v: they must agree", got, spec)
	}
	srv.Drain()
	if _, err := specs.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after Drain: %v, want io.EOF", err)
	}
}

func TestStreamIsActiveBadMetadata(t *testing.T) {
	srv, _, _ := newTestServer(t)
	client := dialBufconn(t, srv)
	active, err := client.StreamIsActive(context.Background(), ref(stream("maxReplicas", "x")))
	if err == nil {
		_, err = active.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
}

// Reloading the config keeps each object's policy state.
func TestSetConfigKeepsState(t *testing.T) {
	srv, rd, clk := newTestServer(t)
	r := ref(stream("processingTime", "1s", "targetAge", "10s", "concurrency", "1", "scaleDownCooldown", "5m"))
	rd.set(10, nil)
	if v, _ := metricValue(t, srv, r); v != 1 {
		t.Fatalf("first = %v", v)
	}
	srv.SetConfig(testConfig(t))
	rd.set(1000, nil)
	clk.Add(time.Second)
	if v, _ := metricValue(t, srv, r); v != 5 {
		t.Fatalf("after reload = %v, want 5: the scale-up limit from the kept state", v)
	}
}
