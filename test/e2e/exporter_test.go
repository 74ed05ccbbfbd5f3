package e2e

import (
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// exporter stands in for the consumers' OpenTelemetry exporter: it serves
// messaging_processing_duration_milliseconds as Prometheus sees it, and
// nothing else. Each scrape records messagesPerScrape more messages of the
// current processing time, so the mean over any window of scrapes is exactly
// that time. There are deliberately no consumed or failed counters: the
// consumption rate stays the stream's own, and the only thing a scenario
// changes is the processing time.
type exporter struct {
	addr string

	mu             sync.Mutex
	processingTime time.Duration
	buckets        [len(bucketsMS)]float64 // cumulative, as Prometheus has them
	count          float64
	sumMS          float64
}

var _ http.Handler = (*exporter)(nil)

const messagesPerScrape = 10

// bucketsMS are the histogram's finite upper bounds in milliseconds.
var bucketsMS = [...]float64{250, 500, 1000, 2000, 4000, 8000}

func startExporter(t *testing.T) *exporter {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &exporter{addr: l.Addr().String()}
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return e
}

// set changes the processing time of the messages recorded from the next
// scrape on; 0 records nothing.
func (e *exporter) set(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.processingTime = d
}

func (e *exporter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/metrics" {
		http.NotFound(w, r)
		return
	}
	e.mu.Lock()
	if e.processingTime > 0 {
		ms := float64(e.processingTime) / float64(time.Millisecond)
		for i, le := range bucketsMS {
			if ms <= le {
				e.buckets[i] += messagesPerScrape
			}
		}
		e.count += messagesPerScrape
		e.sumMS += messagesPerScrape * ms
	}
	buckets, count, sum := e.buckets, e.count, e.sumMS
	e.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	const h = "messaging_processing_duration_milliseconds"
	fmt.Fprintf(w, "# HELP %s Processing time of one message, in milliseconds.\n# TYPE %s histogram\n", h, h)
	for i, le := range bucketsMS {
		fmt.Fprintf(w, "%s_bucket{le=\"%g\"} %g\n", h, le, buckets[i])
	}
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %g\n%s_sum %g\n%s_count %g\n", h, count, h, sum, h, count)
}
