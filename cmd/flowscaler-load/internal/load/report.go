package load

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Sample is a snapshot taken at the start of a measured interval (counted
// from 0); the last one follows the end of the run.
type Sample struct {
	Interval int `json:"interval"`
	Snapshot
}

// Report is what a run measured.
type Report struct {
	Objects      int           `json:"objects"`
	Streams      int           `json:"streams"`
	Pollers      int           `json:"pollers"`
	Interval     time.Duration `json:"intervalNs"`
	RealInterval time.Duration `json:"realIntervalNs"`
	Intervals    int           `json:"intervals"`
	// Calls and Errors are by method, over the measured intervals.
	Calls  map[string]int64 `json:"calls"`
	Errors map[string]int64 `json:"errors"`
	// FirstError is the first failed call's error, if any.
	FirstError string `json:"firstError,omitempty"`
	// Late are polls that started more than a tenth of an interval late.
	Late int64 `json:"latePolls"`
	// GetMetrics latency seen by the client.
	P50, P99, Max time.Duration
	// QuietP50 and QuietP99 leave out the calls that overlapped a /metrics
	// scrape of the probe; QuietCalls counts the rest.
	QuietP50, QuietP99 time.Duration
	QuietCalls         int64
	// ServerP50 and ServerP99 are the upper bounds of the buckets of the
	// daemon's own GetMetrics histogram that hold them, in seconds (-1:
	// past the last bucket; 0 when the daemon had no calls).
	ServerP50 float64 `json:"serverP50Seconds"`
	ServerP99 float64 `json:"serverP99Seconds"`
	// CPUPer1000Calls is the daemon's CPU time over the measured intervals
	// per 1,000 calls of any method.
	CPUPer1000Calls time.Duration `json:"cpuPer1000CallsNs"`
	// ScrapeCPU is the daemon's CPU time for one /metrics scrape of the
	// probe, measured after the run; CPUPer1000Calls leaves the scrapes
	// out at this price (0 when unmeasured).
	ScrapeCPU time.Duration `json:"scrapeCpuNs"`
	// CPUShare is that CPU time over the wall-clock time: the fraction of
	// one core the daemon used.
	CPUShare float64 `json:"cpuShare"`
	// ReadsPerInterval are the daemon's stream reads per measured interval;
	// RedisReadsPerInterval the same count from Redis (-1: not measured).
	ReadsPerInterval      float64  `json:"readsPerInterval"`
	RedisReadsPerInterval float64  `json:"redisReadsPerInterval"`
	Samples               []Sample `json:"samples"`
	Growth                Growth   `json:"growth"`
}

func newReport(o Options, samples []Sample, scrapeCost time.Duration, h, quiet *Histogram, c *counters) Report {
	pollers := o.Objects
	if o.HPA {
		pollers *= 2
	}
	r := Report{
		Objects: o.Objects, Streams: o.Streams, Pollers: pollers,
		Interval: o.Interval, RealInterval: o.RealInterval(), Intervals: o.Intervals,
		Calls: map[string]int64{}, Errors: map[string]int64{},
		Late: c.late.Load(),
		P50:  h.Quantile(0.50), P99: h.Quantile(0.99), Max: h.Max(),
		QuietP50: quiet.Quantile(0.50), QuietP99: quiet.Quantile(0.99), QuietCalls: quiet.Count(),
		Samples: samples, RedisReadsPerInterval: -1,
	}
	var calls int64
	for i, m := range Methods {
		r.Calls[m] = c.calls[i].Load()
		r.Errors[m] = c.errors[i].Load()
		calls += r.Calls[m]
	}
	if e := c.firstErr.Load(); e != nil {
		r.FirstError = *e
	}
	first, last := samples[0].Snapshot, samples[len(samples)-1].Snapshot
	cpu := last.CPU - first.CPU
	// Every sample but the last scraped /metrics after reading the CPU
	// time, inside the window.
	r.ScrapeCPU = scrapeCost
	cpu -= time.Duration(len(samples)-1) * scrapeCost
	if calls > 0 {
		r.CPUPer1000Calls = time.Duration(float64(cpu) * 1000 / float64(calls))
	}
	if wall := last.At.Sub(first.At); wall > 0 {
		r.CPUShare = float64(cpu) / float64(wall)
	}
	r.ReadsPerInterval = (last.Reads - first.Reads) / float64(o.Intervals)
	if first.RedisReads >= 0 && last.RedisReads >= 0 {
		r.RedisReadsPerInterval = float64(last.RedisReads-first.RedisReads) / float64(o.Intervals)
	}
	r.ServerP50 = bucketQuantile(first.ServerBuckets, last.ServerBuckets, 0.5)
	r.ServerP99 = bucketQuantile(first.ServerBuckets, last.ServerBuckets, 0.99)
	r.Growth = growthOf(samples)
	return r
}

// TotalErrors is the number of failed calls of any method.
func (r Report) TotalErrors() int64 {
	var n int64
	for _, v := range r.Errors {
		n += v
	}
	return n
}

// TotalCalls is the number of calls of any method.
func (r Report) TotalCalls() int64 {
	var n int64
	for _, v := range r.Calls {
		n += v
	}
	return n
}

// Growth compares the daemon's size early and late in a run. The first
// quarter of the samples is left out: caches, per-object state and the
// Go heap's own target settle there.
type Growth struct {
	RSSFirst, RSSLast, RSSMax                      int64
	GoroutinesFirst, GoroutinesLast, GoroutinesMax int
	// RSSQ2 and RSSQ4 are the medians of the second and the last quarter
	// of the samples; likewise the goroutines.
	RSSQ2, RSSQ4               int64
	GoroutinesQ2, GoroutinesQ4 int
	// RSSSlope is the least-squares slope of RSS over the second half of
	// the samples, in bytes per 1,000 intervals.
	RSSSlope float64
	// Checked is false with fewer than 8 samples: too few for quarters.
	Checked bool
	// OK is true when checked and neither grew past the limits.
	OK  bool
	Why string
}

// Growth limits: the RSS of a steady daemon moves with the garbage
// collector's cycle (GOGC 100 lets the heap reach twice the live data
// before a collection), so only a rise beyond that noise counts.
// Goroutines move with the calls in flight at the moment of a sample.
const (
	maxRSSGrowth       = 0.10
	maxGoroutineGrowth = 0.05
	minSamplesForCheck = 8
)

func growthOf(samples []Sample) Growth {
	var g Growth
	if len(samples) == 0 {
		return g
	}
	first, last := samples[0], samples[len(samples)-1]
	g.RSSFirst, g.RSSLast = first.RSS, last.RSS
	g.GoroutinesFirst, g.GoroutinesLast = first.Goroutines, last.Goroutines
	for _, s := range samples {
		g.RSSMax = max(g.RSSMax, s.RSS)
		g.GoroutinesMax = max(g.GoroutinesMax, s.Goroutines)
	}
	n := len(samples)
	if n < minSamplesForCheck {
		g.Why = fmt.Sprintf("%d samples: at least %d are needed to compare quarters", n, minSamplesForCheck)
		return g
	}
	q2, q4 := samples[n/4:n/2], samples[3*n/4:]
	g.RSSQ2, g.RSSQ4 = median(q2, func(s Sample) int64 { return s.RSS }), median(q4, func(s Sample) int64 { return s.RSS })
	g.GoroutinesQ2 = int(median(q2, func(s Sample) int64 { return int64(s.Goroutines) }))
	g.GoroutinesQ4 = int(median(q4, func(s Sample) int64 { return int64(s.Goroutines) }))
	g.RSSSlope = slope(samples[n/2:]) * 1000
	g.Checked = true
	var why []string
	if rise := float64(g.RSSQ4-g.RSSQ2) / float64(g.RSSQ2); rise > maxRSSGrowth {
		why = append(why, fmt.Sprintf("RSS grew %.1f%% from the second to the last quarter: must be at most %.0f%%", 100*rise, 100*maxRSSGrowth))
	}
	if rise := float64(g.GoroutinesQ4-g.GoroutinesQ2) / float64(g.GoroutinesQ2); rise > maxGoroutineGrowth {
		why = append(why, fmt.Sprintf("goroutines grew %.1f%% from the second to the last quarter: must be at most %.0f%%", 100*rise, 100*maxGoroutineGrowth))
	}
	g.OK = len(why) == 0
	if g.OK {
		g.Why = fmt.Sprintf("no growth: RSS %+.1f%%, goroutines %+d from the second to the last quarter", 100*float64(g.RSSQ4-g.RSSQ2)/float64(g.RSSQ2), g.GoroutinesQ4-g.GoroutinesQ2)
	} else {
		g.Why = strings.Join(why, "; ")
	}
	return g
}

// bucketQuantile is the upper bound of the first bucket whose count,
// between two cumulative histograms, reaches the fraction q of the total.
func bucketQuantile(before, after map[float64]float64, q float64) float64 {
	les := slices.Sorted(maps.Keys(after))
	if len(les) == 0 {
		return 0
	}
	total := after[les[len(les)-1]] - before[les[len(les)-1]]
	if total <= 0 {
		return 0
	}
	for _, le := range les {
		if after[le]-before[le] >= q*total {
			if math.IsInf(le, 1) {
				return -1
			}
			return le
		}
	}
	return -1
}

func median(s []Sample, f func(Sample) int64) int64 {
	v := make([]int64, len(s))
	for i := range s {
		v[i] = f(s[i])
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// slope is the least-squares slope of RSS against the interval number:
// Σ(x−x̄)(y−ȳ) ÷ Σ(x−x̄)².
func slope(s []Sample) float64 {
	var mx, my float64
	for _, p := range s {
		mx += float64(p.Interval)
		my += float64(p.RSS)
	}
	mx /= float64(len(s))
	my /= float64(len(s))
	var num, den float64
	for _, p := range s {
		num += (float64(p.Interval) - mx) * (float64(p.RSS) - my)
		den += (float64(p.Interval) - mx) * (float64(p.Interval) - mx)
	}
	if den == 0 {
		return math.NaN()
	}
	return num / den
}

// WriteMarkdown writes the report as the tables of BENCHMARKS.md.
func (r Report) WriteMarkdown(w io.Writer) {
	last := r.Samples[len(r.Samples)-1]
	fmt.Fprintf(w, "| objects | streams | pollers | interval (real) | intervals | calls | errors | late polls | GetMetrics p50 / p99 / max | the same without a scrape: p50 / p99 (calls) | daemon's own histogram: p50 / p99 within | CPU per 1,000 calls | daemon CPU | CPU per /metrics scrape | RSS | goroutines | reads per interval (flowscaler / Redis) |\n")
	fmt.Fprintf(w, "|---:|---:|---:|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---|\n")
	redis := "n/a"
	if r.RedisReadsPerInterval >= 0 {
		redis = fmt.Sprintf("%.1f", r.RedisReadsPerInterval)
	}
	fmt.Fprintf(w, "| %d | %d | %d | %s (%s) | %d | %d | %d | %d | %s / %s / %s | %s / %s (%d) | %s / %s | %s | %.0f%% of a core | %s | %.1f MB | %d | %.1f / %s |\n",
		r.Objects, r.Streams, r.Pollers, r.Interval, r.RealInterval.Round(time.Millisecond), r.Intervals, r.TotalCalls(), r.TotalErrors(), r.Late,
		ms(r.P50), ms(r.P99), ms(r.Max), ms(r.QuietP50), ms(r.QuietP99), r.QuietCalls, le(r.ServerP50), le(r.ServerP99), ms(r.CPUPer1000Calls), 100*r.CPUShare, ms(r.ScrapeCPU), mb(last.RSS), last.Goroutines, r.ReadsPerInterval, redis)
	g := r.Growth
	fmt.Fprintf(w, "\n| | first | last | max | median, 2nd quarter | median, last quarter | slope (last half) |\n|---|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(w, "| RSS | %.1f MB | %.1f MB | %.1f MB | %.1f MB | %.1f MB | %+.2f MB per 1,000 intervals |\n",
		mb(g.RSSFirst), mb(g.RSSLast), mb(g.RSSMax), mb(g.RSSQ2), mb(g.RSSQ4), g.RSSSlope/(1<<20))
	fmt.Fprintf(w, "| goroutines | %d | %d | %d | %d | %d | |\n", g.GoroutinesFirst, g.GoroutinesLast, g.GoroutinesMax, g.GoroutinesQ2, g.GoroutinesQ4)
	fmt.Fprintf(w, "\n%s\n", g.Why)
	if r.FirstError != "" {
		fmt.Fprintf(w, "\nfirst error: %s\n", r.FirstError)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

func le(seconds float64) string {
	if seconds < 0 {
		return "> last bucket"
	}
	return fmt.Sprintf("≤ %g ms", seconds*1000)
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }
