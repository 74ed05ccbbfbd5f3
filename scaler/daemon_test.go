package scaler

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

type daemon struct {
	conn     *grpc.ClientConn
	client   pb.ExternalScalerClient
	health   healthpb.HealthClient
	httpAddr string
	path     string
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
}

// startDaemon runs the whole daemon on loopback ports against cfgYAML.
func startDaemon(t *testing.T, cfgYAML string) *daemon {
	t.Helper()
	return startDaemonWith(t, cfgYAML, func(*DaemonOptions) {})
}

// startDaemonWith is startDaemon with options of the test's own set by opt.
func startDaemonWith(t *testing.T, cfgYAML string, opt func(*DaemonOptions)) *daemon {
	t.Helper()
	path := filepath.Join(t.TempDir(), "flowscaler.yaml")
	if err := os.WriteFile(path, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	gl, _ := net.Listen("tcp", "127.0.0.1:0")
	hl, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{httpAddr: hl.Addr().String(), path: path, cancel: cancel, done: make(chan error, 1)}
	ready := make(chan struct{})
	opts := DaemonOptions{
		Config: cfg, ConfigPath: path, ReloadInterval: 20 * time.Millisecond,
		Logger:       slog.New(slog.NewJSONHandler(io.Discard, nil)),
		GRPCListener: gl, HTTPListener: hl,
		OnReady: func(net.Addr, net.Addr) { close(ready) },
	}
	opt(&opts)
	go func() { d.done <- RunDaemon(ctx, opts) }()
	select {
	case <-ready:
	case err := <-d.done:
		t.Fatalf("daemon exited: %v", err)
	}
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		d.stop(t)
	})
	d.client = pb.NewExternalScalerClient(conn)
	d.health = healthpb.NewHealthClient(conn)
	d.conn = conn
	return d
}

func (d *daemon) stop(t *testing.T) {
	d.stopOnce.Do(func() {
		d.cancel()
		select {
		case <-d.done:
		case <-time.After(15 * time.Second):
			t.Error("daemon did not stop within its shutdown deadline")
		}
	})
}

func (d *daemon) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + d.httpAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func daemonConfig(redisURL, staleAfter string) string {
	return fmt.Sprintf(`
server:
  readTimeout: 1s
  staleAfter: %s
  readCacheTTL: 100ms
connections:
  local: {type: redis, url: %q}
policy:
  defaults: {maxReplicas: 50, scaleDownCooldown: 1m}
`, staleAfter, redisURL)
}

func callKEDAWay(ctx context.Context, c pb.ExternalScalerClient, r *pb.ScaledObjectRef) (float64, bool, error) {
	spec, err := c.GetMetricSpec(ctx, r)
	if err != nil {
		return 0, false, err
	}
	m, err := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: r, MetricName: spec.MetricSpecs[0].MetricName})
	if err != nil {
		return 0, false, err
	}
	a, err := c.IsActive(ctx, r)
	if err != nil {
		return 0, false, err
	}
	return m.MetricValues[0].MetricValueFloat, a.Result, nil
}

