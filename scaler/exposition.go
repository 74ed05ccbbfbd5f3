package scaler

import (
	"bufio"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// Gatherers is g and the per-object gauges: everything Handler serves,
// as families.
func (m *Metrics) Gatherers(g prometheus.Gatherer) prometheus.Gatherers {
	return prometheus.Gatherers{g, m.objects}
}

// Handler serves /metrics: g's families through client_golang's text
// encoder, then the per-object gauges written directly (see objectSeries),
// gzipped when the scraper accepts it. It speaks the text format 0.0.4
// only, which every Prometheus accepts; flowscaler has no exemplars or
// native histograms that would need OpenMetrics or protobuf.
func (m *Metrics) Handler(g prometheus.Gatherer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mfs, err := g.Gather()
		if err != nil {
			// As promhttp's default: a partial exposition would read as
			// series that vanished.
			http.Error(w, "gathering metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		var out io.Writer = w
		if acceptsGzip(r.Header.Get("Accept-Encoding")) {
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Add("Vary", "Accept-Encoding")
			gz := gzipWriters.Get().(*gzip.Writer)
			gz.Reset(w)
			defer func() {
				_ = gz.Close()
				gzipWriters.Put(gz)
			}()
			out = gz
		}
		bw := bufio.NewWriterSize(out, 64<<10)
		enc := expfmt.NewEncoder(bw, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, mf := range mfs {
			if enc.Encode(mf) != nil {
				return // the scraper went away; nothing to tell it
			}
		}
		if m.objects.writeText(bw) != nil {
			return
		}
		_ = bw.Flush()
	})
}

// gzipWriters are reused across scrapes: a gzip.Writer holds about 800 kB
// of compressor state. BestSpeed, because the exposition is repetitive
// text that compresses well anyway, and the core is shared with KEDA's calls.
var gzipWriters = sync.Pool{New: func() any {
	gz, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed) // a valid constant level: no error
	return gz
}}

// acceptsGzip reports whether an Accept-Encoding header allows gzip: it is
// listed, alone or as "*", without q=0.
func acceptsGzip(h string) bool {
	for part := range strings.SplitSeq(h, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		coding = strings.ToLower(strings.TrimSpace(coding))
		if coding != "gzip" && coding != "*" {
			continue
		}
		q := strings.ReplaceAll(strings.ToLower(params), " ", "")
		if q == "q=0" || q == "q=0.0" || q == "q=0.00" || q == "q=0.000" {
			if coding == "gzip" {
				return false
			}
			continue
		}
		return true
	}
	return false
}
