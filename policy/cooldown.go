package policy

import (
	"sort"
	"time"
)

// stabilise returns the replicas to serve, when the recommendation that
// sets them expires, and the recommendations to remember:
//
//	Replicas  = max{ r.Replicas : now − cooldown < r.At <= now, r.Rate <= 2·λ }   (now = cur.At)
//	HeldUntil = At of the newest recommendation with that maximum + cooldown
//
// so scale-up is immediate and scale-down waits out the cooldown. The
// cooldown protects against dips of the arrival rate; a recommendation made
// for more than twice today's stable rate λ (a burst that has ended: the
// mirror of panic mode's threshold) is forgotten at once. With
// cooldown 0 only cur is kept. Recommendations after now (the clock went
// backwards) are dropped. A recommendation that is not above a later one can
// never be the maximum again, so it is dropped too: the kept list strictly
// decreases in Replicas, its first entry is the maximum, and its length is
// bounded by both the number of distinct replica counts and the decisions
// in one cooldown.
func stabilise(prev []Recommendation, cur Recommendation, cooldown time.Duration) (int, time.Time, []Recommendation) {
	kept := make([]Recommendation, 0, len(prev)+1)
	if cooldown > 0 {
		start := cur.At.Add(-cooldown)
		for _, r := range prev {
			if r.At.After(start) && !r.At.After(cur.At) && !(r.Rate > 2*cur.Rate) {
				kept = append(kept, r)
			}
		}
		sort.SliceStable(kept, func(i, j int) bool { return kept[i].At.Before(kept[j].At) })
	}
	kept = append(kept, cur)
	out := kept[:0] // in place: out never overtakes the loop
	for _, r := range kept {
		for len(out) > 0 && out[len(out)-1].Replicas <= r.Replicas {
			out = out[:len(out)-1]
		}
		out = append(out, r)
	}
	return out[0].Replicas, out[0].At.Add(cooldown), out
}
