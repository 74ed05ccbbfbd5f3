package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/google/go-cmp/cmp"
	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/flowscaler/flowscaler/scaler"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

const (
	// faultReadTimeout is the readTimeout while a fault lasts. It is below
	// the latency toxic's least delay (1 s − 500 ms of jitter), so a read
	// through it always times out: each poll's outcome is decided by the
	// fault, not by the machine's speed.
	faultReadTimeout = 450 * time.Millisecond
	// readTimeout is the default, in force before a fault and after it: a
	// first read reconnects (TCP, TLS, AMQP and its token exchange), which
	// takes most of faultReadTimeout on a loaded machine under the race
	// detector.
	readTimeout = 2 * time.Second
	staleAfter  = time.Minute
	// pollEvery is KEDA's default pollingInterval, in virtual time.
	pollEvery = 30 * time.Second
	// callDeadline is the gRPC deadline KEDA gives each call.
	callDeadline = 3 * time.Second
	// shortDeadline is a caller that gives up before faultReadTimeout.
	shortDeadline = 150 * time.Millisecond
	// handlerMargin bounds how long after its deadline a handler may
	// return: generous, since what is checked is that it returns at all.
	handlerMargin = 5 * time.Second
	// depth and the metadata below give 40 ÷ 10 s × 1 s ÷ 1 per pod = 4
	// replicas, the answer every served call must carry.
	depth        = 40
	goodReplicas = 4
)

// metadata is the trigger metadata shared by every source; the world adds
// source, connection and the queue's name.
func metadata(kv ...string) map[string]string {
	md := map[string]string{
		"connection": "src", "processingTime": "1s", "targetAge": "10s",
		"concurrency": "1", "targetUtilization": "1",
	}
	for i := 0; i+1 < len(kv); i += 2 {
		md[kv[i]] = kv[i+1]
	}
	return md
}

// world is one real source behind Toxiproxy proxies, and how to build
// flowscaler's readers for it.
type world struct {
	proxies []*toxiproxy.Proxy
	// connection is the YAML of connection "src", which reaches the source
	// through the proxies.
	connection string
	env        map[string]string
	metadata   map[string]string
	// reader builds fresh clients, so that no case inherits connections
	// from the one before; now stamps the readings.
	reader func(t *testing.T, now func() time.Time) scaler.Reader
	// stopBroker and startBroker stop the source's own process and bring
	// it back with the same data, behind the same proxies.
	stopBroker, startBroker func(t *testing.T)
}

// newToxiproxy is an in-process Toxiproxy with no HTTP API: the tests
// drive its proxies directly.
func newToxiproxy() *toxiproxy.ApiServer {
	return toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
}

// startProxy forwards a loopback port to upstream until the test ends.
func startProxy(t *testing.T, tp *toxiproxy.ApiServer, name, upstream string) *toxiproxy.Proxy {
	t.Helper()
	p := toxiproxy.NewProxy(tp, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("toxiproxy %s: %v", name, err)
	}
	t.Cleanup(p.Stop)
	return p
}

// repoint sends a proxy to a new upstream, as a restarted broker on a new
// port would be reached through the same address.
func repoint(t *testing.T, p *toxiproxy.Proxy, upstream string) {
	t.Helper()
	if err := p.Update(&toxiproxy.Proxy{Listen: p.Listen, Upstream: upstream, Enabled: true}); err != nil {
		t.Fatalf("toxiproxy %s: repoint to %s: %v", p.Name, upstream, err)
	}
}

// toxic is a Toxiproxy toxic as its API takes it, on the responses
// (downstream) of every connection.
type toxic struct {
	Type       string         `json:"type"`
	Attributes map[string]any `json:"attributes"`
}

func addToxic(t *testing.T, ps []*toxiproxy.Proxy, tx toxic) {
	t.Helper()
	b, err := json.Marshal(tx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(string(b))); err != nil {
			t.Fatalf("toxiproxy %s: add %s: %v", p.Name, b, err)
		}
	}
}

