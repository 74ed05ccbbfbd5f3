package load

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestHistogramQuantile(t *testing.T) {
	tests := []struct {
		name     string
		record   []time.Duration
		q        float64
		want     time.Duration
		wantMax  time.Duration
		wantSize int64
	}{
		{name: "empty", q: 0.99},
		{name: "nearest rank to the microsecond", record: []time.Duration{100 * time.Microsecond, 200 * time.Microsecond, 300 * time.Microsecond, 1500 * time.Microsecond},
			q: 0.5, want: 201 * time.Microsecond, wantMax: 1500 * time.Microsecond, wantSize: 4},
		{name: "the top is capped at the largest", record: []time.Duration{100 * time.Microsecond, 1500*time.Microsecond + 300},
			q: 0.99, want: 1500*time.Microsecond + 300, wantMax: 1500*time.Microsecond + 300, wantSize: 2},
		{name: "100 µs buckets past 10 ms", record: []time.Duration{25*time.Millisecond + 10*time.Microsecond, 40 * time.Millisecond},
			q: 0.5, want: 25*time.Millisecond + 100*time.Microsecond, wantMax: 40 * time.Millisecond, wantSize: 2},
		{name: "beyond a second: the maximum", record: []time.Duration{3 * time.Second, 5 * time.Second},
			q: 0.5, want: 5 * time.Second, wantMax: 5 * time.Second, wantSize: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			for _, d := range tt.record {
				h.Record(d)
			}
			got := []time.Duration{h.Quantile(tt.q), h.Max(), time.Duration(h.Count())}
			if diff := cmp.Diff([]time.Duration{tt.want, tt.wantMax, time.Duration(tt.wantSize)}, got); diff != "" {
				t.Errorf("quantile, max, count (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGrowth(t *testing.T) {
	const mb = 1 << 20
	series := func(rss []int64, goroutines []int) []Sample {
		s := make([]Sample, len(rss))
		for i := range rss {
			s[i] = Sample{Interval: i * 100, Snapshot: Snapshot{RSS: rss[i] * mb, Goroutines: goroutines[i]}}
		}
		return s
	}
	flat := []int{20, 21, 20, 22, 20, 21, 20, 20}
	tests := []struct {
		name        string
		samples     []Sample
		wantOK      bool
		wantChecked bool
		wantWhy     string
	}{
		{name: "steady, with garbage-collector noise", samples: series([]int64{40, 60, 70, 72, 68, 71, 73, 70}, flat),
			wantOK: true, wantChecked: true, wantWhy: "no growth: RSS +1.4%, goroutines -2 from the second to the last quarter"},
		{name: "memory grows", samples: series([]int64{40, 50, 60, 70, 80, 90, 100, 110}, flat),
			wantChecked: true, wantWhy: "RSS grew 57.1% from the second to the last quarter: must be at most 10%"},
		{name: "goroutines leak", samples: series([]int64{70, 70, 70, 70, 70, 70, 70, 70}, []int{20, 30, 40, 50, 60, 70, 80, 90}),
			wantChecked: true, wantWhy: "goroutines grew 80.0% from the second to the last quarter: must be at most 5%"},
		{name: "too few samples", samples: series([]int64{70, 70, 70}, []int{20, 20, 20}),
			wantWhy: "3 samples: at least 8 are needed to compare quarters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := growthOf(tt.samples)
			got := []any{g.OK, g.Checked, g.Why}
			if diff := cmp.Diff([]any{tt.wantOK, tt.wantChecked, tt.wantWhy}, got); diff != "" {
				t.Errorf("ok, checked, why (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
process_cpu_seconds_total 12.5
process_resident_memory_bytes 1.048576e+08
flowscaler_source_read_duration_seconds_count{connection="a",kind="redis-stream"} 10
flowscaler_source_read_duration_seconds_count{connection="b",kind="redis-stream"} 5
flowscaler_source_read_duration_seconds_count{connection="a",kind="redis-list"} 7
flowscaler_source_read_duration_seconds_sum{connection="a",kind="redis-stream"} 0.5
flowscaler_grpc_request_duration_seconds_bucket{method="GetMetrics",le="0.001"} 90
flowscaler_grpc_request_duration_seconds_bucket{method="GetMetrics",le="+Inf"} 100
flowscaler_grpc_request_duration_seconds_bucket{method="IsActive",le="0.001"} 3
`
	got, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"go_goroutines": 42, "process_cpu_seconds_total": 12.5, "process_resident_memory_bytes": 104857600, readsSeries: 15,
		bucketPrefix + "0.001": 90, bucketPrefix + "+Inf": 100}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, err := parseMetrics(strings.NewReader("up 1\n")); err == nil || err.Error() != "metrics: no go_goroutines series" {
		t.Errorf("error = %v, want metrics: no go_goroutines series", err)
	}
}

func TestParseProc(t *testing.T) {
	tests := []struct {
		name    string
		parse   func() (int64, error)
		want    int64
		wantErr string
	}{
		{name: "utime + stime after a command name with spaces",
			parse: func() (int64, error) {
				d, err := parseStatCPU("1234 (flow scaler) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 0 0")
				return int64(d), err
			},
			want: int64(3 * time.Second)},
		{name: "VmRSS in bytes", parse: func() (int64, error) { return parseStatusRSS("Name:\tflowscaler\nVmRSS:\t  102400 kB\nThreads:\t8\n") }, want: 100 << 20},
		{name: "no VmRSS", parse: func() (int64, error) { return parseStatusRSS("Name:\tx\n") }, wantErr: "/proc status: no VmRSS line"},
		{name: "XINFO GROUPS calls", parse: func() (int64, error) {
			return parseXinfoGroupsCalls("# Commandstats\r\ncmdstat_xadd:calls=9,usec=1\r\ncmdstat_xinfo|groups:calls=321,usec=5,usec_per_call=0.02\r\n")
		}, want: 321},
		{name: "XINFO GROUPS never called", parse: func() (int64, error) { return parseXinfoGroupsCalls("# Commandstats\r\n") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.parse()
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if diff := cmp.Diff([]any{tt.want, tt.wantErr}, []any{got, gotErr}); diff != "" {
				t.Errorf("value, error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBucketQuantile(t *testing.T) {
	before := map[float64]float64{0.001: 10, 0.005: 10, 0.01: 10}
	after := map[float64]float64{0.001: 100, 0.005: 108, 0.01: 110}
	tests := []struct {
		name          string
		before, after map[float64]float64
		q             float64
		want          float64
	}{
		{name: "median in the first bucket", before: before, after: after, q: 0.5, want: 0.001},
		{name: "p99 in the last", before: before, after: after, q: 0.99, want: 0.01},
		{name: "p90 at a bucket's edge", before: before, after: after, q: 0.9, want: 0.001},
		{name: "no calls", before: after, after: after, q: 0.99, want: 0},
		{name: "past the last finite bucket", before: map[float64]float64{}, after: map[float64]float64{0.001: 1, math.Inf(1): 10}, q: 0.99, want: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := bucketQuantile(tt.before, tt.after, tt.q); got != tt.want {
				t.Errorf("bucketQuantile(q=%g) = %g, want %g", tt.q, got, tt.want)
			}
		})
	}
}
