package secrets

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	flowscalerv1 "github.com/flowscaler/flowscaler/proto/flowscaler/v1"
	"github.com/flowscaler/flowscaler/scaler"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/scaler/tlstest"
	"github.com/flowscaler/flowscaler/sources/proctest"
	"github.com/flowscaler/flowscaler/sources/redistest"
	"github.com/flowscaler/flowscaler/sources/sbtest"
)

// The planted secrets. Each is distinctive, so that finding one anywhere
// can only be a leak.
const (
	redisPassword    = "planted-redis-password-Xq7v"
	wrongRedisPass   = "planted-wrong-redis-password-Kd3m"
	urlRedisPassword = "planted-url-redis-password-Zr8p"
	downRedisPass    = "planted-down-redis-password-Lw2c"
	promToken        = "planted-prometheus-token-Hj5t"
	promFileToken    = "planted-prometheus-file-token-Vb9n"
	promUser         = "flowscaler"
	promPassword     = "planted-prometheus-password-Ye4s"
	wrongPromToken   = "planted-wrong-prometheus-token-Qa6u"
	wrongPromPass    = "planted-wrong-prometheus-password-Mf1g"
	sbKeyName        = "RootManageSharedAccessKey"
	sbKey            = "cGxhbnRlZC1zZXJ2aWNlYnVzLWtleS1UbjNr"
	wrongSBKey       = "cGxhbnRlZC13cm9uZy1zZXJ2aWNlYnVzLWtleS1QZzdq"
)

// forms are the ways a secret could show up: as is, escaped for a URL or a
// query, and base64-encoded (an Authorization header).
func forms(secret string) []string {
	return []string{
		secret,
		url.QueryEscape(secret),
		url.PathEscape(secret),
		base64.StdEncoding.EncodeToString([]byte(secret)),
		base64.StdEncoding.EncodeToString([]byte(promUser + ":" + secret)),
	}
}

// captured is everything flowscaler said to anyone, by where it said it.
type captured struct {
	mu    sync.Mutex
	items []item
}

type item struct{ where, text string }

func (c *captured) add(where, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.items = append(c.items, item{where, text})
}

