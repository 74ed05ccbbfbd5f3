// Command flowscaler is a KEDA external scaler that sizes queue consumers by
// throughput and message age.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/cmd/flowscaler/internal/demo"
	"github.com/flowscaler/flowscaler/cmd/flowscaler/internal/explain"
	"github.com/flowscaler/flowscaler/cmd/flowscaler/internal/memlimit"
	"github.com/flowscaler/flowscaler/cmd/flowscaler/internal/simulate"
	"github.com/flowscaler/flowscaler/cmd/flowscaler/internal/telemetry"
	"github.com/flowscaler/flowscaler/scaler"
	"github.com/flowscaler/flowscaler/scaler/config"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `flowscaler: a KEDA external scaler that sizes queue consumers by throughput and message age.

Usage:
  flowscaler [serve] [--config FILE] [--grpc-addr ADDR] [--http-addr ADDR] [--log-level LEVEL]
  flowscaler explain NAMESPACE/NAME | --all [--addr 127.0.0.1:6000] [--json] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]
  flowscaler demo [--duration 2m]
  flowscaler simulate --trace FILE|builtin:NAME [--config FILE] [--target-age 30s] [--concurrency 4] [--pod-startup 30s] [--max-replicas N] [--json OUT] [--plot OUT.svg]
  flowscaler version

Without --config, serve uses the built-in configuration (one Redis connection
"local" at $FLOWSCALER_REDIS_URL, default redis://127.0.0.1:6379, and one
Prometheus connection "prometheus" at $FLOWSCALER_PROMETHEUS_URL, default
http://127.0.0.1:9090). Traces are exported over OTLP when the standard
OTEL_* variables ask for it (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch cmd {
	case "serve":
		err = serve(ctx, args, stderr)
	case "demo":
		err = runDemo(ctx, args, stdout, stderr)
	case "explain":
		err = explain.Run(ctx, explain.Options{Args: args, Stdout: stdout, Stderr: stderr})
	case "simulate":
		err = simulate.Run(simulate.Options{Args: args, Stdout: stdout, Stderr: stderr, Terminal: isTerminal(stderr)})
	case "version":
		fmt.Fprintln(stdout, "flowscaler", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = fmt.Errorf("unknown command %q\n\n%s", cmd, usage)
	}
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "flowscaler:", err)
		}
		return 1
	}
	return 0
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file (default: the built-in configuration)")
	grpcAddr := fs.String("grpc-addr", "", "gRPC listen address, overriding server.grpcAddr")
	httpAddr := fs.String("http-addr", "", "HTTP listen address (/metrics, /healthz, /readyz), overriding server.httpAddr")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	redis.SetLogger(redisLog{log})
	if c, err := memlimit.From(os.Getenv, os.ReadFile); err != nil {
		log.Warn("memory limit: keeping Go's default", "error", err.Error())
	} else {
		if c.Limit > 0 {
			debug.SetMemoryLimit(c.Limit)
		}
		log.Info("memory limit", "bytes", c.Limit, "from", c.Why)
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	if *grpcAddr != "" {
		cfg.Server.GRPCAddr = *grpcAddr
	}
	if *httpAddr != "" {
		cfg.Server.HTTPAddr = *httpAddr
	}
	tracing, err := telemetry.FromEnv(ctx, version)
	if err != nil {
		return err
	}
	defer func() {
		flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tracing.Shutdown(flushCtx); err != nil {
			log.Warn("flushing traces failed", "error", err.Error())
		}
	}()
	if tracing.Exporter != "" {
		log.Info("exporting traces", "exporter", tracing.Exporter)
	}
	return scaler.RunDaemon(ctx, scaler.DaemonOptions{Config: cfg, ConfigPath: *path, Logger: log, Version: version, TracerProvider: tracing.Provider})
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	duration := fs.Duration("duration", 150*time.Second, "how long the demo runs (0: until interrupted)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(stderr, "warn")
	if err != nil {
		return err
	}
	redis.SetLogger(redisLog{log})
	return demo.Run(ctx, demo.Options{Duration: *duration, Out: stdout, Logger: log, Version: version})
}

func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Parse(config.DefaultYAML(), os.LookupEnv, os.ReadFile)
	}
	return config.Load(path)
}

// redisLog routes go-redis's own messages (pool dial retries) into the JSON
// log at debug level: the read errors that matter reach callers as errors.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level = %q: must be debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
