package chaos

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"

	"github.com/flowscaler/flowscaler/scaler"
	"github.com/flowscaler/flowscaler/sources"
	"github.com/flowscaler/flowscaler/sources/promtest"
	"github.com/flowscaler/flowscaler/sources/redistest"
	"github.com/flowscaler/flowscaler/sources/sbtest"
)

// The sources are independent worlds; they run side by side so that the
// suite's wall time is that of the slowest.

func TestRedisChaos(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	fill := func(t *testing.T) {
		t.Helper()
		rdb := rs.Client(t)
		ctx := context.Background()
		if err := rdb.Del(ctx, "jobs").Err(); err != nil {
			t.Fatal(err)
		}
		for i := range depth {
			if err := rdb.LPush(ctx, "jobs", i).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	fill(t)
	p := startProxy(t, newToxiproxy(), "redis", rs.Addr)
	runFaults(t, &world{
		proxies:    []*toxiproxy.Proxy{p},
		connection: fmt.Sprintf("{type: redis, url: %q}", "redis://"+p.Listen),
		metadata:   metadata("source", "redis-list", "list", "jobs"),
		reader: func(t *testing.T, now func() time.Time) scaler.Reader {
			rd := sources.NewRedis(sources.RedisOptions{Now: now})
			t.Cleanup(func() { _ = rd.Close() })
			if err := rd.SetConnections(map[string]sources.RedisConnection{"src": {URL: "redis://" + p.Listen}}); err != nil {
				t.Fatal(err)
			}
			return rd
		},
		stopBroker: func(*testing.T) { rs.Stop() },
		// The server keeps no data across a restart: the list is written
		// again, as producers would.
		startBroker: func(t *testing.T) { rs.Start(); fill(t) },
	})
}

func TestPrometheusChaos(t *testing.T) {
	t.Parallel()
	prom := promtest.Start(t, promtest.Options{})
	p := startProxy(t, newToxiproxy(), "prometheus", prom.Addr)
	runFaults(t, &world{
		proxies:    []*toxiproxy.Proxy{p},
		connection: fmt.Sprintf("{type: prometheus, url: %q}", "http://"+p.Listen),
		metadata:   metadata("source", "prometheus", "depthQuery", fmt.Sprintf("vector(%d)", depth)),
		reader: func(t *testing.T, now func() time.Time) scaler.Reader {
			pq := sources.NewPrometheusQuerier(sources.PrometheusOptions{Now: now})
			t.Cleanup(func() { _ = pq.Close() })
			if err := pq.SetConnections(map[string]sources.PrometheusConnection{"src": {URL: "http://" + p.Listen}}); err != nil {
				t.Fatal(err)
			}
			return sources.NewPrometheusReader(pq, now)
		},
		stopBroker:  func(*testing.T) { prom.Stop() },
		startBroker: func(*testing.T) { prom.Start() },
	})
}

const (
	sbKeyName = "RootManageSharedAccessKey"
	sbKey     = "Zmxvd3NjYWxlci10ZXN0LWtleS1ub3QtYS1zZWNyZXQ="
)

// serviceBus is the management (ATOM over TLS) fake and the AMQP fake,
// each behind its own proxy. The connection string names the management
// proxy, whose address the fake takes as its own host (it checks that
// SAS tokens are signed for it; the test certificate is for 127.0.0.1,
// any port); amqpEndpoint sends AMQP to the other proxy.
type serviceBus struct {
	mgmt          *sbtest.Management
	amqp          *sbtest.AMQP
	state         sbtest.State
	mgmtP, amqpP  *toxiproxy.Proxy
	tlsConfig     *tls.Config
	connectionStr string
}

func (sb *serviceBus) start(t *testing.T) {
	t.Helper()
	sb.mgmt = sbtest.StartManagement(t, sbtest.ManagementOptions{Fixtures: "../../sources/testdata/servicebus", KeyName: sbKeyName, Key: sbKey})
	sb.mgmt.SetQueue("orders", sbtest.Counts{Active: depth})
	sb.amqp = sbtest.StartAMQP(t, sb.state)
	sb.tlsConfig = sb.mgmt.TLSConfig()
}

func TestServiceBusChaos(t *testing.T) {
	t.Parallel()
	// The peek finds no message: the age is unknown and the answer is the
	// count's alone, the same at every virtual instant.
	sb := &serviceBus{state: sbtest.State{KeyName: sbKeyName, Key: sbKey, Entities: map[string]sbtest.Entity{"orders": {}}}}
	sb.start(t)
	tp := newToxiproxy()
	sb.mgmtP = startProxy(t, tp, "servicebus-management", sb.mgmt.Host)
	sb.amqpP = startProxy(t, tp, "servicebus-amqp", sb.amqp.Host)
	sb.mgmt.Host = sb.mgmtP.Listen
	sb.connectionStr = sb.mgmt.ConnectionString(";UseDevelopmentEmulator=true")
	runFaults(t, &world{
		proxies:    []*toxiproxy.Proxy{sb.mgmtP, sb.amqpP},
		connection: fmt.Sprintf("{type: servicebus, connectionStringFromEnv: SB, emulator: true, amqpEndpoint: %q}", sb.amqpP.Listen),
		env:        map[string]string{"SB": sb.connectionStr},
		metadata:   metadata("source", "servicebus-queue", "queue", "orders"),
		reader: func(t *testing.T, now func() time.Time) scaler.Reader {
			r := sources.NewServiceBus(sources.ServiceBusOptions{
				HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: sb.tlsConfig.Clone()}},
				Now:        now,
			})
			t.Cleanup(func() { _ = r.Close() })
			if err := r.SetConnections(map[string]sources.ServiceBusConnection{"src": {
				Auth: sources.ServiceBusConnectionString, ConnectionString: sb.connectionStr,
				AMQPEndpoint: sb.amqpP.Listen, Emulator: true,
			}}); err != nil {
				t.Fatal(err)
			}
			return r
		},
		stopBroker: func(t *testing.T) {
			sb.mgmt.Stop()
			sb.amqp.Stop(t)
		},
		// A restarted broker listens on new ports behind the same
		// addresses, with the same entities, for as long as the test.
		startBroker: func(*testing.T) {
			sb.start(t)
			upstream := sb.mgmt.Host
			sb.mgmt.Host = sb.mgmtP.Listen
			repoint(t, sb.mgmtP, upstream)
			repoint(t, sb.amqpP, sb.amqp.Host)
		},
	})
}