// The whole path on a real redis-server: a stream backlog whose entries are
// hours old gives the capped-urgency drain term; an outage serves the last
// good value until staleAfter and then Unavailable; Redis coming back
// recovers on the next poll.
func TestDaemonRedisStreamOutageAndRecovery(t *testing.T) {
	rs := redistest.Start(t)
	ctx := context.Background()
	seedOldBacklog(t, rs.Client(t))
	d := startDaemon(t, daemonConfig(rs.URL(), "2s"))
	r := &pb.ScaledObjectRef{Namespace: "shop", Name: "orders", ScalerMetadata: map[string]string{
		"source": "redis-stream", "connection": "local", "stream": "orders", "group": "workers",
		"processingTime": "2s", "targetAge": "10s", "concurrency": "2",
	}}
	// 100 undelivered ÷ 10s × 2s × urgency 4 (capped) ÷ 2 per pod = 40.
	v, active, err := callKEDAWay(ctx, d.client, r)
	if err != nil || v != 40 || !active {
		t.Fatalf("backlog: value %v active %v err %v; want 40, true", v, active, err)
	}
	code, body := d.get(t, "/debug/decisions")
	if code != 200 || !strings.Contains(body, `"replicas": 40`) || !strings.Contains(body, `"source": "redis-stream local/orders#workers"`) {
		t.Errorf("/debug/decisions = %d %s", code, body)
	}

	rs.Stop()
	v, active, err = callKEDAWay(ctx, d.client, r)
	if err != nil || v != 40 || !active {
		t.Fatalf("outage within staleAfter: value %v active %v err %v; want the last good 40, true", v, active, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err = callKEDAWay(ctx, d.client, r)
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("past staleAfter: %v, want Unavailable", err)
	}
	if _, err := d.client.GetMetricSpec(ctx, r); err != nil {
		t.Errorf("GetMetricSpec must keep answering during an outage so KEDA's fallback can engage: %v", err)
	}
	_, metrics := d.get(t, "/metrics")
	if !strings.Contains(metrics, `flowscaler_stale_answers_total{namespace="shop",scaledobject="orders"}`) {
		t.Error("/metrics lacks the staleness counter")
	}
	if !strings.Contains(metrics, `flowscaler_decision_reason{namespace="shop",reason="stale",scaledobject="orders"} 1`) {
		t.Error("/metrics does not mark the decision as stale")
	}

	rs.Start() // an empty Redis, as after a restart without persistence
	seedOldBacklog(t, rs.Client(t))
	v, active, err = callKEDAWay(ctx, d.client, r)
	if err != nil || v != 40 || !active {
		t.Fatalf("after recovery: value %v active %v err %v; want 40, true on the first poll", v, active, err)
	}
}

// seedOldBacklog adds 100 undelivered entries whose IDs are two hours old to
// stream "orders", group "workers".
func seedOldBacklog(t *testing.T, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	if err := rdb.XGroupCreateMkStream(ctx, "orders", "workers", "0").Err(); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour).UnixMilli()
	for i := 0; i < 100; i++ {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "orders", ID: fmt.Sprintf("%d-%d", old, i), Values: []string{"n", "1"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDaemonHealthReadinessAndReload(t *testing.T) {
	rs := redistest.Start(t)
	d := startDaemon(t, daemonConfig(rs.URL(), "60s"))
	ctx := context.Background()
	h, err := d.health.Check(ctx, &healthpb.HealthCheckRequest{Service: "externalscaler.ExternalScaler"})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", h, err)
	}
	if code, _ := d.get(t, "/readyz"); code != 200 {
		t.Errorf("/readyz = %d", code)
	}
	if code, _ := d.get(t, "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	rs.Client(t).RPush(ctx, "jobs", "a", "b", "c")
	r := &pb.ScaledObjectRef{Namespace: "shop", Name: "jobs", ScalerMetadata: map[string]string{
		"source": "redis-list", "connection": "local", "list": "jobs",
	}}
	if _, active, err := callKEDAWay(ctx, d.client, r); err != nil || !active {
		t.Fatalf("list: active %v err %v", active, err)
	}
	_, metrics := d.get(t, "/metrics")
	for _, want := range []string{
		`flowscaler_queue_depth{namespace="shop",scaledobject="jobs"} 3`,
		`flowscaler_grpc_requests_total{code="OK",method="GetMetrics"}`,
		`flowscaler_source_read_duration_seconds_count`,
		`flowscaler_config_last_reload_successful 1`,
		`flowscaler_decision_reason{namespace="shop",reason="scale-up",scaledobject="jobs"} 1`,
		`flowscaler_decision_reason{namespace="shop",reason="steady",scaledobject="jobs"} 0`,
		`flowscaler_max_replicas{namespace="shop",scaledobject="jobs"} 50`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// A bad edit keeps the old config and says so; a good one takes effect
	// without a restart.
	withProfile := func(t *testing.T, r *pb.ScaledObjectRef) error {
		r.ScalerMetadata["policy"] = "bulk"
		_, _, err := callKEDAWay(ctx, d.client, r)
		return err
	}
	if err := withProfile(t, r); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("unknown profile before reload: %v", err)
	}
	if err := os.WriteFile(d.path, []byte("server: {readTimeout: nope}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		_, m := d.get(t, "/metrics")
		return strings.Contains(m, "flowscaler_config_last_reload_successful 0")
	})
	if _, _, err := callKEDAWay(ctx, d.client, &pb.ScaledObjectRef{Namespace: "shop", Name: "jobs", ScalerMetadata: map[string]string{
		"source": "redis-list", "connection": "local", "list": "jobs"}}); err != nil {
		t.Fatalf("after a bad reload the old config must keep serving: %v", err)
	}
	good := daemonConfig(rs.URL(), "60s") + "  profiles:\n    bulk: {concurrency: 50, prefetch: 100}\n"
	if err := os.WriteFile(d.path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return withProfile(t, r) == nil })
	_, metrics = d.get(t, "/metrics")
	if !strings.Contains(metrics, "flowscaler_config_last_reload_successful 1") {
		t.Error("a good reload must set flowscaler_config_last_reload_successful back to 1")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 250; i++ {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("condition not met within 5s")
}

func TestDaemonStopsStreamsCleanly(t *testing.T) {
	rs := redistest.Start(t)
	d := startDaemon(t, daemonConfig(rs.URL(), "60s"))
	r := &pb.ScaledObjectRef{Namespace: "shop", Name: "jobs", ScalerMetadata: map[string]string{
		"source": "redis-list", "connection": "local", "list": "jobs",
	}}
	stream, err := d.client.StreamIsActive(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	d.stop(t)
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream after shutdown: %v, want io.EOF", err)
	}
}
