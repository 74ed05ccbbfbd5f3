// Package demo runs flowscaler against a local Redis with a built-in
// producer and simulated consumer pods, and prints what KEDA would see.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flowscaler/flowscaler/scaler"
	"github.com/flowscaler/flowscaler/scaler/config"
)

// Options configure a demo run.
type Options struct {
	// Duration of the run; 0 runs until ctx ends.
	Duration time.Duration
	Out      io.Writer
	Logger   *slog.Logger
	Version  string
}

// workload is one queue with its ScaledObject and its simulated consumers.
type workload struct {
	name     string // ScaledObject name, in namespace "demo"
	metadata map[string]string
	// perPod is the messages one pod finishes per second: concurrency ÷ processing time.
	perPod int
	pods   int
	// pending are IDs still being processed at the end of a tick; they are
	// acknowledged on the next one. Keeping λ·W of them (200 ms of work)
	// shows in-flight work the size a real consumer group has.
	pending []string
}

// arrivals is the producer's schedule: a burst, a trickle, then silence, so
// the target rises with the backlog and falls once the cooldown has passed.
func arrivals(t time.Duration) int {
	switch {
	case t < 40*time.Second:
		return 60
	case t < 75*time.Second:
		return 10
	default:
		return 0
	}
}

// Run starts a Redis (the machine's redis-server when there is one, else an
// in-process miniredis), flowscaler on loopback, a producer and consumer pods
// that follow flowscaler's target, and prints one line per ScaledObject each
// second, queried the way KEDA queries.
func Run(ctx context.Context, o Options) error {
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	redisURL, kind, stopRedis, err := startRedis(ctx)
	if err != nil {
		return err
	}
	defer stopRedis()
	cfg, err := config.Parse(config.DefaultYAML(), func(k string) (string, bool) {
		if k == "FLOWSCALER_REDIS_URL" {
			return redisURL, true
		}
		return os.LookupEnv(k)
	}, os.ReadFile)
	if err != nil {
		return err
	}
	grpcAddr, httpAddr, daemonDone, err := startDaemon(ctx, cfg, o)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rdb := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(redisURL, "redis://")})
	defer rdb.Close()

	loads := workloads()
	if err := rdb.XGroupCreateMkStream(ctx, "orders", "workers", "$").Err(); err != nil {
		return fmt.Errorf("create consumer group: %w", err)
	}
	fmt.Fprintf(o.Out, "flowscaler %s demo on %s (%s). Producer: 60 msg/s for 40s, 10 msg/s until 75s, then none.\n", o.Version, redisURL, kind)
	fmt.Fprintf(o.Out, "Consumer pods follow flowscaler's target; each pod finishes 20 msg/s. Scale-down cooldown 30s. Ctrl-C stops.\n")
	fmt.Fprintf(o.Out, "orders is a stream: its counters give the true arrival rate. emails is a list without consumer metrics:\n")
	fmt.Fprintf(o.Out, "its arrival rate is only a lower bound (depth growth), so it runs behind; consumer metrics from Prometheus fix that.\n")
	fmt.Fprintf(o.Out, "Explain a decision from another shell: go run ./cmd/flowscaler explain --addr %s demo/orders\n\n", grpcAddr)

	client := pb.NewExternalScalerClient(conn)
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			<-daemonDone
			fmt.Fprintln(o.Out, "\ndemo finished.")
			return nil
		case <-tick.C:
		}
		t := time.Since(start).Truncate(time.Second)
		for _, w := range loads {
			if err := w.step(ctx, rdb, arrivals(t)); err != nil && ctx.Err() == nil {
				fmt.Fprintf(o.Out, "t+%-7s %s: workload error: %v\n", t, w.name, err)
			}
		}
		lines := make([]func([]scaler.ExplainedDecision), len(loads))
		for i, w := range loads {
			lines[i] = queryKEDAWay(ctx, o.Out, t, client, w)
		}
		explained := fetchExplain(ctx, httpAddr)
		for _, print := range lines {
			print(explained)
		}
	}
}

func workloads() []*workload {
	common := map[string]string{
		"connection": "local", "targetAge": "10s", "processingTime": "200ms", "concurrency": "4",
		"prefetch": "8", "maxReplicas": "20", "scaleDownCooldown": "30s", "rateWindow": "20s",
	}
	with := func(extra map[string]string) map[string]string {
		md := map[string]string{}
		for k, v := range common {
			md[k] = v
		}
		for k, v := range extra {
			md[k] = v
		}
		return md
	}
	return []*workload{
		{name: "orders", perPod: 20, metadata: with(map[string]string{"source": "redis-stream", "stream": "orders", "group": "workers"})},
		{name: "emails", perPod: 20, metadata: with(map[string]string{"source": "redis-list", "list": "emails"})},
	}
}

