package scaler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sort"
	"sync/atomic"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	flowscalerv1 "github.com/flowscaler/flowscaler/proto/flowscaler/v1"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

// DaemonOptions wire a running flowscaler.
type DaemonOptions struct {
	Config *config.Config
	// ConfigPath is watched for changes; "" (the embedded config) is not.
	ConfigPath string
	// ReloadInterval is how often ConfigPath is checked; default 2s.
	ReloadInterval time.Duration
	Logger         *slog.Logger
	Version        string
	// GRPCListener and HTTPListener override the config's addresses (tests
	// pass listeners on port 0).
	GRPCListener net.Listener
	HTTPListener net.Listener
	// OnReady, when set, is called once both servers accept connections.
	OnReady func(grpcAddr, httpAddr net.Addr)
	// TracerProvider gets a server span per gRPC call (incoming W3C trace
	// context is honoured) with the evaluation's spans under it; nil
	// records none.
	TracerProvider trace.TracerProvider
}

// maxRequestBytes bounds one gRPC request: KEDA's largest (a ScaledObjectRef
// with its metadata) is a few kilobytes.
const maxRequestBytes = 256 << 10

// RunDaemon serves until ctx ends, then stops gracefully within the config's
// shutdownTimeout: streams are ended cleanly, in-flight calls finish, and
// whatever is left after the deadline is cut.
func RunDaemon(ctx context.Context, o DaemonOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg := o.Config
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := NewMetrics(reg)

	redis := sources.NewRedis(sources.RedisOptions{})
	defer redis.Close()
	if err := redis.SetConnections(redisConnections(cfg)); err != nil {
		return err
	}
	prom := sources.NewPrometheusQuerier(sources.PrometheusOptions{})
	defer prom.Close()
	if err := prom.SetConnections(prometheusConnections(cfg)); err != nil {
		return err
	}
	servicebus := sources.NewServiceBus(sources.ServiceBusOptions{})
	defer servicebus.Close()
	if err := servicebus.SetConnections(serviceBusConnections(cfg)); err != nil {
		return err
	}
	promInstrumented, err := sources.InstrumentInstant(prom, reg)
	if err != nil {
		return err
	}
	// Every PromQL query, depth or consumer metric, is shared by all the
	// objects that ask it for queries.cacheTTL.
	promCache := ReadCache(cfg)
	promCache.TTL = time.Duration(cfg.Queries.CacheTTL)
	promReader := sources.NewPrometheusReader(sources.CoalesceInstant(promInstrumented, promCache, time.Now), time.Now)
	instrumented, err := sources.Instrument(Route(map[sources.Kind]Reader{
		sources.RedisList:   redis,
		sources.RedisStream: redis,
		sources.Prometheus:  promReader,
		// One read per entity per readCacheTTL: the Query names the entity.
		sources.ServiceBusQueue:        servicebus,
		sources.ServiceBusSubscription: servicebus,
	}), reg)
	if err != nil {
		return err
	}
	reader := sources.Coalesce(instrumented, ReadCache(cfg), time.Now)
	// A nil *RedisStateStore must not become a non-nil StateStore.
	var store StateStore
	if rs, err := newStateStore(cfg); err != nil {
		return err
	} else if rs != nil {
		defer rs.Close()
		store = rs
	}
	srv, err := New(Options{Reader: reader, MetricsReader: promReader, Config: cfg, Metrics: metrics, Logger: log, TracerProvider: o.TracerProvider, StateStore: store})
	if err != nil {
		return err
	}

	grpcLis, httpLis, err := listen(o, cfg)
	if err != nil {
		return err
	}
	serverOpts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(metrics.UnaryInterceptor),
		grpc.ChainStreamInterceptor(metrics.StreamInterceptor),
		grpc.MaxRecvMsgSize(maxRequestBytes),
	}
	if o.TracerProvider != nil {
		serverOpts = append(serverOpts, grpc.StatsHandler(serverTracing(o.TracerProvider)))
	}
	if cfg.Server.TLS.Enabled() {
		certs, err := newCertReloader(cfg.Server.TLS, log)
		if err != nil {
			grpcLis.Close()
			httpLis.Close()
			return err
		}
		serverOpts = append(serverOpts, grpc.Creds(credentials.NewTLS(certs.ServerConfig())))
	}
	gs := grpc.NewServer(serverOpts...)
	pb.RegisterExternalScalerServer(gs, srv)
	flowscalerv1.RegisterDecisionServiceServer(gs, NewDecisionService(srv))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)

	var ready atomic.Bool
	hsrv := &http.Server{Handler: httpMux(reg, metrics, srv, &ready), ReadHeaderTimeout: 5 * time.Second}

	errc := make(chan error, 2)
	go func() { errc <- gs.Serve(grpcLis) }()
	go func() {
		if err := hsrv.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	if o.ConfigPath != "" {
		interval := o.ReloadInterval
		if interval <= 0 {
			interval = 2 * time.Second
		}
		go config.Watch(ctx, o.ConfigPath, interval, cfg, func(c *config.Config) {
			if err := prom.SetConnections(prometheusConnections(c)); err != nil {
				reloadFailed(log, metrics, o.ConfigPath, err)
				return
			}
			if err := redis.SetConnections(redisConnections(c)); err != nil {
				reloadFailed(log, metrics, o.ConfigPath, err)
				return
			}
			if err := servicebus.SetConnections(serviceBusConnections(c)); err != nil {
				reloadFailed(log, metrics, o.ConfigPath, err)
				return
			}
			if c.State != srv.Config().State {
				// The store is built once: switching it under running
				// objects would split their state between two places.
				log.Warn("config reload: the state section changes on restart only; keeping the running state backend",
					"running", srv.Config().State.Backend, "configured", c.State.Backend)
			}
			srv.SetConfig(c)
			metrics.ConfigReloads.WithLabelValues("ok").Inc()
			metrics.ConfigLastReloadOK.Set(1)
			log.Info("config reloaded", "path", o.ConfigPath)
		}, func(err error) { reloadFailed(log, metrics, o.ConfigPath, err) })
	}

	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(pb.ExternalScaler_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	ready.Store(true)
	log.Info("flowscaler serving", "version", o.Version, "grpc", grpcLis.Addr().String(), "http", httpLis.Addr().String(),
		"tls", cfg.Server.TLS.Enabled(), "mtls", cfg.Server.TLS.ClientCAFile != "",
		"connections", len(cfg.Connections), "profiles", cfg.ProfileNames(), "state", cfg.State.Backend)
	if o.OnReady != nil {
		o.OnReady(grpcLis.Addr(), httpLis.Addr())
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	ready.Store(false)
	hs.Shutdown()
	stopGracefully(gs, srv, time.Duration(srv.Config().Server.ShutdownTimeout), log)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = hsrv.Shutdown(shutdownCtx)
	return serveErr
}

func reloadFailed(log *slog.Logger, m *Metrics, path string, err error) {
	m.ConfigReloads.WithLabelValues("error").Inc()
	m.ConfigLastReloadOK.Set(0)
	log.Error("config reload failed; keeping the previous config", "path", path, "errors", splitJoined(err))
}

// stopGracefully ends streams, lets unary calls finish and cuts whatever is
// left at the deadline.
func stopGracefully(gs *grpc.Server, srv *Server, timeout time.Duration, log *slog.Logger) {
	srv.Drain()
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		log.Warn("graceful stop timed out; closing remaining connections", "timeout", timeout.String())
		gs.Stop()
		<-done
	}
}

func listen(o DaemonOptions, cfg *config.Config) (grpcLis, httpLis net.Listener, err error) {
	grpcLis, httpLis = o.GRPCListener, o.HTTPListener
	if grpcLis == nil {
		if grpcLis, err = net.Listen("tcp", cfg.Server.GRPCAddr); err != nil {
			return nil, nil, fmt.Errorf("server.grpcAddr = %q: %w", cfg.Server.GRPCAddr, err)
		}
	}
	if httpLis == nil {
		if httpLis, err = net.Listen("tcp", cfg.Server.HTTPAddr); err != nil {
			grpcLis.Close()
			return nil, nil, fmt.Errorf("server.httpAddr = %q: %w", cfg.Server.HTTPAddr, err)
		}
	}
	return grpcLis, httpLis, nil
}

// ReadCache is how queue readings are shared: server.readCacheTTL and
// readCacheGrace.
func ReadCache(c *config.Config) sources.Cache {
	return sources.Cache{TTL: time.Duration(c.Server.ReadCacheTTL), Grace: time.Duration(c.Server.ReadCacheGrace)}
}

func redisConnections(c *config.Config) map[string]sources.RedisConnection {
	out := map[string]sources.RedisConnection{}
	for name, conn := range c.Connections {
		if conn.Type == "redis" {
			out[name] = sources.RedisConnection{URL: conn.URL, Password: conn.Password()}
		}
	}
	return out
}

func prometheusConnections(c *config.Config) map[string]sources.PrometheusConnection {
	out := map[string]sources.PrometheusConnection{}
	for name, conn := range c.Connections {
		if conn.Type != "prometheus" {
			continue
		}
		pc := sources.PrometheusConnection{
			URL:             conn.URL,
			BearerToken:     conn.BearerToken(),
			BearerTokenFile: conn.BearerTokenFile,
			Username:        conn.Username,
			Password:        conn.Password(),
			TLS: sources.PrometheusTLS{
				CAFile: conn.TLS.CAFile, CertFile: conn.TLS.CertFile, KeyFile: conn.TLS.KeyFile,
				ServerName: conn.TLS.ServerName, InsecureSkipVerify: conn.TLS.InsecureSkipVerify,
			},
		}
		if conn.Timeout != nil {
			pc.Timeout = time.Duration(*conn.Timeout)
		}
		out[name] = pc
	}
	return out
}

// Route sends each query to the reader registered for its kind: the one
// place where source kinds meet their implementations.
func Route(readers map[sources.Kind]Reader) Reader { return router(readers) }

type router map[sources.Kind]Reader

func (r router) Read(ctx context.Context, q sources.Query) (sources.Reading, error) {
	rd, ok := r[q.Kind]
	if !ok {
		return sources.Reading{}, fmt.Errorf("source %q: no reader registered", q.Kind)
	}
	return rd.Read(ctx, q)
}

func httpMux(reg *prometheus.Registry, metrics *Metrics, srv *Server, ready *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /debug/decisions", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(Explain(srv.Evaluations(), time.Now()))
	})
	return mux
}

