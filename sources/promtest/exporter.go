package promtest

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The seed consumers' metric names as an OpenTelemetry Prometheus exporter
// writes them: the histogram messaging.processing.duration (unit ms) gains
// the unit suffix, the counters gain _total.
const (
	ProcessingHistogram = "messaging_processing_duration_milliseconds"
	ConsumedCounter     = "messaging_messages_consumed_total"
	FailedCounter       = "messaging_messages_failed_total"
)

// Load is what the simulated consumers do between two scrapes.
type Load struct {
	// ProcessingTime is the processing time of every message.
	ProcessingTime time.Duration
	// Consumed messages are processed (observed in the histogram and
	// counted) per scrape.
	Consumed int
	// Failed messages are counted as failed per scrape.
	Failed int
}

// ExporterOptions configure an Exporter.
type ExporterOptions struct {
	// HistogramName defaults to ProcessingHistogram.
	HistogramName string
	// Buckets are the histogram's upper bounds in milliseconds; default
	// 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000.
	Buckets []float64
	// MessageType is the message_type label value; default "OrderPlaced".
	MessageType string
}

// Exporter publishes the seed's histogram and counters over HTTP on
// 127.0.0.1, built with client_golang on its own registry. Work is recorded
// when a scrape arrives, just before it is answered, so every scrape sees
// exactly Load.Consumed more messages of Load.ProcessingTime: means over
// any window of scrapes are exact, not subject to timing.
//
// The failed counter only appears once something has failed, as an
// OpenTelemetry counter that was never incremented is not exported.
type Exporter struct {
	// URL is the metrics endpoint.
	URL string

	mu       sync.Mutex
	load     Load
	scrapes  int
	msgType  string
	hist     *prometheus.HistogramVec
	consumed *prometheus.CounterVec
	failed   *prometheus.CounterVec
	reg      *prometheus.Registry
}

// StartExporter serves the metrics until the test ends. Its Load is zero
// until Set.
func StartExporter(t testing.TB, o ExporterOptions) *Exporter {
	t.Helper()
	if o.HistogramName == "" {
		o.HistogramName = ProcessingHistogram
	}
	if o.Buckets == nil {
		o.Buckets = []float64{5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}
	}
	if o.MessageType == "" {
		o.MessageType = "OrderPlaced"
	}
	e := &Exporter{
		msgType: o.MessageType,
		hist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: o.HistogramName, Help: "Processing time of one message, in milliseconds.", Buckets: o.Buckets,
		}, []string{"message_type"}),
		consumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: ConsumedCounter, Help: "Messages consumed.",
		}, []string{"message_type"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: FailedCounter, Help: "Messages whose processing failed.",
		}, []string{"message_type"}),
		reg: prometheus.NewRegistry(),
	}
	e.reg.MustRegister(e.hist, e.consumed, e.failed)
	metrics := promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		e.record()
		metrics.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.URL = srv.URL + "/metrics"
	return e
}

// Set changes what the consumers do from the next scrape on.
func (e *Exporter) Set(l Load) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.load = l
}

// Scrapes is how many scrapes the exporter has answered.
func (e *Exporter) Scrapes() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.scrapes
}

func (e *Exporter) record() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.scrapes++
	l := e.load
	ms := float64(l.ProcessingTime) / float64(time.Millisecond)
	h := e.hist.WithLabelValues(e.msgType)
	for range l.Consumed {
		h.Observe(ms)
	}
	e.consumed.WithLabelValues(e.msgType).Add(float64(l.Consumed))
	if l.Failed > 0 {
		e.failed.WithLabelValues(e.msgType).Add(float64(l.Failed))
	}
}
