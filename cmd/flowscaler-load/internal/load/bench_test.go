package load

import (
	"context"
	"flag"
	"testing"
	"time"

	"github.com/flowscaler/flowscaler/sources"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

var (
	benchObjects     = flag.Int("load.objects", 10000, "BenchmarkScale: ScaledObjects")
	benchStreams     = flag.Int("load.streams", 500, "BenchmarkScale: distinct streams")
	benchCompression = flag.Float64("load.compression", 1, "BenchmarkScale: time compression of the 15s polling interval")
	benchReadTTL     = flag.Duration("load.read-cache-ttl", time.Second, "BenchmarkScale: server.readCacheTTL")
	benchReadGrace   = flag.Duration("load.read-cache-grace", time.Second, "BenchmarkScale: server.readCacheGrace")
)

// BenchmarkScale polls 10,000 ScaledObjects over 500 streams of a real
// redis-server, as KEDA would every 15 s, against a daemon in
// this process; one iteration is one polling interval. ns/op is the
// compressed interval itself, so it is suppressed; the figures are the
// reported metrics. CPU counts this whole process (client and daemon):
// flowscaler-load runs the daemon apart for the daemon's own.
//
//	go test ./cmd/flowscaler-load/internal/load/ -run '^$' -bench BenchmarkScale -benchtime 4x
func BenchmarkScale(b *testing.B) {
	rs := redistest.Start(b)
	if err := Prepare(context.Background(), rs.Client(b), *benchStreams, 100); err != nil {
		b.Fatal(err)
	}
	grpcAddr, httpAddr := daemon(b, rs, sources.Cache{TTL: *benchReadTTL, Grace: *benchReadGrace})
	o := Options{
		GRPCAddr: grpcAddr, Probe: Probe{MetricsURL: "http://" + httpAddr + "/metrics", Redis: rs.Client(b)},
		Objects: *benchObjects, Streams: *benchStreams, Interval: 15 * time.Second, Compression: *benchCompression,
		Intervals: b.N, Warmup: 1, SampleEvery: b.N, CallTimeout: 5 * time.Second, Seed: 1,
	}
	b.ResetTimer()
	rep, err := Run(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	// Failed calls are reported, not fatal: on a busy machine some
	// deadlines pass, and the figures say how many.
	if n := rep.TotalErrors(); n > 0 {
		b.Logf("%d calls failed; first: %s", n, rep.FirstError)
	}
	last := rep.Samples[len(rep.Samples)-1]
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(rep.P50)/1e6, "p50-ms")
	b.ReportMetric(float64(rep.P99)/1e6, "p99-ms")
	b.ReportMetric(float64(rep.QuietP99)/1e6, "p99-no-scrape-ms")
	b.ReportMetric(float64(rep.CPUPer1000Calls)/1e6, "cpu-ms/1000calls")
	b.ReportMetric(float64(last.RSS)/(1<<20), "RSS-MB")
	b.ReportMetric(float64(last.Goroutines), "goroutines")
	b.ReportMetric(rep.ReadsPerInterval, "reads/interval")
	b.ReportMetric(float64(rep.TotalErrors()), "errors")
}
