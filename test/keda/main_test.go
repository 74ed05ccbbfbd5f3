package keda

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/resolver"
	v2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"

	"github.com/flowscaler/flowscaler/sources/proctest"
)

// daemonBin is the flowscaler binary under test, built once by TestMain.
var daemonBin string

// globalHTTPTimeout is what KEDA's operator passes when KEDA_HTTP_DEFAULT_TIMEOUT
// is unset (cmd/operator/main.go: 3000 ms).
const globalHTTPTimeout = 3000 * time.Millisecond

// namespace is the namespace of every ScaledObject in this suite.
const namespace = "conformance"

// TestMain builds the daemon once, from the main module with its own go.mod
// (so the binary is the one that ships, not one rebuilt against KEDA's
// dependency versions). FLOWSCALER_BIN overrides the build.
func TestMain(m *testing.M) {
	// KEDA's scalers log through controller-runtime's global logger. Without a
	// sink controller-runtime complains after 30 s; with one, KEDA's own view
	// of every gRPC error is in the output of a failed run.
	ctrllog.SetLogger(funcr.New(func(prefix, args string) {
		fmt.Fprintln(os.Stderr, "keda:", prefix, args)
	}, funcr.Options{}))
	// Before any client exists: gRPC reads the registry without a lock.
	resolver.Register(pods)

	dir, err := os.MkdirTemp("", "flowscaler-keda-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if bin := os.Getenv("FLOWSCALER_BIN"); bin != "" {
			daemonBin = bin
		} else {
			daemonBin = filepath.Join(dir, "flowscaler")
			build := exec.Command("go", "build", "-o", daemonBin, "./cmd/flowscaler")
			build.Dir = filepath.Join("..", "..")
			if out, err := build.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "TestMain: building flowscaler in %s: %v\n%s", build.Dir, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// daemon is one running flowscaler process.
type daemon struct {
	GRPCAddr string
	HTTPAddr string
	cmd      *exec.Cmd
	out      *proctest.Output
	exited   chan struct{}
	waitErr  error
}

// daemonOptions are the parts of the config a test chooses.
type daemonOptions struct {
	RedisURL   string
	StaleAfter time.Duration // 0: 60s, the documented default
	// Config, when set, is the whole config file instead of the documented one.
	Config string
}

// configYAML is the documented config file, with the test's Redis and
// staleAfter. Listen addresses come from the command line.
func configYAML(o daemonOptions) string {
	if o.Config != "" {
		return o.Config
	}
	stale := o.StaleAfter
	if stale == 0 {
		stale = 60 * time.Second
	}
	return fmt.Sprintf(`server:
  grpcAddr: ":6000"
  httpAddr: ":8080"
  readTimeout: 2s
  staleAfter: %s
connections:
  local:
    type: redis
    url: %s
policy:
  defaults:
    minReplicas: 0
    maxReplicas: 50
    targetAge: 30s
    concurrency: 4
    prefetch: 8
    processingTime: 100ms
    targetUtilization: 0.8
    scaleDownCooldown: 5m
    activationDepth: 0
    rateWindow: 60s
`, stale, o.RedisURL)
}

// startDaemon runs `flowscaler serve` on free loopback ports and waits for
// /readyz. It is stopped with SIGTERM (by PID) when the test ends; its output
// is logged if the test failed.
func startDaemon(t *testing.T, o daemonOptions) *daemon {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "flowscaler.yaml")
	if err := os.WriteFile(cfgPath, []byte(configYAML(o)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &daemon{
		GRPCAddr: freeAddr(t),
		HTTPAddr: freeAddr(t),
		out:      &proctest.Output{},
		exited:   make(chan struct{}),
	}
	d.cmd = exec.Command(daemonBin, "serve", "--config", cfgPath, "--grpc-addr", d.GRPCAddr, "--http-addr", d.HTTPAddr)
	d.cmd.Stdout = d.out
	d.cmd.Stderr = d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", daemonBin, err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()
	// Registered first, so it runs last: after the stop below.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("flowscaler (pid %d) output:\n%s", d.cmd.Process.Pid, d.out.String())
		}
	})
	t.Cleanup(func() { d.stop(t) })
	// Runs first: while the daemon still answers, what it decided and why.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("flowscaler /debug/decisions:\n%s", d.get("/debug/decisions"))
		}
	})
	d.waitReady(t)
	return d
}

