package sources

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowscaler/flowscaler/sources/redistest"
)

func TestInstrument(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewPedanticRegistry()
	r, err := Instrument(newTestRedis(t, srv.URL(), RedisOptions{}), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)

	// A success, a broker-side failure, and a connection name from outside
	// our config, which must not become a label value.
	if _, err := r.Read(ctx, Query{Kind: RedisList, Connection: testConn, Name: "jobs"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(ctx, Query{Kind: RedisStream, Connection: testConn, Name: "missing", Group: "g"}); err == nil {
		t.Fatal("read of a missing stream succeeded")
	}
	if _, err := r.Read(ctx, Query{Kind: RedisList, Connection: "typo-conn", Name: "jobs"}); err == nil {
		t.Fatal("read on an unknown connection succeeded")
	}

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	wantErrors := map[string]float64{
		"kind=redis-stream,connection=local":        1,
		"kind=redis-list,connection=(unconfigured)": 1,
	}
	wantDurations := map[string]float64{
		"kind=redis-list,connection=local":          1,
		"kind=redis-stream,connection=local":        1,
		"kind=redis-list,connection=(unconfigured)": 1,
	}
	if d := cmp.Diff(wantErrors, series(mfs, "flowscaler_source_read_errors_total")); d != "" {
		t.Errorf("errors_total (-want +got):\n%s", d)
	}
	if d := cmp.Diff(wantDurations, series(mfs, "flowscaler_source_read_duration_seconds")); d != "" {
		t.Errorf("duration_seconds sample counts (-want +got):\n%s", d)
	}

	if problems, err := promlint.NewWithMetricFamilies(mfs).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// series maps "kind=K,connection=C" to each series' value of a counter
// family, or its sample count for a histogram.
func series(mfs []*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			k := "kind=" + label(m, "kind") + ",connection=" + label(m, "connection")
			if h := m.GetHistogram(); h != nil {
				out[k] = float64(h.GetSampleCount())
			} else {
				out[k] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestInstrumentTwiceSharesMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	r := NewRedis(RedisOptions{})
	if _, err := Instrument(r, reg); err != nil {
		t.Fatal(err)
	}
	if _, err := Instrument(r, reg); err != nil {
		t.Errorf("second Instrument on the same registry: %v", err)
	}
}

func TestInstrumentRegistrationConflict(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	// Same name, different labels: cannot be shared.
	reg.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowscaler_source_read_errors_total",
		Help: "Queue reads that failed.",
	}, []string{"queue"}))
	if _, err := Instrument(NewRedis(RedisOptions{}), reg); err == nil {
		t.Error("Instrument succeeded over a conflicting collector")
	}
	if _, err := Instrument(NewRedis(RedisOptions{}), nil); err == nil {
		t.Error("Instrument accepted a nil registerer")
	}
}
