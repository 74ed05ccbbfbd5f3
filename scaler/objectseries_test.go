package scaler

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestObjectSeries(t *testing.T) {
	tests := []struct {
		name   string
		change func(m *Metrics)
		want   string
	}{
		{
			name: "known gauges only, one-hot reason and source, sorted across namespaces",
			change: func(m *Metrics) {
				m.objects.update("b", "jobs", func(v *objectValues) {
					v.set(gReplicas, 3)
					v.setKnown(gOldestAge, 0, false)
					v.reason, v.from = "scale-up", fromMeasured
				})
				m.objects.update("a", "orders", func(v *objectValues) {
					v.set(gReplicas, 7)
					v.setKnown(gOldestAge, 12.5, true)
					v.reason, v.from = "steady", fromConfigured
				})
			},
			want: `
# HELP flowscaler_desired_replicas Replica target served to KEDA.
# TYPE flowscaler_desired_replicas gauge
flowscaler_desired_replicas{namespace="a",scaledobject="orders"} 7
flowscaler_desired_replicas{namespace="b",scaledobject="jobs"} 3
# HELP flowscaler_oldest_message_age_seconds Age of the oldest undelivered message; absent when unknown.
# TYPE flowscaler_oldest_message_age_seconds gauge
flowscaler_oldest_message_age_seconds{namespace="a",scaledobject="orders"} 12.5
# HELP flowscaler_decision_reason 1 for the class of the current decision: scale-up, steady, holding, idle, stalled, clamped-max or stale.
# TYPE flowscaler_decision_reason gauge
flowscaler_decision_reason{namespace="a",reason="clamped-max",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="holding",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="idle",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="scale-up",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="stale",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="stalled",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="steady",scaledobject="orders"} 1
flowscaler_decision_reason{namespace="b",reason="clamped-max",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="holding",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="idle",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="scale-up",scaledobject="jobs"} 1
flowscaler_decision_reason{namespace="b",reason="stale",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="stalled",scaledobject="jobs"} 0
flowscaler_decision_reason{namespace="b",reason="steady",scaledobject="jobs"} 0
# HELP flowscaler_processing_time_from 1 for where the processing time came from (measured, last-good or configured), 0 for the others.
# TYPE flowscaler_processing_time_from gauge
flowscaler_processing_time_from{from="configured",namespace="a",scaledobject="orders"} 1
flowscaler_processing_time_from{from="configured",namespace="b",scaledobject="jobs"} 0
flowscaler_processing_time_from{from="last-good",namespace="a",scaledobject="orders"} 0
flowscaler_processing_time_from{from="last-good",namespace="b",scaledobject="jobs"} 0
flowscaler_processing_time_from{from="measured",namespace="a",scaledobject="orders"} 0
flowscaler_processing_time_from{from="measured",namespace="b",scaledobject="jobs"} 1
`,
		},
		{
			name: "a value that becomes unknown loses its series",
			change: func(m *Metrics) {
				m.objects.update("a", "orders", func(v *objectValues) { v.setKnown(gOldestAge, 4, true) })
				m.objects.update("a", "orders", func(v *objectValues) { v.setKnown(gOldestAge, 0, false) })
			},
			want: ``,
		},
		{
			name: "a stale answer before any decision exports the reason alone",
			change: func(m *Metrics) {
				m.staleAnswer(Object{Namespace: "a", Name: "orders"})
			},
			want: `
# HELP flowscaler_decision_reason 1 for the class of the current decision: scale-up, steady, holding, idle, stalled, clamped-max or stale.
# TYPE flowscaler_decision_reason gauge
flowscaler_decision_reason{namespace="a",reason="clamped-max",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="holding",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="idle",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="scale-up",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="stale",scaledobject="orders"} 1
flowscaler_decision_reason{namespace="a",reason="stalled",scaledobject="orders"} 0
flowscaler_decision_reason{namespace="a",reason="steady",scaledobject="orders"} 0
`,
		},
		{
			name: "a forgotten object has no series",
			change: func(m *Metrics) {
				m.objects.update("a", "orders", func(v *objectValues) { v.set(gReplicas, 2); v.reason, v.from = "steady", fromMeasured })
				m.forget(Object{Namespace: "a", Name: "orders"})
			},
			want: ``,
		},
	}
	names := []string{"flowscaler_desired_replicas", "flowscaler_oldest_message_age_seconds", "flowscaler_decision_reason", "flowscaler_processing_time_from"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			m := NewMetrics(reg)
			tt.change(m)
			if err := testutil.GatherAndCompare(reg, strings.NewReader(tt.want), names...); err != nil {
				t.Error(err)
			}
		})
	}
}

// BenchmarkGatherObjects is one scrape's Gather of 10,000 objects' series
// (about 25 each).
func BenchmarkGatherObjects(b *testing.B) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	for i := range 10000 {
		m.objects.update(fmt.Sprintf("ns-%d", i%10), fmt.Sprintf("consumer-%05d", i), func(v *objectValues) {
			for g := range numGauges {
				v.set(g, float64(i))
			}
			v.reason, v.from = "steady", fromConfigured
		})
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