func resetToxics(ps []*toxiproxy.Proxy) {
	for _, p := range ps {
		p.Toxics.ResetToxics(context.Background())
	}
}

// fault is one way a source misbehaves for the two minutes of a case.
type fault struct {
	name         string
	inject, heal func(t *testing.T, w *world)
}

// probeOutcomes are what a caller that gives up before faultReadTimeout
// may get during a fault: DeadlineExceeded when the source is slow or
// silent; the last good answer when it fails at once, or when the read's
// timer (the shared read runs on its own timer with the caller's
// deadline) fires a moment before the call's own.
var probeOutcomes = []outcome{stale, deadline}

var faults = []fault{
	{
		name: "latency-1s-jitter-500ms",
		inject: func(t *testing.T, w *world) {
			addToxic(t, w.proxies, toxic{Type: "latency", Attributes: map[string]any{"latency": 1000, "jitter": 500}})
		},
		heal: func(_ *testing.T, w *world) { resetToxics(w.proxies) },
	},
	{
		name: "timeout-never-answers",
		inject: func(t *testing.T, w *world) {
			addToxic(t, w.proxies, toxic{Type: "timeout", Attributes: map[string]any{"timeout": 0}})
		},
		heal: func(_ *testing.T, w *world) { resetToxics(w.proxies) },
	},
	{
		name: "reset-peer",
		inject: func(t *testing.T, w *world) {
			addToxic(t, w.proxies, toxic{Type: "reset_peer", Attributes: map[string]any{"timeout": 0}})
		},
		heal: func(_ *testing.T, w *world) { resetToxics(w.proxies) },
	},
	{
		name: "outage-proxy-disabled",
		inject: func(_ *testing.T, w *world) {
			for _, p := range w.proxies {
				p.Stop()
			}
		},
		heal: func(t *testing.T, w *world) {
			for _, p := range w.proxies {
				if err := p.Start(); err != nil {
					t.Fatalf("toxiproxy %s: start again: %v", p.Name, err)
				}
			}
		},
	},
	{
		name:   "broker-down",
		inject: func(t *testing.T, w *world) { w.stopBroker(t) },
		heal:   func(t *testing.T, w *world) { w.startBroker(t) },
	},
}

// outcome is what one gRPC call got.
type outcome string

const (
	fresh       outcome = "fresh"
	stale       outcome = "stale"
	unavailable outcome = "Unavailable"
	deadline    outcome = "DeadlineExceeded"
)

// poll is what KEDA's two calls of one polling interval got.
type poll struct {
	At                   time.Duration // virtual time since the fault began
	GetMetrics, IsActive outcome
}

// faultSchedule is every case's expectation: KEDA polls every 30 s for two
// minutes of fault; the last good answer (read when the fault began) is
// served while it is at most staleAfter = 60 s old, 60 s included, then
// the calls fail with Unavailable; the first poll after the source heals
// decides from a fresh reading.
var faultSchedule = []poll{
	{1 * pollEvery, stale, stale},
	{2 * pollEvery, stale, stale},
	{3 * pollEvery, unavailable, unavailable},
	{4 * pollEvery, unavailable, unavailable},
}

var recovered = poll{5 * pollEvery, fresh, fresh}

// runFaults runs every fault against w, one after the other, each with
// its own flowscaler and clients.
func runFaults(t *testing.T, w *world) {
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			fs := startFlowscaler(t, w)
			// A source that has just been healed, or connections that are
			// still being made, may need a few polls; the schedule starts
			// from a fresh answer.
			fs.waitFresh(t)
			began := fs.clock.Now()

			// The fault runs under faultReadTimeout: a config reload, across
			// which the object keeps its last good answer.
			fs.srv.SetConfig(fs.faultCfg)
			f.inject(t, w)
			healed := false
			t.Cleanup(func() {
				if !healed {
					f.heal(t, w)
				}
			})
			var got []poll
			for i, want := range faultSchedule {
				fs.clock.Set(began.Add(want.At))
				got = append(got, fs.answered(t, want.At))
				if i == 0 {
					// A caller that gives up first still gets its answer
					// within its deadline.
					p := fs.poll(t, want.At, shortDeadline)
					for _, o := range []outcome{p.GetMetrics, p.IsActive} {
						if !slices.Contains(probeOutcomes, o) {
							t.Errorf("a call with a %s deadline got %s, want one of %v", shortDeadline, o, probeOutcomes)
						}
					}
				}
			}
			f.heal(t, w)
			healed = true
			fs.srv.SetConfig(fs.cfg)
			fs.clock.Set(began.Add(recovered.At))
			got = append(got, fs.answered(t, recovered.At))

			want := append(append([]poll(nil), faultSchedule...), recovered)
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("outcomes (-want +got):\n%s", d)
			}
		})
	}
}

