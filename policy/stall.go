package policy

import (
	"fmt"
	"math"
	"time"
)

// stall says why scaling cannot help, and what to do about it.
type stall struct {
	reason string // "" when scaling can help
	poison bool   // a message blocks the queue: the stall ends when it is dead-lettered
	cap    int    // > 0: never serve more (a saturated dependency)
	note   string // what the plan is, for the reason
}

// settle tracks the ready replicas and returns the count, when it last
// changed, and the settled measurements: once the count has not changed
// for half a RateWindow (the consumers' rates then reflect it), the
// consumption rate and the measured processing time at that count replace
// any earlier point at the same count. Points older than
// max(4 × ScaleDownCooldown, 20m) are forgotten (then scaling past a
// saturation point is probed again); at most 64 are kept.
func settle(st State, in Inputs, r rates, now time.Time, p Params) (int, time.Time, []Point) {
	keepFor := max(4*p.ScaleDownCooldown, 20*time.Minute)
	ready, since := st.Ready, st.ReadySince
	if in.ReadyReplicas > 0 && (in.ReadyReplicas != ready || since.IsZero() || since.After(now)) {
		ready, since = in.ReadyReplicas, now
	}
	settled := in.ReadyReplicas > 0 && ready == in.ReadyReplicas && now.Sub(since) >= p.RateWindow/2 &&
		!math.IsNaN(r.consumption) && in.ProcessingTime > 0
	out := make([]Point, 0, len(st.Points)+1)
	for _, x := range st.Points {
		if x.At.After(now) || !x.At.After(now.Add(-keepFor)) || (settled && x.Replicas == ready) {
			continue
		}
		out = append(out, x)
	}
	if settled {
		out = append(out, Point{At: now, Replicas: ready, Rate: min(r.consumption, huge), W: in.ProcessingTime,
			Busy: in.Depth >= float64(ready)*float64(p.Concurrency)})
	}
	if len(out) > 64 {
		out = out[len(out)-64:]
	}
	if len(out) == 0 {
		out = nil
	}
	return ready, since, out
}

// detectStall names the first reason that more pods would not move more
// messages:
//
//   - poison: the oldest pending message has been delivered StallDeliveries
//     times or more;
//   - failures: failed ÷ (failed + acknowledged) >= MaxFailureRate;
//   - no progress: ready pods, unchanged for half a RateWindow, acknowledge
//     under 5% of what they could (ready × c ÷ W) while messages wait and
//     fewer than half their slots hold work;
//   - saturation: at some settled point each message took 20% longer and
//     no more than 10% more messages were acknowledged than at the busiest
//     settled point with fewer replicas
//     (the later point busy: messages waiting). The cap is the replica
//     count of that busiest point, for as long as the points are kept.
func detectStall(p Params, in Inputs, obs observation, r rates, w time.Duration, points []Point, ready int, since, now time.Time) stall {
	if in.MaxDeliveries >= int64(p.StallDeliveries) {
		return stall{reason: fmt.Sprintf("stalled: oldest message delivered %d times; scaling will not help", in.MaxDeliveries), poison: true}
	}
	fr, cr := obs.failureRate, r.consumption
	if fr+cr > 0 && fr/(fr+cr) >= p.MaxFailureRate { // false while either is NaN
		return stall{reason: fmt.Sprintf("stalled: %.0f%% of finished messages fail (%s/s of %s/s); scaling will not help",
			100*fr/(fr+cr), rate(fr), rate(fr+cr))}
	}
	if ready > 0 && in.ReadyReplicas == ready && now.Sub(since) >= p.RateWindow/2 && obs.depth >= 1 && !math.IsNaN(cr) {
		capacity := float64(ready) * float64(p.Concurrency) / w.Seconds()
		if cr < 0.05*capacity && obs.inFlight < 0.5*float64(ready*p.Concurrency) {
			return stall{reason: fmt.Sprintf("stalled: %d ready pods acknowledge %s/s with %s waiting and %s in flight; scaling will not help",
				ready, rate(cr), count(obs.depth), count(obs.inFlight)), poison: true}
		}
	}
	return saturation(points)
}

// saturation: see detectStall. Any busy settled point b that did no
// better than the busiest point a with fewer replicas, while each message
// took 20% longer, is evidence for as long as it is remembered.
func saturation(points []Point) stall {
	var cur, best *Point
	for i := range points {
		b := &points[i]
		if !b.Busy {
			continue
		}
		var a *Point
		for j := range points {
			x := &points[j]
			if x.Replicas < b.Replicas && (a == nil || x.Rate > a.Rate || x.Rate == a.Rate && x.Replicas < a.Replicas) {
				a = x
			}
		}
		if a != nil && float64(b.W) >= 1.2*float64(a.W) && b.Rate <= 1.1*a.Rate && (best == nil || a.Replicas < best.Replicas) {
			cur, best = b, a
		}
	}
	if best == nil {
		return stall{}
	}
	return stall{
		reason: fmt.Sprintf("stalled: %d pods acknowledge %s/s at %v each, %d acknowledged %s/s at %v: a downstream dependency is saturated; scaling will not help",
			cur.Replicas, rate(cur.Rate), round(cur.W), best.Replicas, rate(best.Rate), round(best.W)),
		cap:  best.Replicas,
		note: fmt.Sprintf("capped at %d", best.Replicas),
	}
}

// plan is a pre-scaled target for a stall about to clear.
type plan struct {
	replicas int
	note     string
}

// prescale plans for the end of a poison stall. When the broker dead-letters
// after DeadLetterAfter deliveries, each lasting up to LockDuration, the
// oldest message delivered d times is gone within
//
//	remaining = (DeadLetterAfter − d + 1) × LockDuration
//
// and at the earliest one LockDuration sooner. New pods need
//
//	lead = PodStartup + ScaleUpPeriod × (2 + steps)
//
// steps the scale-up periods from the stalled target (the arrival rate's
// pods, not the previous target, so that the plan does not flip as it
// ramps) to the plan. Once
// the earliest end is within lead, the target is what the backlog will
// need then: B' = B + λ·remaining, drained as if already late (urgency 4).
func prescale(p Params, in Inputs, obs observation, lam float64, w time.Duration, cs2 float64, from int) plan {
	if p.DeadLetterAfter <= 0 || p.LockDuration <= 0 || in.MaxDeliveries < 1 {
		return plan{}
	}
	left := max(int64(p.DeadLetterAfter)-in.MaxDeliveries+1, 1)
	remaining := time.Duration(min(left, 1<<20)) * p.LockDuration
	backlog := obs.slotDepth()
	if !math.IsNaN(lam) {
		backlog = min(backlog+lam*remaining.Seconds(), huge)
	}
	want := recommend(podsFor(steadySlots(lam, w, p, cs2)+drainSlots(backlog, p.TargetAge, w, 4), p.Concurrency), 0, true, p)
	steps := 0
	for x := float64(max(from, 1)); x < float64(want) && steps < 64; steps++ {
		x = max(math.Ceil(x*p.ScaleUpFactor), x+float64(p.ScaleUpPods))
	}
	lead := p.PodStartup + p.ScaleUpPeriod*time.Duration(2+steps)
	if remaining-p.LockDuration > lead {
		return plan{note: fmt.Sprintf("it is dead-lettered after %d deliveries, within %v: holding", p.DeadLetterAfter, remaining)}
	}
	return plan{replicas: want, note: fmt.Sprintf("it is dead-lettered after %d deliveries, within %v: preparing %d replicas for about %s messages behind it",
		p.DeadLetterAfter, remaining, want, count(math.Round(backlog)))}
}
