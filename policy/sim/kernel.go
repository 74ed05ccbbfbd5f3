package sim

import (
	"math"
	"time"
)

// lognormal describes a processing-time distribution by its mean (seconds)
// and coefficient of variation: σ² = ln(1 + cv²), μ = ln(mean) − σ²/2.
type lognormal struct{ mu, sigma float64 }

func newLognormal(mean, cv float64) lognormal {
	s2 := math.Log1p(cv * cv)
	return lognormal{mu: math.Log(mean) - s2/2, sigma: math.Sqrt(s2)}
}

// quantile is exp(μ + σ·z(p)), z the standard normal quantile √2·erfinv(2p − 1).
func (l lognormal) quantile(p float64) float64 {
	return math.Exp(l.mu + l.sigma*math.Sqrt2*math.Erfinv(2*p-1))
}

// p95 of the distribution as a duration.
func (l lognormal) p95() time.Duration {
	return time.Duration(l.quantile(0.95) * float64(time.Second))
}

// kernel spreads the messages started during one 1 s step over the steps
// that follow: done[k] is the fraction completing during step k (k = 0 is
// the step they started in) and busy[k] the average slots they occupy
// during step k. Start times are uniform within the step, so with X the
// processing time and U ~ U(0, 1):
//
//	done[k] = P(k <= U + X < k+1)
//	busy[k] = E[ |[U, U+X) ∩ [k, k+1)| ]        Σ busy = E[X] (Little's law)
//
// Both are computed by quadrature over 48 quantiles of X and 8 points of U,
// then scaled so that Σ done = 1 and Σ busy = mean exactly.
type kernel struct {
	done []float64
	busy []float64
}

const (
	kernelQuantiles = 48
	kernelPhases    = 8
	maxKernelSteps  = 600 // processing times are capped at 10 minutes of spread
)

func newKernel(mean, cv float64) kernel {
	l := newLognormal(mean, cv)
	var k kernel
	w := 1.0 / (kernelQuantiles * kernelPhases)
	sumX := 0.0
	for i := range kernelQuantiles {
		x := l.quantile((float64(i) + 0.5) / kernelQuantiles)
		for j := range kernelPhases {
			u := (float64(j) + 0.5) / kernelPhases
			end := min(u+x, maxKernelSteps-1e-9)
			sumX += (end - u) * w
			last := int(end)
			k.grow(last + 1)
			k.done[last] += w
			for s := 0; s <= last; s++ {
				lo, hi := max(u, float64(s)), min(end, float64(s+1))
				if hi > lo {
					k.busy[s] += (hi - lo) * w
				}
			}
		}
	}
	if sumX > 0 {
		for s := range k.busy {
			k.busy[s] *= mean / sumX
		}
	}
	return k
}

func (k *kernel) grow(n int) {
	for len(k.done) < n {
		k.done = append(k.done, 0)
		k.busy = append(k.busy, 0)
	}
}

// kernels caches kernels by processing time, quantised to 0.5% steps so that
// a slowly varying processing time reuses a handful of them.
type kernels struct {
	cv    float64
	cache map[int]*kernel
}

func (ks *kernels) get(mean float64) (*kernel, float64) {
	key := int(math.Round(math.Log(mean) * 200))
	q := math.Exp(float64(key) / 200)
	if k, ok := ks.cache[key]; ok {
		return k, q
	}
	k := newKernel(q, ks.cv)
	if ks.cache == nil {
		ks.cache = map[int]*kernel{}
	}
	ks.cache[key] = &k
	return &k, q
}
