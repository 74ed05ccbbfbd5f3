package keda

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Deterministic set-ups. Entries "hours old" are stamped three hours in the
// past, so oldestAge/targetAge is far above 4 and urgency is exactly 4. Each
// object is fresh (first evaluation, no arrival rate yet), so the target is
// the drain term alone:
//
//	replicas = ceil((depth / targetAge_s) × processingTime_s × urgency / concurrency)
//
// floored at ceil(pending / prefetch), at least 1 when active, within
// [minReplicas, maxReplicas].
const hoursOld = 3 * time.Hour

// drainParams is targetAge 10s, processingTime 2s, concurrency 2 (prefetch
// and the rest from policy.defaults).
var drainParams = map[string]string{"targetAge": "10s", "processingTime": "2s", "concurrency": "2"}

// TestMetricSpec: KEDA's NewExternalScaler turns flowscaler's single
// MetricSpec (TargetSizeFloat 1) into one External metric "s0-<name>" with an
// AverageValue target of 1, so the HPA's desired replicas equal the value.
func TestMetricSpec(t *testing.T) {
	env := startEnv(t, daemonOptions{})
	s := newExternalScaler(t, env.daemon, "orders", streamMetadata("orders", "workers", drainParams))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	specs := s.GetMetricSpecForScaling(ctx)
	if len(specs) != 1 {
		t.Fatalf("GetMetricSpecForScaling returned %d specs %+v, want exactly 1", len(specs), specs)
	}
	spec := specs[0]
	if spec.Type != v2.ExternalMetricSourceType || spec.External == nil {
		t.Fatalf("spec = %+v, want an External metric", spec)
	}
	// flowscaler names the metric flowscaler-<namespace>-<name>; KEDA adds
	// the trigger index.
	if got, want := spec.External.Metric.Name, "s0-flowscaler-"+namespace+"-orders"; got != want {
		t.Errorf("metric name = %q, want %q", got, want)
	}
	target := spec.External.Target
	if target.Type != v2.AverageValueMetricType {
		t.Errorf("target type = %q, want %q", target.Type, v2.AverageValueMetricType)
	}
	if target.AverageValue == nil {
		t.Fatalf("target.AverageValue is nil; target = %+v", target)
	}
	if want := resource.MustParse("1"); target.AverageValue.Cmp(want) != 0 {
		t.Errorf("target.AverageValue = %s, want 1", target.AverageValue)
	}
	if target.Value != nil || target.AverageUtilization != nil {
		t.Errorf("target has Value %v / AverageUtilization %v set, want only AverageValue", target.Value, target.AverageUtilization)
	}
}

// TestStreamReplicaTarget: GetMetricsAndActivity returns one value, the
// deterministic replica target, and the activity.
func TestStreamReplicaTarget(t *testing.T) {
	env := startEnv(t, daemonOptions{})

	t.Run("100 undelivered hours-old entries", func(t *testing.T) {
		// 100/10s × 2s × 4 / 2 = 40.
		addOldEntries(t, env.rdb, "backlog", 100, hoursOld)
		createGroup(t, env.rdb, "backlog", "workers", "0")
		s := newExternalScaler(t, env.daemon, "backlog", streamMetadata("backlog", "workers", drainParams))
		ev := mustEvaluate(t, s, metricName(t, s))
		if ev.Value != 40 || !ev.Active {
			t.Errorf("GetMetricsAndActivity = (%v, active=%v), want (40, active=true)", ev.Value, ev.Active)
		}
	})

	t.Run("in-flight floor", func(t *testing.T) {
		// 40 hours-old entries, 30 delivered and unacknowledged: lag 10,
		// pending 30. Drain 10/10s × 2s × 4 / 2 = 4; the in-flight floor
		// ceil(30 / prefetch 3) = 10 wins: that many pods hold the work.
		addOldEntries(t, env.rdb, "inflight", 40, hoursOld)
		createGroup(t, env.rdb, "inflight", "workers", "0")
		deliver(t, env.rdb, "inflight", "workers", 30)
		md := streamMetadata("inflight", "workers", drainParams)
		md["prefetch"] = "3"
		s := newExternalScaler(t, env.daemon, "inflight", md)
		ev := mustEvaluate(t, s, metricName(t, s))
		if ev.Value != 10 || !ev.Active {
			t.Errorf("GetMetricsAndActivity = (%v, active=%v), want (10, active=true): the floor ceil(pending 30 / prefetch 3) = 10 over the drain term 4", ev.Value, ev.Active)
		}
	})

	t.Run("empty stream", func(t *testing.T) {
		createGroup(t, env.rdb, "empty", "workers", "$")
		s := newExternalScaler(t, env.daemon, "empty", streamMetadata("empty", "workers", drainParams))
		ev := mustEvaluate(t, s, metricName(t, s))
		if ev.Value != 0 || ev.Active {
			t.Errorf("GetMetricsAndActivity = (%v, active=%v), want (0, active=false)", ev.Value, ev.Active)
		}
	})
}

