package explain

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	flowscalerv1 "github.com/flowscaler/flowscaler/proto/flowscaler/v1"
	"github.com/flowscaler/flowscaler/scaler"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/scaler/tlstest"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

// startDaemon runs flowscaler on a loopback port against a real
// redis-server, with serverYAML added to the server section, and returns
// its gRPC address.
func startDaemon(t *testing.T, rs *redistest.Server, serverYAML string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "flowscaler.yaml")
	yaml := fmt.Sprintf(`
server:
  readTimeout: 1s
  readCacheTTL: 100ms
%s
connections:
  local: {type: redis, url: %q}
policy:
  defaults: {maxReplicas: 50, scaleDownCooldown: 1m}
`, serverYAML, rs.URL())
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- scaler.RunDaemon(ctx, scaler.DaemonOptions{
			Config: cfg, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
			GRPCListener: gl, HTTPListener: hl, OnReady: func(net.Addr, net.Addr) { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon exited: %v", err)
	}
	t.Cleanup(func() { cancel(); <-done })
	return gl.Addr().String()
}

// pollLikeKEDA asks for the spec and the metric of each object, as KEDA does.
func pollLikeKEDA(t *testing.T, addr string, creds credentials.TransportCredentials, refs ...*pb.ScaledObjectRef) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewExternalScalerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, r := range refs {
		spec, err := c.GetMetricSpec(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: r, MetricName: spec.MetricSpecs[0].MetricName}); err != nil {
			t.Fatal(err)
		}
	}
}

// seedOldBacklog adds 100 undelivered entries two hours old to stream
// "orders", group "workers", and three items to list "jobs".
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
	if err := rdb.RPush(ctx, "jobs", "a", "b", "c").Err(); err != nil {
		t.Fatal(err)
	}
}

var (
	ordersRef = &pb.ScaledObjectRef{Namespace: "shop", Name: "orders", ScalerMetadata: map[string]string{
		"source": "redis-stream", "connection": "local", "stream": "orders", "group": "workers",
		"processingTime": "2s", "targetAge": "10s", "concurrency": "2",
	}}
	jobsRef = &pb.ScaledObjectRef{Namespace: "shop", Name: "jobs", ScalerMetadata: map[string]string{
		"source": "redis-list", "connection": "local", "list": "jobs", "processingTime": "500ms",
	}}
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(context.Background(), Options{Args: args, Stdout: &out, Stderr: &errb})
	return out.String(), err
}

// spaces collapses runs of blanks, so that assertions do not depend on
// the column widths.
var spaces = regexp.MustCompile(`[ \t]+`)

// The stream's backlog of 100 entries, two hours old, against a 10 s
// target: urgency 4, drain (100 ÷ 10 s) × 2 s × 4 = 80 slots, 80 ÷ 2 per
// pod = 40 replicas. The output names every input with its age and fills
// the formula in with these numbers.
func TestExplainAgainstARunningDaemon(t *testing.T) {
	rs := redistest.Start(t)
	seedOldBacklog(t, rs.Client(t))
	addr := startDaemon(t, rs, "")
	pollLikeKEDA(t, addr, insecure.NewCredentials(), ordersRef)

	out, err := run(t, "--addr", addr, "shop/orders")
	if err != nil {
		t.Fatalf("explain: %v\n%s", err, out)
	}
	got := spaces.ReplaceAllString(out, " ")
	for _, want := range []string{
		"shop/orders\n",
		"\n source redis-stream local/orders#workers\n",
		"\n metric flowscaler-shop-orders\n",
		"\nDecision: 40 replicas (previous 0), active, mode flowscaler\n",
		"\n reason: backlog 100, oldest 2h0m",
		"\n B backlog 100 messages queue, read ",
		"\n in flight 0 messages queue, read ",
		"\n λ arrival rate unknown not measurable yet (see the reason)\n",
		"\n consumption rate unknown not measured (see the reason)\n",
		"\n W processing time 2s configured\n",
		"\n failure rate not read no consumer metrics configured for it\n",
		"\n max deliveries 0 queue, read ",
		"\n T target age 10s, u target utilization 0.8, c concurrency 2, prefetch 8, replicas 0..50, scale-down cooldown 1m0s\n",
		"\n replicas = ceil((λ·W ÷ u + (B ÷ T)·W·urgency) ÷ c)\n",
		"\n steady = λ·W ÷ u = 0 slots (λ unknown)\n",
		"\n drain = (B ÷ T)·W·urgency = (100 ÷ 10s) × 2s × 4 = 80 slots\n",
		"\n raw = ceil((steady + drain) ÷ c) = ceil((0 + 80) ÷ 2) = 40\n",
		"\n floor = ceil(in flight ÷ prefetch) = ceil(0 ÷ 8) = 0\n",
		"\n recommended = clamp(max(raw, floor, active), min, max) = clamp(max(40, 0, 1), 0, 50) = 40\n",
		"\n target = 40: the recommendation\n",
		"\nHints for the consumers\n concurrency 2, prefetch 8, scale-down cooldown 1m0s (configured)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q\n--- output ---\n%s", want, out)
		}
	}
	// Values that depend on the wall clock: their form only.
	for _, re := range []string{
		`\n decided [0-9.]+m?s ago, from a queue reading [0-9.]+m?s old\n`,
		`\n oldest message 2h0m[0-9.]+s queue, read [0-9.]+m?s ago\n`,
		`\n urgency = clamp\(oldest ÷ T, 1, 4\) = clamp\(2h0m[0-9.]+s ÷ 10s, 1, 4\) = 4\n`,
	} {
		if !regexp.MustCompile(re).MatchString(got) {
			t.Errorf("output does not match %s\n--- output ---\n%s", re, out)
		}
	}
}

