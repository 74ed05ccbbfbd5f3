package keda

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// readCacheTTL and readCacheGrace are flowscaler's defaults: a good reading
// of a queue answers calls for readCacheTTL, then for up to readCacheGrace
// more while a read in the background replaces it, so only calls that start
// later than both after the last good reading surely read the source.
const readCacheTTL, readCacheGrace = time.Second, time.Second

// TestSourceOutage: with redis-server stopped, KEDA keeps getting the last
// good answer (same value, same activity; never 0 or inactive because of the
// outage) until staleAfter, then an Unavailable error so that KEDA's fallback
// can take over; the first poll after Redis is back succeeds with a fresh
// value.
func TestSourceOutage(t *testing.T) {
	const staleAfter = 3 * time.Second
	env := startEnv(t, daemonOptions{StaleAfter: staleAfter})

	// scaleDownCooldown 0s: the fresh value after the outage may be lower
	// than the one before without being held up.
	md := streamMetadata("outage", "workers", map[string]string{
		"targetAge": "10s", "processingTime": "2s", "concurrency": "2", "scaleDownCooldown": "0s",
	})
	addOldEntries(t, env.rdb, "outage", 100, hoursOld)
	createGroup(t, env.rdb, "outage", "workers", "0")
	s := newExternalScaler(t, env.daemon, "outage", md)
	metric := metricName(t, s) // GetMetricSpec reads no queue

	// The object's first read of the queue happens during this call, so the
	// last good reading was taken between goodStart and goodEnd.
	goodStart := time.Now()
	good := mustEvaluate(t, s, metric)
	goodEnd := time.Now()
	if good.Value != 40 || !good.Active {
		t.Fatalf("before the outage: GetMetricsAndActivity = (%v, active=%v), want (40, active=true)", good.Value, good.Active)
	}

	env.redis.Stop()
	stoppedAt := time.Now()

	// A call that returned before goodStart+staleAfter was answered within
	// staleAfter of the last good reading: it must be that reading. One that
	// also started after goodEnd+readCacheTTL+readCacheGrace read the stopped
	// Redis, so its answer came from flowscaler's stale path rather than the
	// read cache.
	windowEnd := goodStart.Add(staleAfter)
	cacheExpiry := goodEnd.Add(readCacheTTL + readCacheGrace)
	var calls []string
	var fromStalePath int
	var unavailable error
	for deadline := stoppedAt.Add(staleAfter + 30*time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		start := time.Now()
		ev := evaluate(t, s, metric)
		end := time.Now()
		calls = append(calls, fmt.Sprintf("call at +%s into the outage took %s: value %v active %v err %v",
			start.Sub(stoppedAt).Round(time.Millisecond), end.Sub(start).Round(time.Millisecond), ev.Value, ev.Active, ev.Err))
		inWindow := end.Before(windowEnd)
		if ev.Err != nil {
			if inWindow {
				t.Errorf("%s into the outage (within staleAfter %s of the last good reading): error %v, want the last good answer (40, active=true)",
					end.Sub(stoppedAt).Round(time.Millisecond), staleAfter, ev.Err)
				continue
			}
			unavailable = ev.Err
			break
		}
		if ev.Value != good.Value || ev.Active != good.Active {
			t.Errorf("%s into the outage: GetMetricsAndActivity = (%v, active=%v), want the last good (%v, active=%v)",
				end.Sub(stoppedAt).Round(time.Millisecond), ev.Value, ev.Active, good.Value, good.Active)
		}
		if inWindow && start.After(cacheExpiry) {
			fromStalePath++
		}
	}
	t.Logf("during the outage:\n%s", strings.Join(calls, "\n"))
	if fromStalePath == 0 {
		t.Errorf("no call that read the stopped Redis (started > readCacheTTL + readCacheGrace %s after the good reading) was answered within staleAfter %s: the last good answer was never served from the stale path (see the calls above)",
			readCacheTTL+readCacheGrace, staleAfter)
	}
	if unavailable == nil {
		t.Fatalf("still no error %s after redis-server stopped (staleAfter %s)", time.Since(stoppedAt).Round(time.Millisecond), staleAfter)
	}
	if st, ok := status.FromError(unavailable); !ok || st.Code() != codes.Unavailable {
		t.Errorf("after staleAfter: error %v (code %s), want code Unavailable", unavailable, status.Code(unavailable))
	} else {
		t.Logf("after staleAfter: %s", st.Message())
	}

	// Redis returns empty (redistest runs it without persistence), now with
	// 110 hours-old entries: drain 110/10s × 2s × 4 / 2 = 44 plus whatever
	// the 10 new entries add as arrivals; only a fresh reading can give more
	// than the 40 served before (a lower backlog would be held by the
	// cooldown, which could not tell a fresh answer from a stale one).
	env.redis.Start()
	rdb := env.redis.Client(t) // a new client: the old one's connections died with the server
	addOldEntries(t, rdb, "outage", 110, hoursOld)
	createGroup(t, rdb, "outage", "workers", "0")

	ev := evaluate(t, s, metric)
	if ev.Err != nil {
		t.Fatalf("first call after redis-server is back: %v, want success", ev.Err)
	}
	if ev.Value < 44 || !ev.Active {
		t.Errorf("first call after redis-server is back: (%v, active=%v), want a fresh value of at least 44, active=true", ev.Value, ev.Active)
	}
}