// TestListReplicaTarget: a redis-list object. The list's length is the depth;
// a list has no message age, so urgency is 1.
func TestListReplicaTarget(t *testing.T) {
	env := startEnv(t, daemonOptions{})
	listMD := func(list string) map[string]string {
		return map[string]string{
			"source": "redis-list", "connection": "local", "list": list,
			"targetAge": "10s", "processingTime": "3s", "concurrency": "2",
		}
	}

	t.Run("60 items", func(t *testing.T) {
		// 60/10s × 3s × 1 / 2 = 9 (urgency 4 would give 36).
		items := make([]any, 60)
		for i := range items {
			items[i] = fmt.Sprintf("job-%d", i)
		}
		if err := env.rdb.RPush(context.Background(), "jobs", items...).Err(); err != nil {
			t.Fatalf("RPUSH jobs: %v", err)
		}
		s := newExternalScaler(t, env.daemon, "jobs", listMD("jobs"))
		ev := mustEvaluate(t, s, metricName(t, s))
		if ev.Value != 9 || !ev.Active {
			t.Errorf("GetMetricsAndActivity = (%v, active=%v), want (9, active=true)", ev.Value, ev.Active)
		}
	})

	t.Run("empty list", func(t *testing.T) {
		// A list that does not exist is an empty list to Redis (LLEN 0).
		s := newExternalScaler(t, env.daemon, "no-jobs", listMD("no-jobs"))
		ev := mustEvaluate(t, s, metricName(t, s))
		if ev.Value != 0 || ev.Active {
			t.Errorf("GetMetricsAndActivity = (%v, active=%v), want (0, active=false)", ev.Value, ev.Active)
		}
	})
}

// TestBadMetadata: metadata flowscaler refuses reaches KEDA as a gRPC error
// with code InvalidArgument whose message names the key, the value and the
// rule. KEDA's GetMetricSpecForScaling swallows the error (it logs it and
// returns no spec); GetMetricsAndActivity surfaces it.
func TestBadMetadata(t *testing.T) {
	env := startEnv(t, daemonOptions{})

	cases := []struct {
		name string
		md   map[string]string
		want []string // substrings of the status message
	}{
		{
			name: "bad-duration",
			md:   streamMetadata("orders", "workers", map[string]string{"targetAge": "5x"}),
			want: []string{`targetAge = "5x": must be a duration like 30s`},
		},
		{
			name: "unknown-key",
			md:   streamMetadata("orders", "workers", map[string]string{"colour": "blue"}),
			want: []string{"colour", `"blue"`, "unknown key"},
		},
		{
			name: "missing-stream",
			md: map[string]string{
				"source": "redis-stream", "connection": "local", "group": "workers",
			},
			want: []string{`stream = ""`, "required"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newExternalScaler(t, env.daemon, tc.name, tc.md)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// The spec depends on the name alone and is served, so that KEDA
			// makes the HPA and reports every refusal below as an event.
			specs := s.GetMetricSpecForScaling(ctx)
			if len(specs) != 1 || specs[0].External == nil || specs[0].External.Metric.Name != "s0-flowscaler-"+namespace+"-"+tc.name {
				t.Fatalf("GetMetricSpecForScaling = %+v, want the object's one External metric", specs)
			}

			values, active, err := s.GetMetricsAndActivity(ctx, specs[0].External.Metric.Name)
			if err == nil {
				t.Fatalf("GetMetricsAndActivity = (%+v, %v, nil), want an InvalidArgument error", values, active)
			}
			st, ok := status.FromError(err)
			if !ok {
				t.Fatalf("error %v (%T) carries no gRPC status", err, err)
			}
			if st.Code() != codes.InvalidArgument {
				t.Errorf("code = %s, want InvalidArgument (message %q)", st.Code(), st.Message())
			}
			for _, w := range tc.want {
				if !strings.Contains(st.Message(), w) {
					t.Errorf("message %q does not contain %q", st.Message(), w)
				}
			}
		})
	}
}
