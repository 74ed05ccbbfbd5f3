package load

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flowscaler/flowscaler/scaler"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

// daemon runs flowscaler in this process against rs with the given read
// cache and returns its gRPC and HTTP addresses.
func daemon(t testing.TB, rs *redistest.Server, cache sources.Cache) (grpcAddr, httpAddr string) {
	t.Helper()
	cfg, err := config.Parse([]byte(ConfigYAML(rs.URL(), cache)), func(string) (string, bool) { return "", false }, nil)
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
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- scaler.RunDaemon(ctx, scaler.DaemonOptions{
			Config: cfg, Logger: slog.New(slog.DiscardHandler), GRPCListener: gl, HTTPListener: hl,
			OnReady: func(net.Addr, net.Addr) { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon exited: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	return gl.Addr().String(), hl.Addr().String()
}

// TestRun polls a small fleet for a few intervals against real Redis and
// checks what the report counts. The read cache TTL is far longer than the
// run, so each stream is read exactly once for the whole run, whatever the
// objects' metadata variants, and almost always during the warm-up
// interval (a slow read may end after it).
func TestRun(t *testing.T) {
	tests := []struct {
		name string
		hpa  bool
	}{
		{name: "a read shared by every object of a stream"},
		{name: "HPA pollers share it too", hpa: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := redistest.Start(t)
			const objects, streams, intervals = 20, 5, 3
			if err := Prepare(context.Background(), rs.Client(t), streams, 8); err != nil {
				t.Fatal(err)
			}
			grpcAddr, httpAddr := daemon(t, rs, sources.Cache{TTL: time.Hour})
			o := Options{
				GRPCAddr: grpcAddr, Probe: Probe{MetricsURL: "http://" + httpAddr + "/metrics", Redis: rs.Client(t)},
				Objects: objects, Streams: streams, Interval: 15 * time.Second, Compression: 50,
				Intervals: intervals, Warmup: 1, HPA: tt.hpa, SampleEvery: 1, CallTimeout: 30 * time.Second, Seed: 1,
			}
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			pollers := objects
			if tt.hpa {
				pollers *= 2
			}
			perMethod := int64(pollers * intervals)
			want := map[string]int64{"GetMetricSpec": perMethod, "GetMetrics": perMethod, "IsActive": perMethod}
			if diff := cmp.Diff(want, rep.Calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(map[string]int64{"GetMetricSpec": 0, "GetMetrics": 0, "IsActive": 0}, rep.Errors); diff != "" {
				t.Errorf("errors (-want +got):\n%s\nfirst: %s", diff, rep.FirstError)
			}
			after, err := o.Probe.Take(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := []any{after.Reads, after.RedisReads}; !cmp.Equal([]any{float64(streams), int64(streams)}, got) {
				t.Errorf("reads over the whole run (flowscaler, Redis) = %v, want one per stream: %d", got, streams)
			}
			if rep.ReadsPerInterval*intervals > streams {
				t.Errorf("%g reads per interval over %d measured intervals: more than the %d of the whole run", rep.ReadsPerInterval, intervals, streams)
			}
			// One sample at the start of each measured interval and one at the end.
			if got := len(rep.Samples); got != intervals+1 {
				t.Errorf("%d samples, want %d", got, intervals+1)
			}
			if rep.P50 <= 0 || rep.P99 < rep.P50 || rep.Max < rep.P99 {
				t.Errorf("GetMetrics latency p50 %s, p99 %s, max %s: want 0 < p50 ≤ p99 ≤ max", rep.P50, rep.P99, rep.Max)
			}
			last := rep.Samples[len(rep.Samples)-1]
			if last.RSS <= 0 || last.Goroutines <= 0 {
				t.Errorf("last sample RSS %d, goroutines %d: want both positive", last.RSS, last.Goroutines)
			}
			var md strings.Builder
			rep.WriteMarkdown(&md)
			for _, want := range []string{"GetMetrics p50 / p99 / max", "CPU per 1,000 calls", "RSS", "goroutines", "reads per interval"} {
				if !strings.Contains(md.String(), want) {
					t.Errorf("markdown lacks %q:\n%s", want, md.String())
				}
			}
		})
	}
}

// TestRunReadsEveryStreamOncePerInterval: with the read cache TTL equal to
// the real polling interval, a stream is read once per interval whatever
// the phases of its objects, because each read is reused until the same
// phase comes round again.
func TestRunReadsEveryStreamOncePerInterval(t *testing.T) {
	rs := redistest.Start(t)
	const objects, streams, intervals = 20, 5, 3
	if err := Prepare(context.Background(), rs.Client(t), streams, 8); err != nil {
		t.Fatal(err)
	}
	o := Options{
		Objects: objects, Streams: streams, Interval: 15 * time.Second, Compression: 30,
		Intervals: intervals, Warmup: 1, SampleEvery: 1, CallTimeout: 30 * time.Second, Seed: 1,
	}
	grpcAddr, httpAddr := daemon(t, rs, sources.Cache{TTL: o.RealInterval(), Grace: o.RealInterval()})
	o.GRPCAddr, o.Probe = grpcAddr, Probe{MetricsURL: "http://" + httpAddr + "/metrics", Redis: rs.Client(t)}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if n := rep.TotalErrors(); n != 0 {
		t.Fatalf("%d calls failed; first: %s", n, rep.FirstError)
	}
	// Reads land in the interval where the first poller's phase falls, so
	// per interval the count is the number of streams; over the run the
	// boundaries may shift one read of a stream into the next interval.
	total := rep.ReadsPerInterval * intervals
	if total < streams*(intervals-1) || total > streams*(intervals+1) {
		t.Errorf("%g reads over %d intervals, want about %d (one per stream per interval)", total, intervals, streams*intervals)
	}
	// The two counters are read one after the other, so a read may fall
	// between them.
	if d := (rep.RedisReadsPerInterval - rep.ReadsPerInterval) * intervals; d < -1 || d > 1 {
		t.Errorf("Redis served %g reads per interval, flowscaler counted %g: want the same count", rep.RedisReadsPerInterval, rep.ReadsPerInterval)
	}
}

func TestObjects(t *testing.T) {
	refs := Objects(40, 5)
	perStream := map[string]int{}
	for _, r := range refs {
		perStream[r.ScalerMetadata["stream"]]++
	}
	want := map[string]int{StreamName(0): 8, StreamName(1): 8, StreamName(2): 8, StreamName(3): 8, StreamName(4): 8}
	if diff := cmp.Diff(want, perStream); diff != "" {
		t.Errorf("objects per stream (-want +got):\n%s", diff)
	}
	cfg, err := config.Parse([]byte(ConfigYAML("redis://127.0.0.1:6379", sources.Cache{TTL: time.Second, Grace: time.Second})), func(string) (string, bool) { return "", false }, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		if _, err := scaler.ParseObject(cfg, r.Namespace, r.Name, r.ScalerMetadata); err != nil {
			t.Errorf("%s/%s: %v", r.Namespace, r.Name, err)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{name: "valid", o: Options{GRPCAddr: "x:1", Objects: 2, Streams: 1, Interval: time.Second, Compression: 1, Intervals: 1, SampleEvery: 1, CallTimeout: time.Second}},
		{name: "everything wrong", o: Options{Objects: 1, Streams: 2, Warmup: -1},
			want: `addr = "": required
objects = 1: must be at least streams (2)
interval = "0s": must be positive
compression = 0: must be at least 1
intervals = 0: must be at least 1
warmup = -1: must not be negative
sample-every = 0: must be at least 1
call-timeout = "0s": must be positive`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if err := tt.o.validate(); err != nil {
				got = err.Error()
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
		})
	}
}