// step produces this second's arrivals and lets the current pods consume.
func (w *workload) step(ctx context.Context, rdb *redis.Client, arrive int) error {
	capacity := int64(w.pods * w.perPod)
	if w.metadata["source"] == "redis-list" {
		for i := 0; i < arrive; i++ {
			if err := rdb.LPush(ctx, "emails", "msg").Err(); err != nil {
				return err
			}
		}
		if capacity > 0 {
			return ignoreNil(rdb.RPopCount(ctx, "emails", int(capacity)).Err())
		}
		return nil
	}
	for i := 0; i < arrive; i++ {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "orders", Values: []string{"order", strconv.Itoa(i)}}).Err(); err != nil {
			return err
		}
	}
	if len(w.pending) > 0 {
		if err := rdb.XAck(ctx, "orders", "workers", w.pending...).Err(); err != nil {
			return err
		}
		w.pending = w.pending[:0]
	}
	if capacity == 0 {
		return nil
	}
	res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: "workers", Consumer: "pod", Streams: []string{"orders", ">"}, Count: capacity, Block: -1,
	}).Result()
	if err != nil {
		return ignoreNil(err)
	}
	var read []string
	for _, s := range res {
		for _, m := range s.Messages {
			read = append(read, m.ID)
		}
	}
	// A message takes 200 ms: a fifth of this second's batch is still in
	// progress when the second ends.
	done := len(read) - len(read)/5
	if done > 0 {
		if err := rdb.XAck(ctx, "orders", "workers", read[:done]...).Err(); err != nil {
			return err
		}
	}
	w.pending = append(w.pending, read[done:]...)
	return nil
}

func ignoreNil(err error) error {
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

// queryKEDAWay asks flowscaler what KEDA asks (spec, metric, activity) and
// sets the simulated pods to the target; the returned func prints the line
// once the decisions' details have been fetched.
func queryKEDAWay(ctx context.Context, out io.Writer, t time.Duration, c pb.ExternalScalerClient, w *workload) func([]scaler.ExplainedDecision) {
	none := func([]scaler.ExplainedDecision) {}
	ref := &pb.ScaledObjectRef{Namespace: "demo", Name: w.name, ScalerMetadata: w.metadata}
	callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	spec, err := c.GetMetricSpec(callCtx, ref)
	if err != nil {
		fmt.Fprintf(out, "t+%-7s demo/%-7s GetMetricSpec: %v\n", t, w.name, err)
		return none
	}
	m, err := c.GetMetrics(callCtx, &pb.GetMetricsRequest{ScaledObjectRef: ref, MetricName: spec.MetricSpecs[0].MetricName})
	if err != nil {
		fmt.Fprintf(out, "t+%-7s demo/%-7s GetMetrics: %v\n", t, w.name, err)
		return none
	}
	act, err := c.IsActive(callCtx, ref)
	if err != nil {
		fmt.Fprintf(out, "t+%-7s demo/%-7s IsActive: %v\n", t, w.name, err)
		return none
	}
	w.pods = int(m.MetricValues[0].MetricValueFloat)
	state := "idle  "
	if act.Result {
		state = "active"
	}
	return func(explained []scaler.ExplainedDecision) {
		var e scaler.ExplainedDecision
		for _, x := range explained {
			if x.Name == w.name {
				e = x
			}
		}
		fmt.Fprintf(out, "t+%-7s demo/%-7s %s depth %5.0f  oldest %6s  arrival %9s  replicas %2d | %s\n",
			t, w.name, state, e.Depth, optSeconds(e.OldestAgeSec), optRate(e.ArrivalRate), w.pods, e.Reason)
	}
}

func optSeconds(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return strconv.FormatFloat(*v, 'f', 1, 64) + "s"
}

func optRate(v *float64) string {
	if v == nil {
		return "measuring"
	}
	return strconv.FormatFloat(*v, 'f', 1, 64) + "/s"
}

func fetchExplain(ctx context.Context, httpAddr string) []scaler.ExplainedDecision {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/debug/decisions", nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var out []scaler.ExplainedDecision
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return out
}

func startDaemon(ctx context.Context, cfg *config.Config, o Options) (grpcAddr, httpAddr string, done <-chan struct{}, err error) {
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", nil, err
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		gl.Close()
		return "", "", nil, err
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		if err := scaler.RunDaemon(ctx, scaler.DaemonOptions{
			Config: cfg, Logger: o.Logger, Version: o.Version, GRPCListener: gl, HTTPListener: hl,
		}); err != nil {
			o.Logger.Error("daemon stopped", "error", err)
		}
	}()
	return gl.Addr().String(), hl.Addr().String(), ch, nil
}

// startRedis prefers FLOWSCALER_REDIS_URL, then a private redis-server, then
// miniredis. miniredis lacks stream counters (entries-added, entries-read),
// so on it the stream's arrival rate is a lower bound and the reason says so.
func startRedis(ctx context.Context) (url, kind string, stop func(), err error) {
	if u := os.Getenv("FLOWSCALER_REDIS_URL"); u != "" {
		return u, "FLOWSCALER_REDIS_URL", func() {}, nil
	}
	if path, err := exec.LookPath("redis-server"); err == nil {
		if u, stop, err := startRedisServer(ctx, path); err == nil {
			return u, "a private redis-server", stop, nil
		}
	}
	m, err := miniredis.Run()
	if err != nil {
		return "", "", nil, err
	}
	return "redis://" + m.Addr(), "in-process miniredis: install redis-server for exact stream counters", m.Close, nil
}

func startRedisServer(ctx context.Context, path string) (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir, err := os.MkdirTemp("", "flowscaler-demo-redis")
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		os.RemoveAll(dir)
	}
	url := fmt.Sprintf("redis://127.0.0.1:%d", port)
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	defer rdb.Close()
	for i := 0; i < 50; i++ {
		if rdb.Ping(ctx).Err() == nil {
			return url, stop, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	return "", nil, fmt.Errorf("redis-server on port %d did not answer", port)
}
