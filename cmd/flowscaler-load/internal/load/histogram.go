package load

import (
	"sync/atomic"
	"time"
)

// Histogram records latencies concurrently: 1 µs buckets up to 10 ms and
// 100 µs buckets up to 1 s, so a p99 near the 2 ms goal is exact to 1 µs
// and a soak of millions of calls costs 160 KB, not a slice of samples.
// Longer calls land in the last bucket; Max keeps their exact value.
type Histogram struct {
	buckets [fineBuckets + coarseBuckets + 1]atomic.Int64
	count   atomic.Int64
	max     atomic.Int64
}

const (
	fineWidth     = time.Microsecond
	fineBuckets   = int(10 * time.Millisecond / fineWidth)
	coarseWidth   = 100 * time.Microsecond
	coarseBuckets = int((time.Second - 10*time.Millisecond) / coarseWidth)
)

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	h.buckets[bucketOf(d)].Add(1)
	h.count.Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

func bucketOf(d time.Duration) int {
	switch {
	case d < 0:
		return 0
	case d < time.Duration(fineBuckets)*fineWidth:
		return int(d / fineWidth)
	case d < time.Second:
		return fineBuckets + int((d-time.Duration(fineBuckets)*fineWidth)/coarseWidth)
	default:
		return fineBuckets + coarseBuckets
	}
}

// upperBound is the largest latency bucket i holds (its exclusive end);
// quantiles report it, so they never understate.
func upperBound(i int) time.Duration {
	if i < fineBuckets {
		return time.Duration(i+1) * fineWidth
	}
	return time.Duration(fineBuckets)*fineWidth + time.Duration(i-fineBuckets+1)*coarseWidth
}

// Count is the number of recorded latencies.
func (h *Histogram) Count() int64 { return h.count.Load() }

// Max is the largest recorded latency.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Quantile is the smallest bucket bound at or below which a fraction q of
// the latencies fall (nearest rank: the ceil(q·n)-th smallest), capped at
// Max; 0 when nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.count.Load()
	if n == 0 {
		return 0
	}
	rank := int64(q * float64(n))
	if float64(rank) < q*float64(n) {
		rank++
	}
	rank = max(rank, 1)
	var seen int64
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		if seen >= rank {
			if i == fineBuckets+coarseBuckets {
				// Past a second: only the maximum bounds it.
				return h.Max()
			}
			return min(upperBound(i), h.Max())
		}
	}
	return h.Max()
}
