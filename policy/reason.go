package policy

import (
	"fmt"
	"math"
	"strings"
)

// explain is the one-line Reason of d: in shadow mode what is served
// instead; why scaling cannot help, when it cannot; the backlog (or why it
// is idle), the steady and drain terms with their numbers, the pods they
// need, then every floor, clamp, hold, gate and limit that changed the
// outcome, then notes on unusable inputs. It only formats; it decides
// nothing. Times are UTC 15:04:05.
func explain(p Params, in Inputs, obs observation, r rates, urg float64, d Decision, s stall, notes []string) string {
	t := d.Terms
	var b strings.Builder
	if p.Mode == ModeShadow {
		fmt.Fprintf(&b, "shadow: serving %d (depth %s ÷ messageCount %s); flowscaler would serve %d: ",
			d.Replicas, count(obs.depth), count(p.MessageCount), t.PolicyReplicas)
	}
	if s.reason != "" {
		b.WriteString(s.reason)
		if s.note != "" {
			b.WriteString("; ")
			b.WriteString(s.note)
		}
		b.WriteString("; ")
	}
	b.WriteString(head(p, in, obs, urg, d.Active))
	sep := ": "
	if !d.Active {
		sep = "; "
	}
	fmt.Fprintf(&b, "%s%s + %s → %s ÷ %d per pod = %d replicas", sep,
		steadyText(p, r, t), drainText(p, obs, urg, t), slots(t.SteadySlots+t.DrainSlots), p.Concurrency, t.Raw)
	for _, a := range adjustments(p, obs, d, s, notes) {
		b.WriteString("; ")
		b.WriteString(a)
	}
	return b.String()
}

// head is "backlog B[ + F in flight][, oldest …]" when active, else
// "idle: depth B[ + in flight F] ≤ activation A".
func head(p Params, in Inputs, obs observation, urg float64, active bool) string {
	if !active {
		s := "idle: depth " + count(obs.depth)
		if obs.inFlight > 0 {
			s += " + in flight " + count(obs.inFlight)
		}
		return s + " ≤ activation " + count(p.ActivationDepth)
	}
	s := "backlog " + count(obs.depth)
	if obs.inFlight > 0 {
		s += " + " + count(obs.inFlight) + " in flight"
	}
	return s + ", " + ageText(p, in, urg)
}

// ageText compares the oldest message's age with the target and gives the urgency.
func ageText(p Params, in Inputs, urg float64) string {
	switch {
	case in.OldestAge < 0:
		return "oldest age unknown"
	case in.OldestAge <= p.TargetAge:
		return fmt.Sprintf("oldest %v ≤ target %v", in.OldestAge, p.TargetAge)
	case urg >= 4 && float64(in.OldestAge)/float64(p.TargetAge) > 4:
		return fmt.Sprintf("oldest %v > target %v (urgency 4×, capped)", in.OldestAge, p.TargetAge)
	}
	return fmt.Sprintf("oldest %v > target %v (urgency %.3g×)", in.OldestAge, p.TargetAge, urg)
}

// steadyText is "arrival λ/s × W ÷ u = S slots" (or the Erlang C form),
// with λ's caveats; in panic mode λ is the burst rate when higher.
func steadyText(p Params, r rates, t Terms) string {
	lamV := r.arrival
	lam := "arrival " + rate(lamV) + "/s"
	if t.Panicking && !math.IsNaN(t.BurstRate) && (math.IsNaN(lamV) || t.BurstRate > lamV) {
		lamV = t.BurstRate
		lam = "burst arrival " + rate(lamV) + "/s"
	} else if math.IsNaN(lamV) {
		return fmt.Sprintf("arrival unknown (%s) = 0 slots", r.unknown)
	} else if r.lowerBound {
		lam = "arrival ≥ " + rate(lamV) + "/s (lower bound: consumption rate unknown)"
	}
	a := min(lamV*t.ProcessingTime.Seconds(), huge)
	if simple := min(a/p.TargetUtilization, huge); t.SteadySlots < simple-1e-9 {
		return fmt.Sprintf("%s × %v = %s busy, %s slots keep 99%% within %v (Erlang C)", lam, round(t.ProcessingTime), slots(a), slots(t.SteadySlots), p.TargetAge)
	}
	return fmt.Sprintf("%s × %v ÷ %v = %s slots", lam, round(t.ProcessingTime), p.TargetUtilization, slots(t.SteadySlots))
}

// drainText is "drain B÷T × W[ × urgency] = D slots".
func drainText(p Params, obs observation, urg float64, t Terms) string {
	u := ""
	if urg > 1 {
		u = fmt.Sprintf(" × %.3g", urg)
	}
	return fmt.Sprintf("drain %s÷%v × %v%s = %s slots", count(obs.depth), p.TargetAge, round(t.ProcessingTime), u, slots(t.DrainSlots))
}

// adjustments lists, in the order they apply, what moved the target away
// from Raw, then the source of W when measured, then notes on inputs.
func adjustments(p Params, obs observation, d Decision, s stall, notes []string) []string {
	t := d.Terms
	var out []string
	pre := max(t.Raw, t.InFlightFloor)
	if s.reason != "" {
		out = append(out, fmt.Sprintf("no drain while stalled: %d", t.Recommended))
		pre = t.Recommended
	}
	if t.Panicking {
		out = append(out, "panic mode (burst)")
	}
	if t.InFlightFloor > t.Raw {
		out = append(out, fmt.Sprintf("in-flight floor %s ÷ prefetch %d per pod = %d", count(obs.inFlight), max(p.Prefetch, p.Concurrency), t.InFlightFloor))
	}
	if d.Active && pre < 1 {
		out = append(out, "active, so at least 1")
		pre = 1
	}
	switch {
	case t.Recommended > pre:
		out = append(out, fmt.Sprintf("clamped to min %d", p.MinReplicas))
	case t.Recommended < pre:
		out = append(out, fmt.Sprintf("clamped to max %d", p.MaxReplicas))
	}
	if !t.HeldUntil.IsZero() {
		out = append(out, fmt.Sprintf("holding %d for the arrival rate until %s (scale-down cooldown %v)",
			t.PolicyReplicas, t.HeldUntil.UTC().Format("15:04:05"), p.ScaleDownCooldown))
	}
	out = append(out, notes...)
	if t.ProcessingFrom == "measured" {
		out = append(out, fmt.Sprintf("processing time %v measured", round(t.ProcessingTime)))
	}
	return append(out, obs.notes...)
}

// count formats a number of messages: up to two decimals, no trailing zeros.
func count(x float64) string {
	if math.Abs(x) >= 1e15 || math.IsNaN(x) {
		return fmt.Sprintf("%.3g", x)
	}
	s := fmt.Sprintf("%.2f", x)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// rate formats messages per second with one decimal.
func rate(x float64) string {
	if math.Abs(x) >= 1e15 {
		return fmt.Sprintf("%.3g", x)
	}
	return fmt.Sprintf("%.1f", x)
}

// slots formats a number of busy slots with one decimal.
func slots(x float64) string { return rate(x) }