// ExplainedDecision is the JSON form of an evaluation for people and tools.
type ExplainedDecision struct {
	Namespace      string   `json:"namespace"`
	Name           string   `json:"name"`
	MetricName     string   `json:"metricName"`
	Source         string   `json:"source"`
	Profile        string   `json:"profile,omitempty"`
	Replicas       int      `json:"replicas"`
	Active         bool     `json:"active"`
	Reason         string   `json:"reason"`
	Depth          float64  `json:"depth"`
	DepthCapped    bool     `json:"depthCapped,omitempty"`
	InFlight       float64  `json:"inFlight"`
	OldestAgeSec   *float64 `json:"oldestAgeSeconds"`
	ArrivalRate    *float64 `json:"arrivalRate"`
	ProcessingSec  float64  `json:"processingTimeSeconds"`
	ProcessingFrom string   `json:"processingTimeFrom"`
	MaxDeliveries  int64    `json:"maxDeliveries"`
	Concurrency    int      `json:"hintConcurrency"`
	Prefetch       int      `json:"hintPrefetch"`
	CooldownSec    float64  `json:"cooldownSeconds"`
	ReadingAgeSec  float64  `json:"readingAgeSeconds"`
	Stale          bool     `json:"stale,omitempty"`
	// StaleError is why the latest read failed, while Stale.
	StaleError string `json:"staleError,omitempty"`
	// ConsumptionRate is messages per second, from consumer metrics or counters.
	ConsumptionRate *float64 `json:"consumptionRate"`
	// SteadySlots (λ·W ÷ u) and DrainSlots ((B ÷ T)·W·urgency) are the two
	// terms of the target, in busy slots.
	SteadySlots float64             `json:"steadySlots"`
	DrainSlots  float64             `json:"drainSlots"`
	Consumers   *ExplainedConsumers `json:"consumerMetrics,omitempty"`
	// DeadLetters and their growth per second, and scheduled messages, for
	// sources that count them (Service Bus).
	DeadLetters    *float64 `json:"deadLetterMessages,omitempty"`
	DeadLetterRate *float64 `json:"deadLetterRate,omitempty"`
	Scheduled      *float64 `json:"scheduledMessages,omitempty"`
}

