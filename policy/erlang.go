package policy

import "math"

// waitTail is the share of messages allowed to wait longer than the target
// age when slots are sized by Erlang C.
const waitTail = 0.01

// erlangLimit bounds the offered load sized by Erlang C; above it the
// simple form is used (the recursion is O(slots)).
const erlangLimit = 1e5

// erlangSlots is the fewest slots N > A for which an M/G/N queue with
// offered load A = λ·W keeps the share of messages waiting longer than T
// under 1%, or limit when that needs limit slots or more:
//
//	P(wait > T) ≈ C(N, A) · exp(−(N − A) · T ÷ (W · k)) <= 0.01
//	k = (1 + cs²) ÷ 2                                     (Allen–Cunneen; Poisson arrivals)
//	B(0) = 1,  B(n) = A·B(n−1) ÷ (n + A·B(n−1))           (Erlang B)
//	C(N, A) = N·B(N) ÷ (N − A·(1 − B(N)))                (Erlang C)
//
// with W and T in seconds and cs² the squared coefficient of variation of
// the processing time. When T is many processing times long, N is barely
// above A: the queue absorbs the randomness and pods run nearly full.
func erlangSlots(a, w, t, cs2, limit float64) float64 {
	if !(a > 0) || a > erlangLimit || !(w > 0) || !(t > 0) {
		return limit
	}
	k := (1 + cs2) / 2
	b := 1.0
	for n := 1.0; n < limit; n++ {
		b = a * b / (n + a*b)
		if n <= a {
			continue
		}
		c := n * b / (n - a*(1-b))
		if c*math.Exp(-(n-a)*t/(w*k)) <= waitTail {
			return n
		}
	}
	return limit
}

// serviceSCV is cs², the squared coefficient of variation of the processing
// time, from its mean W and 95th percentile p95, taking the distribution as
// lognormal with shape σ:
//
//	ln(p95 ÷ W) = 1.645·σ − σ²/2   →   σ = (3.29 − √(3.29² − 8·ln(p95 ÷ W))) ÷ 2
//	cs² = exp(σ²) − 1
//
// σ is capped at 1.645 (p95 ≥ 3.87·W: a very long tail). Unknown p95 (<= 0)
// gives 1, the exponential distribution's.
func serviceSCV(w, p95 float64) float64 {
	if !(p95 > 0) || !(w > 0) || math.IsInf(p95, 0) {
		return 1
	}
	r := math.Log(p95 / w)
	if r <= 0 {
		return 0
	}
	sigma := 1.645
	if disc := 3.29*3.29 - 8*r; disc > 0 {
		sigma = (3.29 - math.Sqrt(disc)) / 2
	}
	return math.Expm1(sigma * sigma)
}
