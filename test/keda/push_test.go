package keda

import (
	"context"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/redis/go-redis/v9"
	v2 "k8s.io/api/autoscaling/v2"
)

// pushLatencyBound is the acceptance criterion: activity reaches KEDA within
// this long of the first message.
const pushLatencyBound = time.Second

// guard bounds waits that are not under test, so that a hang fails instead
// of running into go test's timeout.
const guard = 15 * time.Second

// TestPushActivity: KEDA's external-push scaler (Run) receives false for an
// empty stream at once, then true within 1 s of the first XADD. It also
// receives the metric spec from StreamMetricSpec.
func TestPushActivity(t *testing.T) {
	env := startEnv(t, daemonOptions{})
	createGroup(t, env.rdb, "events", "workers", "$")
	s := newExternalPushScaler(t, env.daemon, "events", streamMetadata("events", "workers", drainParams))

	ctx, cancel := context.WithCancel(context.Background())
	active := make(chan bool) // unbuffered, as KEDA's scale handler makes it
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		s.Run(ctx, active)
	}()
	t.Cleanup(func() {
		cancel()
		// Run closes the channel when it returns.
		for range active {
		}
		<-runDone
	})

	recv := func(what string) bool {
		t.Helper()
		select {
		case v, ok := <-active:
			if !ok {
				t.Fatalf("%s: KEDA closed the activity channel (Run returned)", what)
			}
			return v
		case <-time.After(guard):
			t.Fatalf("%s: nothing on the activity channel in %s", what, guard)
		}
		return false
	}

	if recv("first value") {
		t.Fatalf("first activity value = true, want false for an empty stream")
	}

	t0 := time.Now()
	if err := env.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: "events", Values: []any{"n", 1}}).Err(); err != nil {
		t.Fatalf("XADD events: %v", err)
	}
	for {
		v := recv("after XADD")
		if v {
			break
		}
		// Activity is sent on change only: a second false is a repeat.
		t.Errorf("received false again after the XADD (%s after it); StreamIsActive must send only changes", time.Since(t0))
	}
	latency := time.Since(t0)
	t.Logf("XADD → true on KEDA's channel: %s", latency)
	if latency > pushLatencyBound {
		t.Errorf("activity reached KEDA %s after the first XADD, want within %s", latency, pushLatencyBound)
	}

	// StreamMetricSpec: KEDA forwards the spec to MetricSpecChan.
	streamer, ok := s.(scalers.MetricSpecStreamer)
	if !ok {
		t.Fatalf("KEDA's push scaler %T does not implement MetricSpecStreamer", s)
	}
	select {
	case specs, ok := <-streamer.MetricSpecChan():
		if !ok {
			t.Fatalf("MetricSpecChan closed without a spec (StreamMetricSpec unimplemented or failed)")
		}
		if len(specs) != 1 || specs[0].External == nil {
			t.Fatalf("StreamMetricSpec delivered %+v, want one External metric", specs)
		}
		if got, want := specs[0].External.Metric.Name, "s0-flowscaler-"+namespace+"-events"; got != want {
			t.Errorf("streamed metric name = %q, want %q", got, want)
		}
		tgt := specs[0].External.Target
		if tgt.Type != v2.AverageValueMetricType || tgt.AverageValue == nil || tgt.AverageValue.MilliValue() != 1000 {
			t.Errorf("streamed target = %+v, want AverageValue 1", tgt)
		}
	case <-time.After(guard):
		t.Fatalf("no spec on MetricSpecChan in %s", guard)
	}
}