func TestExplainAllAndJSON(t *testing.T) {
	rs := redistest.Start(t)
	seedOldBacklog(t, rs.Client(t))
	addr := startDaemon(t, rs, "")

	out, err := run(t, "--addr", addr, "--all")
	if err != nil || out != "no decisions on this flowscaler instance yet: KEDA has not asked it about any ScaledObject\n" {
		t.Errorf("--all before any poll = %q, %v", out, err)
	}

	pollLikeKEDA(t, addr, insecure.NewCredentials(), ordersRef, jobsRef)
	out, err = run(t, "--all", "--addr", addr)
	if err != nil {
		t.Fatal(err)
	}
	var heads []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "shop/") {
			heads = append(heads, line)
		}
	}
	if strings.Join(heads, ",") != "shop/jobs,shop/orders" {
		t.Errorf("--all objects = %q, want shop/jobs then shop/orders\n%s", heads, out)
	}
	got := spaces.ReplaceAllString(out, " ")
	for _, want := range []string{
		"\n oldest message unknown the source cannot tell\n",
		"\n urgency = clamp(oldest ÷ T, 1, 4) = 1 (oldest age unknown)\n",
		"\n drain = (B ÷ T)·W·urgency = (3 ÷ 30s) × 500ms × 1 = 0.05 slots\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("--all output lacks %q\n%s", want, out)
		}
	}

	// Flags after the object work too.
	out, err = run(t, "shop/orders", "--json", "--addr", addr)
	if err != nil {
		t.Fatal(err)
	}
	var resp flowscalerv1.ExplainResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("--json output does not parse as ExplainResponse: %v\n%s", err, out)
	}
	if n := len(resp.GetDecisions()); n != 1 {
		t.Fatalf("--json: %d decisions, want 1", n)
	}
	d := resp.GetDecisions()[0]
	if d.GetDecision().GetReplicas() != 40 || d.GetTerms().GetDrainSlots() != 80 || d.GetInputs().GetDepthMessages() != 100 {
		t.Errorf("--json decision = %v", d)
	}
	for _, key := range []string{`"readingAgeSeconds"`, `"decisionAgeSeconds"`, `"reason"`, `"hints"`} {
		if !strings.Contains(out, key) {
			t.Errorf("--json lacks %s", key)
		}
	}
}

func TestExplainErrors(t *testing.T) {
	rs := redistest.Start(t)
	addr := startDaemon(t, rs, "")
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown object", []string{"--addr", addr, "shop/nope"},
			"shop/nope: no decision on this flowscaler instance: KEDA has not asked it about this ScaledObject since it started (each flowscaler replica knows only the objects KEDA asked it about)"},
		{"no object", []string{"--addr", addr}, "which ScaledObject? give NAMESPACE/NAME or --all\nusage: " + Usage},
		{"object and --all", []string{"--all", "shop/orders"}, "shop/orders and --all: give one\nusage: " + Usage},
		{"two objects", []string{"shop/a", "shop/b"}, `"shop/a shop/b": one ScaledObject at a time (or --all)` + "\nusage: " + Usage},
		{"no namespace", []string{"orders"}, `object = "orders": must be NAMESPACE/NAME, e.g. shop/order-processor`},
		{"cert without key", []string{"--tls-cert", "c.pem", "shop/orders"}, `--tls-cert = "c.pem", --tls-key = "": give both or neither`},
		{"missing CA file", []string{"--tls-ca", "/nonexistent/ca.pem", "shop/orders"}, `--tls-ca = "/nonexistent/ca.pem": open /nonexistent/ca.pem: no such file or directory`},
		{"nobody listening", []string{"--addr", deadAddr, "--timeout", "2s", "shop/orders"}, "flowscaler at " + deadAddr + " did not answer: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := run(t, tt.args...)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.HasPrefix(err.Error(), tt.want) || (!strings.HasSuffix(tt.want, ": ") && err.Error() != tt.want) {
				t.Errorf("error = %q\nwant   %q", err, tt.want)
			}
		})
	}
}

// Over mutual TLS, with the flags a pod's mounted certificates give.
func TestExplainOverMutualTLS(t *testing.T) {
	rs := redistest.Start(t)
	seedOldBacklog(t, rs.Client(t))
	ca := tlstest.NewCA(t, "test-ca")
	serverCert, serverKey := ca.Issue(t, "server", true)
	clientCert, clientKey := ca.Issue(t, "client", false)
	addr := startDaemon(t, rs, fmt.Sprintf("  tls: {certFile: %q, keyFile: %q, clientCAFile: %q}", serverCert, serverKey, ca.File()))
	creds, err := transportCredentials(addr, ca.File(), clientCert, clientKey, "")
	if err != nil {
		t.Fatal(err)
	}
	pollLikeKEDA(t, addr, creds, ordersRef)

	out, err := run(t, "--addr", addr, "--tls-ca", ca.File(), "--tls-cert", clientCert, "--tls-key", clientKey, "shop/orders")
	if err != nil || !strings.Contains(out, "Decision: 40 replicas") {
		t.Fatalf("over mTLS: %v\n%s", err, out)
	}
	if _, err := run(t, "--addr", addr, "--tls-ca", ca.File(), "--timeout", "2s", "shop/orders"); err == nil {
		t.Error("without a client certificate the daemon must refuse")
	}
	if _, err := run(t, "--addr", addr, "--timeout", "2s", "shop/orders"); err == nil || !strings.Contains(err.Error(), "needing --tls-ca?") {
		t.Errorf("plaintext against TLS: %v, want a hint at --tls-ca", err)
	}
}