// ExplainedConsumers are the consumer metrics behind a decision.
type ExplainedConsumers struct {
	Source          string          `json:"source"`
	ProcessingTime  ExplainedMetric `json:"processingTimeSeconds"`
	ProcessingP95   ExplainedMetric `json:"processingTimeP95Seconds"`
	ConsumptionRate ExplainedMetric `json:"consumptionRate"`
	FailureRate     ExplainedMetric `json:"failureRate"`
	ReadyPods       ExplainedMetric `json:"readyPods"`
}

// ExplainedMetric is one consumer metric: its value (null when unknown),
// where it came from, and why it was not freshly measured.
type ExplainedMetric struct {
	Value  *float64 `json:"value"`
	From   string   `json:"from,omitempty"`
	AgeSec float64  `json:"ageSeconds,omitempty"`
	Why    string   `json:"why,omitempty"`
}

func explainMetric(m MetricInput) ExplainedMetric {
	e := ExplainedMetric{From: m.From, AgeSec: m.Age.Seconds(), Why: m.Why}
	if v := m.Value; !math.IsNaN(v) {
		e.Value = &v
	}
	return e
}

// Explain turns evaluations into their JSON form, sorted by object.
func Explain(evs []Evaluation, now time.Time) []ExplainedDecision {
	out := make([]ExplainedDecision, 0, len(evs))
	for _, ev := range evs {
		d := ev.Decision
		e := ExplainedDecision{
			Namespace: ev.Object.Namespace, Name: ev.Object.Name, MetricName: ev.Object.MetricName,
			Source: ev.Object.Query.String(), Profile: ev.Object.Profile,
			Replicas: d.Replicas, Active: d.Active, Reason: d.Reason,
			Depth: ev.Reading.Depth, DepthCapped: ev.Reading.DepthCapped, InFlight: ev.Reading.InFlight,
			ProcessingSec: d.Terms.ProcessingTime.Seconds(), ProcessingFrom: d.Terms.ProcessingFrom,
			MaxDeliveries: ev.Reading.MaxDeliveries,
			Concurrency:   d.Hints.Concurrency, Prefetch: d.Hints.Prefetch, CooldownSec: d.Hints.Cooldown.Seconds(),
			ReadingAgeSec: now.Sub(ev.Reading.At).Seconds(), Stale: ev.Stale,
		}
		if ev.Reading.OldestAge >= 0 {
			v := ev.Reading.OldestAge.Seconds()
			e.OldestAgeSec = &v
		}
		if r := d.Terms.ArrivalRate; r == r { // not NaN
			e.ArrivalRate = &r
		}
		if r := d.Terms.ConsumptionRate; !math.IsNaN(r) {
			e.ConsumptionRate = &r
		}
		e.SteadySlots, e.DrainSlots = d.Terms.SteadySlots, d.Terms.DrainSlots
		e.StaleError = ev.StaleErr
		e.DeadLetters, e.DeadLetterRate, e.Scheduled = knownFloat(ev.Reading.DeadLetter), knownFloat(ev.DeadLetters.Rate), knownFloat(ev.Reading.Scheduled)
		if e.DeadLetters == nil {
			e.DeadLetterRate = nil
		}
		if c := ev.Consumers; c != nil {
			e.ProcessingFrom = c.ProcessingTime.From
			e.Consumers = &ExplainedConsumers{
				Source:          c.Source,
				ProcessingTime:  explainMetric(c.ProcessingTime),
				ProcessingP95:   explainMetric(c.ProcessingP95),
				ConsumptionRate: explainMetric(c.ConsumptionRate),
				FailureRate:     explainMetric(c.FailureRate),
				ReadyPods:       explainMetric(c.ReadyPods),
			}
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}
