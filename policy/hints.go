package policy

import (
	"fmt"
	"math"
	"time"
)

// hints are served next to the target: the per-pod concurrency and
// prefetch to configure the consumers with, and the cooldown in effect.
//
// The starting point is the workload kind's row of the consumer table
// (prefetch / concurrency: cpu-bound 8/4, io-bound 64/32, memory-heavy 4/2),
// or the configured Concurrency and Prefetch without a kind. Then:
//
//	io-bound:  concurrency × clamp(p95 ÷ 2W, 1, 4)   a long tail holds slots
//	                                                 on waits, not on work
//	prefetch = concurrency × (table prefetch ÷ table concurrency)
//	prefetch <= (LockDuration − p95) × concurrency ÷ W   (when a lock is known:
//	                                                 a prefetched message must be
//	                                                 finished before its lock ends)
//	prefetch >= concurrency                          (else slots stay empty)
//
// cpu-bound and memory-heavy concurrency is bounded by cores and memory,
// which the processing-time distribution does not show, so it stays.
func hints(p Params, w, p95 time.Duration) Hints {
	c, pf, basis := p.Concurrency, max(p.Prefetch, p.Concurrency), "configured"
	switch p.Kind {
	case KindCPUBound:
		c, pf, basis = 4, 8, "cpu-bound 8/4"
	case KindIOBound:
		c, pf, basis = 32, 64, "io-bound 64/32"
	case KindMemoryHeavy:
		c, pf, basis = 2, 4, "memory-heavy 4/2"
	}
	ratio := float64(pf) / float64(c)
	if p.Kind == KindIOBound && p95 > 0 && w > 0 {
		if tail := float64(p95) / float64(2*w); tail > 1 {
			f := min(tail, 4)
			c = int(min(math.Ceil(float64(c)*f), 1e6))
			basis += fmt.Sprintf(", concurrency ×%.2g for p95 %v = %.2g × W", f, round(p95), float64(p95)/float64(w))
		}
	}
	pf = int(min(math.Ceil(float64(c)*ratio), 1e6))
	if p.LockDuration > 0 && w > 0 {
		bound := (p.LockDuration - p95).Seconds() * float64(c) / w.Seconds()
		if bound < float64(pf) {
			pf = int(max(math.Floor(bound), 0))
			basis += fmt.Sprintf(", prefetch within lock %v", p.LockDuration)
		}
	}
	if pf < c {
		pf = c
	}
	return Hints{Concurrency: c, Prefetch: pf, Cooldown: p.ScaleDownCooldown, Basis: basis}
}
