package load

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/sources"
)

// Usage is the command's help.
const Usage = `flowscaler-load: drives a flowscaler daemon with ScaledObjects polled as KEDA polls them.

Usage:
  flowscaler-load [--flowscaler bin/flowscaler] [--cpus 0] [--redis-addr HOST:PORT]
                  [--objects 10000] [--streams 500] [--interval 15s] [--compression 5]
                  [--intervals 20 | --duration 24h] [--read-cache-ttl 1s] [--read-cache-grace 1s]
                  [--hpa] [--check-growth] [--gogc -1] [--memory-limit-mib 4096]
                  [--daemon-env KEY=VALUE] [--json OUT]
  flowscaler-load --addr HOST:PORT --http-addr HOST:PORT [--pid PID] --redis-addr HOST:PORT ...

By default it starts redis-server (from PATH) and the daemon (` + "`flowscaler serve`" + `, pinned
to --cpus with taskset), creates the streams, polls, and prints a markdown
report. With --addr it drives a daemon that is already running; its config
must name the Redis at --redis-addr as connection "load".
`

// RunCLI runs the command with args (without the program name).
func RunCLI(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowscaler-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, Usage); fs.PrintDefaults() }
	bin := fs.String("flowscaler", "bin/flowscaler", "the flowscaler binary to start")
	cpus := fs.String("cpus", "0", `CPU list the daemon is pinned to with taskset ("": not pinned)`)
	redisAddr := fs.String("redis-addr", "", "a running Redis (default: start redis-server from PATH)")
	addr := fs.String("addr", "", "gRPC address of a running daemon (default: start one)")
	httpAddr := fs.String("http-addr", "", "HTTP address of the running daemon given by --addr")
	pid := fs.Int("pid", 0, "PID of the running daemon given by --addr, for CPU and RSS from /proc (default: its process_* metrics)")
	var cache sources.Cache
	fs.DurationVar(&cache.TTL, "read-cache-ttl", time.Second, "server.readCacheTTL of the daemon started")
	fs.DurationVar(&cache.Grace, "read-cache-grace", time.Second, "server.readCacheGrace of the daemon started (0s: calls wait for every read)")
	o := Options{}
	fs.IntVar(&o.Objects, "objects", 10000, "ScaledObjects")
	fs.IntVar(&o.Streams, "streams", 500, "distinct streams; objects are spread evenly over them")
	backlog := fs.Int("backlog", 100, "entries per stream, a quarter of them delivered and pending")
	fs.DurationVar(&o.Interval, "interval", 15*time.Second, "KEDA pollingInterval")
	fs.Float64Var(&o.Compression, "compression", 5, "time compression: polls come interval ÷ compression apart")
	fs.IntVar(&o.Intervals, "intervals", 20, "measured intervals")
	duration := fs.Duration("duration", 0, "polling time to reproduce, in intervals of --interval (overrides --intervals; 24h = 5760 of 15s)")
	fs.IntVar(&o.Warmup, "warmup", 1, "intervals before measuring")
	fs.BoolVar(&o.HPA, "hpa", false, "a second poller per object: the HPA through KEDA's metrics adapter without useCachedMetrics")
	fs.IntVar(&o.SampleEvery, "sample-every", 1, "intervals between samples of the daemon's CPU, RSS, goroutines and reads")
	fs.DurationVar(&o.CallTimeout, "call-timeout", 5*time.Second, "deadline of one call")
	seed := fs.Uint64("seed", 1, "seed of the pollers' phases")
	checkGrowth := fs.Bool("check-growth", false, "fail when RSS or goroutines grow, or any call fails (the soak)")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	progress := fs.Bool("progress", true, "print a line per sample to stderr")
	var daemonEnv envList
	fs.Var(&daemonEnv, "daemon-env", "KEY=VALUE added to the started daemon's environment (repeatable), e.g. GOGC=200")
	gogc := fs.Int("gogc", -1, "the tool's own GOGC, -1 for off (the daemon keeps its environment's): the tool's collector pauses its pollers, and the latencies it measures with them")
	memLimit := fs.Int("memory-limit-mib", 4096, "the tool's own soft memory limit in MiB: with --gogc -1 its collector runs only there")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.Seed = *seed
	if *memLimit <= 0 {
		return fmt.Errorf("memory-limit-mib = %d: must be > 0", *memLimit)
	}
	debug.SetGCPercent(*gogc)
	debug.SetMemoryLimit(int64(*memLimit) << 20)
	if *duration > 0 {
		if o.Interval <= 0 {
			return fmt.Errorf("interval = %q: must be positive", o.Interval)
		}
		o.Intervals = int(*duration / o.Interval)
	}
	if *progress {
		o.Progress = stderr
	}
	if *addr != "" && (*httpAddr == "" || *redisAddr == "") {
		return errors.New(`addr: a running daemon needs --http-addr and --redis-addr too`)
	}

	dir, err := os.MkdirTemp("", "flowscaler-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	if *redisAddr == "" {
		r, err := StartRedis(dir)
		if err != nil {
			return err
		}
		defer r.Stop()
		*redisAddr = r.Addr
	}
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
	defer rdb.Close()
	if err := Prepare(ctx, rdb, o.Streams, *backlog); err != nil {
		return err
	}

	o.GRPCAddr = *addr
	o.Probe = Probe{PID: *pid, MetricsURL: "http://" + *httpAddr + "/metrics", Redis: rdb}
	if *addr == "" {
		d, err := StartDaemon(DaemonOptions{Bin: *bin, CPUs: *cpus, Config: ConfigYAML("redis://"+*redisAddr, cache), Dir: dir, Env: daemonEnv})
		if err != nil {
			return err
		}
		defer d.Stop()
		o.GRPCAddr = d.Addr
		o.Probe.PID = d.PID
		o.Probe.MetricsURL = "http://" + d.HTTP + "/metrics"
	}

	fmt.Fprintf(stderr, "%d objects over %d streams, polled every %s compressed %g× (%s real), %d intervals after %d of warm-up\n",
		o.Objects, o.Streams, o.Interval, o.Compression, o.RealInterval(), o.Intervals, o.Warmup)
	rep, err := Run(ctx, o)
	if err != nil {
		return err
	}
	rep.WriteMarkdown(stdout)
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if *checkGrowth {
		if n := rep.TotalErrors(); n > 0 {
			return fmt.Errorf("%d calls failed; first: %s", n, rep.FirstError)
		}
		if !rep.Growth.OK {
			return fmt.Errorf("growth check: %s", rep.Growth.Why)
		}
	}
	return nil
}

// envList is a repeatable KEY=VALUE flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, " ") }

func (e *envList) Set(v string) error {
	if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
		return fmt.Errorf("%q: must be KEY=VALUE", v)
	}
	*e = append(*e, v)
	return nil
}