// all joins every capture whose where starts with prefix.
func (c *captured) all(prefix string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, it := range c.items {
		if strings.HasPrefix(it.where, prefix) {
			b.WriteString(it.text)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// fakePrometheus answers every instant query with 7 when the request
// carries one of the accepted credentials, and otherwise answers 401 with a
// body that echoes the Authorization header: a hostile (or merely careless)
// server must not make flowscaler repeat a secret.
func fakePrometheus(t *testing.T) *httptest.Server {
	t.Helper()
	accepted := map[string]bool{
		"Bearer " + promToken:     true,
		"Bearer " + promFileToken: true,
		"Basic " + base64.StdEncoding.EncodeToString([]byte(promUser+":"+promPassword)): true,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		if !accepted[h] {
			http.Error(w, "401 Unauthorized: rejected Authorization: "+h, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[%d,"7"]}]}}`, time.Now().Unix())
	}))
	t.Cleanup(srv.Close)
	return srv
}

// object is one ScaledObject of the test and the error it must get, if any.
type object struct {
	name string
	md   map[string]string
	// wantErr is a part of the error GetMetrics must return; "" when it
	// must answer.
	wantErr string
}

// Every place a secret can enter flowscaler — Redis passwords from the
// environment, a file and the URL (that connection also holds the shared
// state, and refuses it); Prometheus bearer tokens from the environment and
// a file and a basic-auth password; Service Bus connection strings from the
// environment and a file; the gRPC server's TLS key — gets a planted
// secret. The daemon is driven through good calls and failing
// ones (wrong passwords, a Redis that is down, a Prometheus that echoes the
// credentials it refuses, a refused Service Bus key, bad metadata), a
// reload that fails, every HTTP endpoint, the explain API and a Hints
// stream, with traces recorded. No planted secret may appear in any log
// line, gRPC answer or error, HTTP body or span, and the captures must hold
// the failures' own errors, so that the test cannot pass by capturing
// nothing.
func TestPlantedSecretsNeverLeak(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	rs := redistest.StartWithPassword(t, redisPassword)
	rdb := rs.Client(t)
	if err := rdb.XGroupCreateMkStream(ctx, "orders", "workers", "0").Err(); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "orders", Values: []string{"n", "1"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	downPort, err := proctest.FreePort()
	if err != nil {
		t.Fatal(err)
	}

	prom := fakePrometheus(t)

	mgmt := sbtest.StartManagement(t, sbtest.ManagementOptions{Fixtures: "../../sources/testdata/servicebus", KeyName: sbKeyName, Key: sbKey})
	mgmt.SetQueue("orders", sbtest.Counts{Active: 12})
	amqp := sbtest.StartAMQP(t, sbtest.State{KeyName: sbKeyName, Key: sbKey, Entities: map[string]sbtest.Entity{
		"orders": {Messages: []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: time.Now().Add(-time.Minute)}}},
	}})
	sbConn := mgmt.ConnectionString(";UseDevelopmentEmulator=true")
	wrongSBConn := strings.Replace(sbConn, sbKey, wrongSBKey, 1)
	// The management fake's certificate is trusted the way a deployment
	// trusts a private CA.
	t.Setenv("SSL_CERT_FILE", mgmt.CAFile)

	ca := tlstest.NewCA(t, "flowscaler-secrets-test")
	certFile, keyFile := ca.Issue(t, "server", true)
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}

	t.Setenv("FS_REDIS_PASSWORD", redisPassword)
	t.Setenv("FS_WRONG_REDIS_PASSWORD", wrongRedisPass)
	t.Setenv("FS_PROM_TOKEN", promToken)
	t.Setenv("FS_PROM_PASSWORD", promPassword)
	t.Setenv("FS_WRONG_PROM_TOKEN", wrongPromToken)
	t.Setenv("FS_WRONG_PROM_PASSWORD", wrongPromPass)
	t.Setenv("FS_SB", sbConn)
	t.Setenv("FS_WRONG_SB", wrongSBConn)
	redisPasswordFile := write("redis-password", redisPassword+"\n")
	promTokenFile := write("prom-token", promFileToken+"\n")
	sbFile := write("servicebus", sbConn+"\n")

	connections := fmt.Sprintf(`
  good: {type: redis, url: "redis://%[1]s", passwordFromEnv: FS_REDIS_PASSWORD}
  filed: {type: redis, url: "redis://%[1]s", passwordFile: %[2]q}
  wrong: {type: redis, url: "redis://%[1]s", passwordFromEnv: FS_WRONG_REDIS_PASSWORD}
  promtoken: {type: prometheus, url: %[3]q, bearerTokenFromEnv: FS_PROM_TOKEN}
  promfile: {type: prometheus, url: %[3]q, bearerTokenFile: %[4]q}
  prombasic: {type: prometheus, url: %[3]q, username: %[5]s, passwordFromEnv: FS_PROM_PASSWORD}
  promwrong: {type: prometheus, url: %[3]q, bearerTokenFromEnv: FS_WRONG_PROM_TOKEN}
  promwrongbasic: {type: prometheus, url: %[3]q, username: %[5]s, passwordFromEnv: FS_WRONG_PROM_PASSWORD}
  bus: {type: servicebus, connectionStringFromEnv: FS_SB, emulator: true, amqpEndpoint: %[6]s}
  busfile: {type: servicebus, connectionStringFile: %[7]q, emulator: true, amqpEndpoint: %[6]s}
  buswrong: {type: servicebus, connectionStringFromEnv: FS_WRONG_SB, emulator: true, amqpEndpoint: %[6]s}
`, rs.Addr, redisPasswordFile, prom.URL, promTokenFile, promUser, amqp.Host, sbFile)
	cfgText := fmt.Sprintf(`server:
  readTimeout: 2s
  staleAfter: 60s
  readCacheTTL: 100ms
  tls: {certFile: %q, keyFile: %q}
connections:%s  inurl: {type: redis, url: "redis://:%s@%s"}
  down: {type: redis, url: "redis://:%s@127.0.0.1:%d"}
state: {backend: redis, connection: inurl}
`, certFile, keyFile, connections, urlRedisPassword, rs.Addr, downRedisPass, downPort)
	cfgPath := write("flowscaler.yaml", cfgText)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}

	var logs proctest.Output
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// go-redis's own messages go to the JSON log, as the binary routes them.
	redis.SetLogger(redisLog{log})
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- scaler.RunDaemon(dctx, scaler.DaemonOptions{
			Config: cfg, ConfigPath: cfgPath, ReloadInterval: 20 * time.Millisecond,
			Logger:       log,
			GRPCListener: gl, HTTPListener: hl, TracerProvider: tp,
			OnReady: func(net.Addr, net.Addr) { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon exited: %v", err)
	}
	var stopOnce sync.Once
	stopDaemon := func() {
		stopOnce.Do(func() {
			stop()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("daemon: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("daemon did not stop")
			}
		})
	}
	t.Cleanup(stopDaemon)

	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(ca.File())
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("CA: %v", err)
	}
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	keda := pb.NewExternalScalerClient(conn)
	decisions := flowscalerv1.NewDecisionServiceClient(conn)

	stream := func(extra ...string) map[string]string {
		md := map[string]string{"source": "redis-stream", "stream": "orders", "group": "workers"}
		for i := 0; i+1 < len(extra); i += 2 {
			md[extra[i]] = extra[i+1]
		}
		return md
	}
	depth := func(connection string) map[string]string {
		return map[string]string{"source": "prometheus", "connection": connection, "depthQuery": "sum(queue_depth)"}
	}
	queue := func(connection string) map[string]string {
		return map[string]string{"source": "servicebus-queue", "connection": connection, "queue": "orders"}
	}
	objects := []object{
		{name: "redis-env", md: stream("connection", "good")},
		{name: "redis-file", md: stream("connection", "filed")},
		{name: "redis-wrong", md: stream("connection", "wrong"), wantErr: "WRONGPASS"},
		{name: "redis-url", md: stream("connection", "inurl"), wantErr: "WRONGPASS"},
		{name: "redis-down", md: stream("connection", "down"), wantErr: "connection refused"},
		{name: "redis-metrics-token", md: stream("connection", "good", "metrics", "promtoken", "processingSelector", `service="orders"`)},
		{name: "redis-metrics-refused", md: stream("connection", "good", "metrics", "promwrong", "processingSelector", `service="orders"`)},
		{name: "redis-metrics-basic-refused", md: stream("connection", "good", "metrics", "promwrongbasic", "processingSelector", `service="orders"`)},
		{name: "prom-token", md: depth("promtoken")},
		{name: "prom-file", md: depth("promfile")},
		{name: "prom-basic", md: depth("prombasic")},
		{name: "prom-wrong-token", md: depth("promwrong"), wantErr: "401"},
		{name: "prom-wrong-basic", md: depth("promwrongbasic"), wantErr: "401"},
		{name: "bus-env", md: queue("bus")},
		{name: "bus-file", md: queue("busfile")},
		{name: "bus-wrong-key", md: queue("buswrong"), wantErr: "401"},
		{name: "bad-metadata", md: stream("connection", "good", "targetAge", "5x"), wantErr: `targetAge = "5x": must be a duration`},
	}

	var got captured
	answer := func(where string, m proto.Message, err error) {
		if err != nil {
			got.add("grpc error "+where, status.Convert(err).Code().String()+": "+status.Convert(err).Message())
			return
		}
		b, _ := protojson.Marshal(m)
		got.add("grpc answer "+where, string(b))
	}
	call := func(o object) {
		r := &pb.ScaledObjectRef{Namespace: "shop", Name: o.name, ScalerMetadata: o.md}
		spec, err := keda.GetMetricSpec(ctx, r)
		answer(o.name+" GetMetricSpec", spec, err)
		m, err := keda.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: r, MetricName: "flowscaler-shop-" + o.name})
		answer(o.name+" GetMetrics", m, err)
		if o.wantErr == "" && err != nil {
			t.Errorf("%s: GetMetrics: %v; want an answer", o.name, err)
		}
		if o.wantErr != "" && (err == nil || !strings.Contains(err.Error(), o.wantErr)) {
			t.Errorf("%s: GetMetrics: %v; want an error with %q", o.name, err, o.wantErr)
		}
		a, err := keda.IsActive(ctx, r)
		answer(o.name+" IsActive", a, err)
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if s, err := keda.StreamIsActive(sctx, r); err != nil {
			answer(o.name+" StreamIsActive", nil, err)
		} else {
			a, err := s.Recv()
			answer(o.name+" StreamIsActive", a, err)
		}
		e, err := decisions.Explain(ctx, &flowscalerv1.ExplainRequest{Namespace: "shop", Name: o.name})
		answer(o.name+" Explain", e, err)
		if h, err := decisions.Hints(sctx, &flowscalerv1.HintsRequest{Namespace: "shop", Name: o.name}); err != nil {
			answer(o.name+" Hints", nil, err)
		} else {
			hr, err := h.Recv()
			answer(o.name+" Hints", hr, err)
		}
	}
	for _, o := range objects {
		call(o)
	}
	// A second round: the good objects decide again from fresh readings.
	time.Sleep(200 * time.Millisecond)
	for _, o := range objects {
		call(o)
	}
	all, err := decisions.Explain(ctx, &flowscalerv1.ExplainRequest{All: true})
	answer("Explain all", all, err)

	// A reload that fails, with secrets in the lines it refuses: a URL
	// that does not parse, one with the wrong scheme, and a password file
	// that is gone.
	bad := fmt.Sprintf(`server:
  readTimeout: 2s
  tls: {certFile: %q, keyFile: %q}
connections:%s  inurl: {type: redis, url: "redis://:%s@127.0.0.1:notaport"}
  down: {type: redis, url: "http://:%s@127.0.0.1:%d"}
  gone: {type: redis, url: "redis://127.0.0.1:1", passwordFile: %q}
state: {backend: redis, connection: inurl}
`, certFile, keyFile, connections, urlRedisPassword, downRedisPass, downPort, filepath.Join(dir, "no-such-file"))
	if err := os.WriteFile(cfgPath, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed reload to be logged", func() bool { return strings.Contains(logs.String(), "config reload failed") })
	// A reload that succeeds and changes connections that hold secrets:
	// "filed" now sends the wrong password, so redis-file is answered
	// from its last good decision, marked stale with the read's error.
	good := strings.Replace(cfgText, "readCacheTTL: 100ms", "readCacheTTL: 200ms", 1)
	good = strings.Replace(good, "down: {type: redis, url: \"redis://:", "down: {type: redis, url: \"redis://default:", 1)
	good = strings.Replace(good, fmt.Sprintf("passwordFile: %q", redisPasswordFile), "passwordFromEnv: FS_WRONG_REDIS_PASSWORD", 1)
	if err := os.WriteFile(cfgPath, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the good reload to be logged", func() bool { return strings.Contains(logs.String(), "config reloaded") })
	for _, o := range objects {
		call(o)
	}

	hc := &http.Client{Timeout: 5 * time.Second}
	for _, path := range []string{"/metrics", "/debug/decisions", "/healthz", "/readyz"} {
		resp, err := hc.Get("http://" + hl.Addr().String() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got.add("http "+path, fmt.Sprintf("%d %s", resp.StatusCode, b))
	}

	// Stopped, the daemon has ended every span and written its last log line.
	stopDaemon()
	for _, s := range exp.GetSpans().Snapshots() {
		b, err := json.Marshal(map[string]any{
			"name": s.Name(), "status": s.Status(), "attributes": s.Attributes(), "events": s.Events(), "links": s.Links(), "resource": s.Resource().Attributes(),
		})
		if err != nil {
			t.Fatal(err)
		}
		got.add("span "+s.Name(), string(b))
	}
	got.add("log", logs.String())

	secrets := []string{redisPassword, wrongRedisPass, urlRedisPassword, downRedisPass, promToken, promFileToken,
		promPassword, wrongPromToken, wrongPromPass, sbKey, wrongSBKey, sbConn, wrongSBConn}
	for _, line := range strings.Split(string(keyPEM), "\n") {
		// Every base64 line of the TLS key is secret; the armour is not.
		if line != "" && !strings.HasPrefix(line, "-----") {
			secrets = append(secrets, line)
		}
	}
	got.mu.Lock()
	for _, it := range got.items {
		for _, s := range secrets {
			for _, f := range forms(s) {
				if strings.Contains(it.text, f) {
					t.Errorf("%s leaks a planted secret (%q):\n%s", it.where, f, excerpt(it.text, f))
				}
			}
		}
	}
	got.mu.Unlock()

	// The captures are not empty and hold the failures, so a test that
	// captured nothing could not pass.
	for _, want := range []struct{ where, text string }{
		{"grpc error redis-wrong GetMetrics", "WRONGPASS"},
		{"grpc error redis-url GetMetrics", "WRONGPASS"},
		{"grpc error redis-down GetMetrics", "connection refused"},
		{"grpc error prom-wrong-token GetMetrics", "401"},
		{"grpc error prom-wrong-basic GetMetrics", "401"},
		{"grpc error bus-wrong-key GetMetrics", "401"},
		{"grpc error bad-metadata GetMetrics", "InvalidArgument"},
		{"grpc answer redis-metrics-refused Explain", "401"},
		{"grpc answer redis-env GetMetrics", "metricValue"},
		{"grpc answer prom-basic GetMetrics", "metricValue"},
		{"grpc answer bus-file GetMetrics", "metricValue"},
		{"grpc answer Explain all", "redis-stream good/orders#workers"},
		{"grpc answer redis-file Explain", "WRONGPASS"},
		{"http /debug/decisions", `"staleError": "redis-stream filed/orders#workers: XINFO GROUPS: WRONGPASS`},
		{"http /debug/decisions", "servicebus-queue bus/orders"},
		{"http /metrics", "flowscaler_config_last_reload_successful 1"},
		{"http /healthz", "200 ok"},
		{"http /readyz", "200 ready"},
		{"span externalscaler.ExternalScaler/GetMetrics", "WRONGPASS"},
		{"span source.read", "401"},
		{"log", "config reload failed"},
		{"log", "connections.inurl.url"},
		{"log", "connections.gone.passwordFile"},
		{"log", "config reloaded"},
		{"log", "state store failing"},
		{"grpc answer redis-env Explain", "state store failing ("},
		{"grpc answer redis-env Explain", "WRONGPASS"},
	} {
		if text := got.all(want.where); !strings.Contains(text, want.text) {
			t.Errorf("%s does not hold %q; captured:\n%.2000s", want.where, want.text, text)
		}
	}
}

type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}

// excerpt is the text around the first f, to see where a leak came from.
func excerpt(text, f string) string {
	i := strings.Index(text, f)
	return text[max(0, i-300):min(len(text), i+len(f)+100)]
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