func (d *daemon) waitReady(t *testing.T) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	url := "http://" + d.HTTPAddr + "/readyz"
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			t.Fatalf("flowscaler exited before it was ready: %v", d.waitErr)
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("GET %s never returned 200 (last: %s)", url, last)
}

// get returns the body of an HTTP GET on the daemon, or the error.
func (d *daemon) get(path string) string {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + d.HTTPAddr + path)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err.Error()
	}
	return resp.Status + "\n" + string(body)
}

// stop sends SIGTERM to the daemon's PID and expects a clean exit; a daemon
// that ignores it is killed (again by PID) so that nothing outlives the test.
func (d *daemon) stop(t *testing.T) {
	select {
	case <-d.exited:
		t.Errorf("flowscaler exited during the test: %v", d.waitErr)
		return
	default:
	}
	pid := d.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM to flowscaler pid %d: %v", pid, err)
	}
	select {
	case <-d.exited:
		if d.waitErr != nil {
			t.Errorf("flowscaler pid %d did not stop cleanly on SIGTERM: %v", pid, d.waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("flowscaler pid %d still running 30 s after SIGTERM; killing it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-d.exited
	}
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scaledObject is the duck-typed object KEDA's scale handler builds scalers
// from: one trigger of the given type, metricType AverageValue.
func scaledObject(name, triggerType string, md map[string]string) *kedav1alpha1.WithTriggers {
	return &kedav1alpha1.WithTriggers{
		TypeMeta:     metav1.TypeMeta{APIVersion: "keda.sh/v1alpha1", Kind: "ScaledObject"},
		ObjectMeta:   metav1.ObjectMeta{Name: name, Namespace: namespace},
		InternalKind: "ScaledObject",
		Spec: kedav1alpha1.WithTriggersSpec{
			Triggers: []kedav1alpha1.ScaleTriggers{{
				Type:       triggerType,
				Metadata:   md,
				MetricType: v2.AverageValueMetricType,
			}},
		},
	}
}

// scalerConfig builds trigger i's ScalerConfig field by field as KEDA's
// pkg/scaling/scalers_builder.go (buildScalers) does. The differences are
// what a test has no use for: no pod template to resolve env from, no
// TriggerAuthentication, no event recorder (the external scalers use none).
func scalerConfig(wt *kedav1alpha1.WithTriggers, i int) *scalersconfig.ScalerConfig {
	trigger := wt.Spec.Triggers[i]
	return &scalersconfig.ScalerConfig{
		ScalableObjectName:      wt.Name,
		ScalableObjectNamespace: wt.Namespace,
		ScalableObjectType:      wt.Kind,
		TriggerName:             trigger.Name,
		TriggerMetadata:         trigger.Metadata,
		TriggerType:             trigger.Type,
		TriggerUseCachedMetrics: trigger.UseCachedMetrics,
		ResolvedEnv:             map[string]string{},
		AuthParams:              map[string]string{},
		GlobalHTTPTimeout:       globalHTTPTimeout,
		TriggerIndex:            i,
		MetricType:              trigger.MetricType,
		AsMetricSource:          false,
		ScaledObject:            wt,
		TriggerUniqueKey:        fmt.Sprintf("%s-%s-%s-%d", wt.Kind, wt.Namespace, wt.Name, i),
	}
}

// newExternalScaler is KEDA's `type: external` trigger pointing at d.
func newExternalScaler(t *testing.T, d *daemon, name string, md map[string]string) scalers.Scaler {
	t.Helper()
	md["scalerAddress"] = d.GRPCAddr
	s, err := scalers.NewExternalScaler(scalerConfig(scaledObject(name, "external", md), 0))
	if err != nil {
		t.Fatalf("scalers.NewExternalScaler: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// newExternalPushScaler is KEDA's `type: external-push` trigger pointing at d.
func newExternalPushScaler(t *testing.T, d *daemon, name string, md map[string]string) scalers.PushScaler {
	t.Helper()
	md["scalerAddress"] = d.GRPCAddr
	s, err := scalers.NewExternalPushScaler(scalerConfig(scaledObject(name, "external-push", md), 0))
	if err != nil {
		t.Fatalf("scalers.NewExternalPushScaler: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// metricName asks the scaler for its spec, as KEDA does before it creates
// the HPA, and returns the single metric's name.
func metricName(t *testing.T, s scalers.Scaler) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	specs := s.GetMetricSpecForScaling(ctx)
	if len(specs) != 1 || specs[0].External == nil {
		t.Fatalf("GetMetricSpecForScaling = %+v, want one External metric", specs)
	}
	return specs[0].External.Metric.Name
}

// evaluation is one GetMetricsAndActivity result.
type evaluation struct {
	Value  float64
	Active bool
	Err    error
}

// evaluate is what KEDA's scale loop and metrics server do for one object.
func evaluate(t *testing.T, s scalers.Scaler, metric string) evaluation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	values, active, err := s.GetMetricsAndActivity(ctx, metric)
	if err != nil {
		return evaluation{Err: err}
	}
	if len(values) != 1 {
		t.Fatalf("GetMetricsAndActivity returned %d values %+v, want exactly 1", len(values), values)
	}
	if values[0].MetricName != metric {
		t.Errorf("metric value is named %q, want %q", values[0].MetricName, metric)
	}
	return evaluation{Value: values[0].Value.AsApproximateFloat64(), Active: active}
}

// mustEvaluate is evaluate for calls that must succeed.
func mustEvaluate(t *testing.T, s scalers.Scaler, metric string) evaluation {
	t.Helper()
	ev := evaluate(t, s, metric)
	if ev.Err != nil {
		t.Fatalf("GetMetricsAndActivity(%q): %v", metric, ev.Err)
	}
	return ev
}

// streamMetadata is the trigger metadata of a redis-stream object; extra
// keys are added over it.
func streamMetadata(stream, group string, extra map[string]string) map[string]string {
	md := map[string]string{
		"source":     "redis-stream",
		"connection": "local",
		"stream":     stream,
		"group":      group,
	}
	for k, v := range extra {
		md[k] = v
	}
	return md
}

// addOldEntries appends n entries to stream whose IDs carry a millisecond
// timestamp `age` in the past, so that the oldest undelivered entry's age is
// known and far beyond any targetAge in this suite (urgency = 4 exactly).
func addOldEntries(t *testing.T, rdb *redis.Client, stream string, n int, age time.Duration) {
	t.Helper()
	ctx := context.Background()
	ms := time.Now().Add(-age).UnixMilli()
	pipe := rdb.Pipeline()
	for i := 1; i <= n; i++ {
		pipe.XAdd(ctx, &redis.XAddArgs{
			Stream: stream,
			ID:     fmt.Sprintf("%d-%d", ms, i),
			Values: []any{"n", i},
		})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("XADD %d entries to %s: %v", n, stream, err)
	}
}

// createGroup creates group on stream at id ("0": every entry undelivered;
// "$": none), creating the stream if needed.
func createGroup(t *testing.T, rdb *redis.Client, stream, group, id string) {
	t.Helper()
	if err := rdb.XGroupCreateMkStream(context.Background(), stream, group, id).Err(); err != nil {
		t.Fatalf("XGROUP CREATE %s %s %s MKSTREAM: %v", stream, group, id, err)
	}
}

// deliver hands n entries of group to a consumer without acknowledging
// them: they become pending (in-flight).
func deliver(t *testing.T, rdb *redis.Client, stream, group string, n int) {
	t.Helper()
	res, err := rdb.XReadGroup(context.Background(), &redis.XReadGroupArgs{
		Group: group, Consumer: "worker-1", Streams: []string{stream, ">"}, Count: int64(n), Block: -1,
	}).Result()
	if err != nil {
		t.Fatalf("XREADGROUP %s %s COUNT %d: %v", stream, group, n, err)
	}
	if got := len(res[0].Messages); got != n {
		t.Fatalf("XREADGROUP delivered %d entries, want %d", got, n)
	}
}
