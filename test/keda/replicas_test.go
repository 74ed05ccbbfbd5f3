package keda

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/resolver"

	"github.com/kedacore/keda/v2/pkg/scalers"

	"github.com/flowscaler/flowscaler/sources/redistest"
)

// podsScheme names the resolver that stands in for the DNS of a headless
// Service: "pods:///flowscaler" resolves to every replica the test has
// started, and KEDA's client balances its calls over them with its own
// round_robin service config, as it does over a headless Service's pod IPs.
const podsScheme = "pods"

// pods is the resolver behind podsScheme, registered by TestMain.
var pods = &podsResolver{}

type podsResolver struct {
	mu    sync.Mutex
	addrs []string
	conns map[*podsConn]bool
}

type podsConn struct {
	r  *podsResolver
	cc resolver.ClientConn
}

var (
	_ resolver.Builder  = (*podsResolver)(nil)
	_ resolver.Resolver = (*podsConn)(nil)
)

func (p *podsResolver) Scheme() string { return podsScheme }

func (p *podsResolver) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := &podsConn{r: p, cc: cc}
	if p.conns == nil {
		p.conns = map[*podsConn]bool{}
	}
	p.conns[c] = true
	return c, cc.UpdateState(p.state())
}

func (p *podsResolver) state() resolver.State {
	var s resolver.State
	for _, a := range p.addrs {
		s.Addresses = append(s.Addresses, resolver.Address{Addr: a})
	}
	return s
}

// set is a change of the Service's endpoints: every client sees it at once.
func (p *podsResolver) set(addrs ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.addrs = addrs
	for c := range p.conns {
		_ = c.cc.UpdateState(p.state())
	}
}

func (c *podsConn) ResolveNow(resolver.ResolveNowOptions) {}

func (c *podsConn) Close() {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	delete(c.r.conns, c)
}

// Two flowscaler replicas behind one address, KEDA's client spreading its
// calls over them: a ScaledObject is first evaluated with only replica A
// behind the address (target 1), then B joins and the backlog jumps. With
// state: redis both replicas apply the scale-up limit from the 1 that A
// served (1 + 4 = 5); with state: memory, B has never served anything and
// answers the unlimited 40, so the target KEDA sees depends on which
// replica it happened to ask.
func TestTwoReplicasBehindOneAddress(t *testing.T) {
	tests := []struct {
		name   string
		state  string
		shared bool
		wantB  float64 // B's decision after the jump
	}{
		{name: "redis", state: "state: {backend: redis, connection: local}\n", shared: true, wantB: 5},
		{name: "memory", state: "state: {backend: memory}\n", wantB: 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := redistest.Start(t)
			rdb := rs.Client(t)
			cfg := configYAML(daemonOptions{RedisURL: rs.URL()}) + tt.state
			a := startDaemon(t, daemonOptions{Config: cfg})
			b := startDaemon(t, daemonOptions{Config: cfg})
			pods.set(a.GRPCAddr)
			t.Cleanup(func() { pods.set() })

			createGroup(t, rdb, "orders", "workers", "0")
			addOldEntries(t, rdb, "orders", 1, 2*time.Hour)
			// scaleUpPeriod 2m: the limit's base stays A's first answer
			// for the whole test, however slowly the machine runs.
			md := streamMetadata("orders", "workers", map[string]string{
				"processingTime": "2s", "targetAge": "10s", "concurrency": "2", "scaleUpPeriod": "2m",
				"scalerAddress": podsScheme + ":///flowscaler",
			})
			s, err := scalers.NewExternalScaler(scalerConfig(scaledObject("orders", "external", md), 0))
			if err != nil {
				t.Fatalf("scalers.NewExternalScaler: %v", err)
			}
			t.Cleanup(func() { _ = s.Close(context.Background()) })
			metric := metricName(t, s)
			if got := mustEvaluate(t, s, metric); got.Value != 1 {
				t.Fatalf("A alone, one old entry: %v, want 1", got.Value)
			}

			pods.set(a.GRPCAddr, b.GRPCAddr)
			waitServed(t, s, b)
			// 100 undelivered ÷ 10s × 2s × urgency 4 ÷ 2 per pod = 40
			// without a limit.
			addOldEntries(t, rdb, "orders", 99, 2*time.Hour)
			// Readings taken before the jump answer for readCacheTTL and
			// readCacheGrace; past both, every replica reads the 100 entries.
			time.Sleep(readCacheTTL + readCacheGrace + 500*time.Millisecond)
			var values []float64
			for range 4 { // 8 calls, round-robin: 4 on each replica
				values = append(values, mustEvaluate(t, s, metric).Value)
			}
			if tt.shared {
				for i, v := range values {
					if v != 5 {
						t.Errorf("KEDA's value %d = %v (all %v), want 5: the limit from A's 1, whichever replica answered", i, v, values)
					}
				}
			}
			for name, d := range map[string]*daemon{"A": a, "B": b} {
				want := 5.0
				if name == "B" {
					want = tt.wantB
				}
				if got := decisionOf(t, d, "orders")["replicas"]; got != want {
					t.Errorf("replica %s decided %v, want %v", name, got, want)
				}
			}
		})
	}
}

// waitServed asks for the metric spec, which touches no state, until
// replica d has answered one: KEDA's client then has both replicas in its
// round-robin.
func waitServed(t *testing.T, s scalers.Scaler, d *daemon) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		s.GetMetricSpecForScaling(context.Background())
		if strings.Contains(d.get("/metrics"), `flowscaler_grpc_requests_total{code="OK",method="GetMetricSpec"}`) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("replica %s never answered through the shared address", d.GRPCAddr)
}