// clock is the virtual clock of flowscaler and its readers.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// flowscaler is a Server wired as the daemon wires it (readers coalesced
// for readCacheTTL) on the virtual clock, served over gRPC on loopback to
// KEDA's externalscaler client.
type flowscaler struct {
	srv *scaler.Server
	// cfg has the default readTimeout, faultCfg faultReadTimeout.
	cfg, faultCfg *config.Config
	client        pb.ExternalScalerClient
	clock         *clock
	ref           *pb.ScaledObjectRef
	// inflight counts running handlers; late lists those that returned
	// more than handlerMargin after their call's deadline.
	inflight atomic.Int64
	mu       sync.Mutex
	late     []string
	// hadGood is set once a call was answered from a fresh reading.
	hadGood bool
}

func startFlowscaler(t *testing.T, w *world) *flowscaler {
	t.Helper()
	clk := &clock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)}
	cfg, faultCfg := w.config(t, readTimeout), w.config(t, faultReadTimeout)
	reader := sources.Coalesce(w.reader(t, clk.Now), scaler.ReadCache(cfg), clk.Now)
	srv, err := scaler.New(scaler.Options{Reader: reader, Config: cfg, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	fs := &flowscaler{
		srv:      srv,
		cfg:      cfg,
		faultCfg: faultCfg,
		clock:    clk,
		ref:      &pb.ScaledObjectRef{Namespace: "shop", Name: "orders", ScalerMetadata: w.metadata},
	}
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(fs.record))
	pb.RegisterExternalScalerServer(gs, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	fs.client = pb.NewExternalScalerClient(conn)
	return fs
}

// config is flowscaler's config for w with the given readTimeout.
func (w *world) config(t *testing.T, rt time.Duration) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
server:
  readTimeout: %s
  staleAfter: %s
  readCacheTTL: 1s
connections:
  src: %s
`, rt, staleAfter, w.connection)), func(k string) (string, bool) {
		v, ok := w.env[k]
		return v, ok
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// record tracks the server side of every call: the client gives up at its
// deadline by itself, so only the handler tells whether flowscaler answered
// within it.
func (fs *flowscaler) record(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	fs.inflight.Add(1)
	defer fs.inflight.Add(-1)
	resp, err := handler(ctx, req)
	if dl, ok := ctx.Deadline(); ok && time.Since(dl) > handlerMargin {
		fs.mu.Lock()
		fs.late = append(fs.late, fmt.Sprintf("%s returned %s after its deadline", info.FullMethod, time.Since(dl).Round(time.Millisecond)))
		fs.mu.Unlock()
	}
	return resp, err
}

// awaitHandlers waits until no handler runs, for at most d + handlerMargin
// (a call whose deadline passed before it reached the server runs none),
// and reports handlers that outlived their deadline.
func (fs *flowscaler) awaitHandlers(t *testing.T, d time.Duration) {
	t.Helper()
	limit := time.Now().Add(d + handlerMargin)
	for fs.inflight.Load() > 0 {
		if time.Now().After(limit) {
			t.Fatalf("%d handlers still running %s after their call's deadline", fs.inflight.Load(), handlerMargin)
		}
		time.Sleep(5 * time.Millisecond)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, l := range fs.late {
		t.Error(l)
	}
	fs.late = nil
}

// answered polls at the current virtual instant until neither call ran
// out of its deadline: with faultReadTimeout far inside callDeadline only a
// starved machine makes one, and a hung handler fails awaitHandlers.
func (fs *flowscaler) answered(t *testing.T, at time.Duration) poll {
	t.Helper()
	var p poll
	for range 3 {
		if p = fs.poll(t, at, callDeadline); p.GetMetrics != deadline && p.IsActive != deadline {
			return p
		}
	}
	return p
}

// waitFresh polls, a second of virtual time apart, until an answer is
// fresh; the connections of a new flowscaler may take a few polls.
func (fs *flowscaler) waitFresh(t *testing.T) {
	t.Helper()
	var last poll
	for range 20 {
		fs.clock.Add(time.Second)
		if last = fs.poll(t, 0, callDeadline); last.GetMetrics == fresh && last.IsActive == fresh {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no fresh answer before the fault: last poll %+v", last)
}

// poll makes KEDA's two calls with the given deadline, checks every rule
// that holds whatever the source does, and classifies what each got.
func (fs *flowscaler) poll(t *testing.T, at, d time.Duration) poll {
	t.Helper()
	p := poll{At: at}
	{
		ctx, cancel := context.WithTimeout(context.Background(), d)
		resp, err := fs.client.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: fs.ref, MetricName: "flowscaler-shop-orders"})
		cancel()
		fs.awaitHandlers(t, d)
		if err == nil {
			if n := len(resp.GetMetricValues()); n != 1 {
				t.Fatalf("GetMetrics returned %d values, want 1", n)
			}
			if v := resp.GetMetricValues()[0].GetMetricValueFloat(); v != goodReplicas {
				t.Errorf("at +%s GetMetrics served %v, want %d: a fault must never change the answer", at, v, goodReplicas)
			}
		}
		p.GetMetrics = fs.classify(t, "GetMetrics", err)
	}
	{
		ctx, cancel := context.WithTimeout(context.Background(), d)
		resp, err := fs.client.IsActive(ctx, fs.ref)
		cancel()
		fs.awaitHandlers(t, d)
		if err == nil && !resp.GetResult() {
			t.Errorf("at +%s IsActive served inactive: a fault must never make a queue of %d inactive", at, depth)
		}
		p.IsActive = fs.classify(t, "IsActive", err)
	}
	return p
}

// classify names a call's outcome, checking a served answer against the
// server's record of it: fresh means read at this virtual instant, stale
// means marked stale and at most staleAfter old.
func (fs *flowscaler) classify(t *testing.T, method string, err error) outcome {
	t.Helper()
	now := fs.clock.Now()
	if err != nil {
		st := status.Convert(err)
		t.Logf("%s: %s: %s", method, st.Code(), st.Message())
		switch st.Code() {
		case codes.Unavailable:
			want := "no good reading yet"
			if fs.hadGood {
				want = "beyond staleAfter 1m0s"
			}
			if !strings.Contains(st.Message(), want) {
				t.Errorf("%s: Unavailable %q does not say %q", method, st.Message(), want)
			}
			return unavailable
		case codes.DeadlineExceeded:
			return deadline
		default:
			t.Errorf("%s: %v, want an answer, Unavailable or DeadlineExceeded", method, err)
			return outcome(st.Code().String())
		}
	}
	evs := fs.srv.Evaluations()
	if len(evs) != 1 {
		t.Fatalf("%s: %d evaluations recorded, want 1", method, len(evs))
	}
	ev := evs[0]
	age := now.Sub(ev.Reading.At)
	if ev.Stale {
		t.Logf("%s: stale, %s old: %s", method, age, ev.StaleErr)
	}
	switch {
	case ev.Stale && age <= staleAfter:
		return stale
	case ev.Stale:
		t.Errorf("%s: served a stale answer %s old, beyond staleAfter %s", method, age, staleAfter)
		return stale
	case age == 0:
		fs.hadGood = true
		return fresh
	default:
		t.Errorf("%s: served a reading %s old that is not marked stale", method, age)
		return fresh
	}
}
