package explain

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	flowscalerv1 "github.com/flowscaler/flowscaler/proto/flowscaler/v1"
)

// Format writes each decision for a person: what was read and how old it
// is, the formula with its numbers, the steps from it to the target, the
// reason and the hints. Ages are the server's, so clock skew between this
// machine and flowscaler does not matter.
func Format(w io.Writer, resp *flowscalerv1.ExplainResponse) error {
	ds := resp.GetDecisions()
	if len(ds) == 0 {
		_, err := fmt.Fprintln(w, "no decisions on this flowscaler instance yet: KEDA has not asked it about any ScaledObject")
		return err
	}
	var b strings.Builder
	for i, d := range ds {
		if i > 0 {
			b.WriteString("\n")
		}
		formatOne(&b, d)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func formatOne(b *strings.Builder, d *flowscalerv1.ObjectDecision) {
	p := d.GetParams()
	fmt.Fprintf(b, "%s/%s\n", d.GetNamespace(), d.GetName())
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  source\t%s\n", d.GetSource())
	if d.GetProfile() != "" {
		fmt.Fprintf(tw, "  profile\t%s\n", d.GetProfile())
	}
	fmt.Fprintf(tw, "  metric\t%s\n", d.GetMetricName())
	if d.GetDecision() != nil {
		fmt.Fprintf(tw, "  decided\t%s ago, from a queue reading %s old\n", age(d.GetDecisionAgeSeconds()), age(d.GetReadingAgeSeconds()))
	}
	tw.Flush()

	switch {
	case d.GetDecision() == nil:
		fmt.Fprintf(b, "\nUNAVAILABLE: no good reading yet; KEDA's calls fail with Unavailable and its fallback replicas apply.\n  last error: %s\n", d.GetStaleError())
		return
	case d.GetUnavailable():
		fmt.Fprintf(b, "\nUNAVAILABLE: reads have failed for longer than staleAfter %s (the last good reading is %s old); KEDA's calls fail with Unavailable and its fallback replicas apply.\n  last error: %s\n  The last good decision was:\n",
			secs(d.GetStaleAfterSeconds()), age(d.GetReadingAgeSeconds()), d.GetStaleError())
	case d.GetStale():
		fmt.Fprintf(b, "\nSTALE: the latest read failed; the last good decision below is served for up to staleAfter %s after its reading.\n  last error: %s\n",
			secs(d.GetStaleAfterSeconds()), d.GetStaleError())
	}

	dec := d.GetDecision()
	active := "inactive (scale to zero allowed)"
	if dec.GetActive() {
		active = "active"
	}
	fmt.Fprintf(b, "\nDecision: %d replicas (previous %d), %s, mode %s\n", dec.GetReplicas(), dec.GetPreviousReplicas(), active, dec.GetMode())
	fmt.Fprintf(b, "  reason: %s\n", dec.GetReason())

	// A server of another version may leave parts out: show them as zero.
	in, t := d.GetInputs(), d.GetTerms()
	if in == nil {
		in = &flowscalerv1.Inputs{}
	}
	if t == nil {
		t = &flowscalerv1.Terms{}
	}
	queue := "queue, read " + age(d.GetReadingAgeSeconds()) + " ago"
	fmt.Fprintf(b, "\nInputs\n")
	tw = tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  B  backlog\t%s\t%s\n", messages(in.GetDepthMessages(), in.GetDepthCapped()), queue)
	fmt.Fprintf(tw, "     in flight\t%s\t%s\n", messages(in.GetInFlightMessages(), false), queue)
	if in.OldestAgeSeconds != nil {
		fmt.Fprintf(tw, "     oldest message\t%s\t%s\n", secs(in.GetOldestAgeSeconds()), queue)
	} else {
		fmt.Fprintf(tw, "     oldest message\tunknown\tthe source cannot tell\n")
	}
	if in.ArrivalRate != nil {
		fmt.Fprintf(tw, "  λ  arrival rate\t%s\tmeasured over %s up to the reading\n", rate(in.GetArrivalRate()), secs(p.GetRateWindowSeconds()))
	} else {
		fmt.Fprintf(tw, "  λ  arrival rate\tunknown\tnot measurable yet (see the reason)\n")
	}
	if in.BurstRate != nil {
		fmt.Fprintf(tw, "     burst rate\t%s\tover the panic window\n", rate(in.GetBurstRate()))
	}
	metricLine(tw, "     consumption rate", in.GetConsumptionRate(), rate, queue, d.GetDecisionAgeSeconds())
	metricLine(tw, "  W  processing time", in.GetProcessingTime(), secs, queue, d.GetDecisionAgeSeconds())
	metricLine(tw, "     processing time p95", in.GetProcessingTimeP95(), secs, queue, d.GetDecisionAgeSeconds())
	metricLine(tw, "     failure rate", in.GetFailureRate(), rate, queue, d.GetDecisionAgeSeconds())
	metricLine(tw, "     ready pods", in.GetReadyPods(), num, queue, d.GetDecisionAgeSeconds())
	fmt.Fprintf(tw, "     max deliveries\t%d\t%s\n", in.GetMaxDeliveries(), queue)
	if in.DeadLetterMessages != nil {
		fmt.Fprintf(tw, "     dead letters\t%s\t%s\n", messages(in.GetDeadLetterMessages(), false), queue)
		if in.DeadLetterRate != nil {
			fmt.Fprintf(tw, "     dead-letter growth\t%s\tover %s up to the reading\n", rate(in.GetDeadLetterRate()), secs(p.GetRateWindowSeconds()))
		}
	}
	tw.Flush()
	if src := in.GetConsumerMetricsSource(); src != "" {
		fmt.Fprintf(b, "  consumer metrics from %s\n", src)
	}

	fmt.Fprintf(b, "\nSettings\n  T target age %s, u target utilization %s, c concurrency %d, prefetch %d, replicas %d..%d, scale-down cooldown %s\n",
		secs(p.GetTargetAgeSeconds()), num(p.GetTargetUtilization()), p.GetConcurrency(), p.GetPrefetch(),
		p.GetMinReplicas(), p.GetMaxReplicas(), secs(p.GetScaleDownCooldownSeconds()))

	w := in.GetProcessingTime().GetValue()
	fmt.Fprintf(b, "\nFormula\n  replicas = ceil((λ·W ÷ u + (B ÷ T)·W·urgency) ÷ c)\n")
	tw = tabwriter.NewWriter(b, 0, 0, 1, ' ', 0)
	switch {
	case t.RateUsed == nil:
		fmt.Fprintf(tw, "  steady\t= λ·W ÷ u\t= %s slots (λ unknown)\n", num(t.GetSteadySlots()))
	case t.GetErlangC():
		fmt.Fprintf(tw, "  steady\t= min(λ·W ÷ u, Erlang C)\t= min(%s × %s ÷ %s = %s, %s) = %s slots (Erlang C: fewer slots keep 99%% of messages within T)\n",
			rate(t.GetRateUsed()), secs(w), num(p.GetTargetUtilization()), num(t.GetRateUsed()*w/p.GetTargetUtilization()),
			num(t.GetSteadySlots()), num(t.GetSteadySlots()))
	default:
		fmt.Fprintf(tw, "  steady\t= λ·W ÷ u\t= %s × %s ÷ %s = %s slots\n", rate(t.GetRateUsed()), secs(w), num(p.GetTargetUtilization()), num(t.GetSteadySlots()))
	}
	if t.RateUsed != nil && in.ArrivalRate != nil && t.GetRateUsed() != in.GetArrivalRate() {
		fmt.Fprintf(tw, "\t\t  (λ is the burst rate: panic mode)\n")
	}
	if in.OldestAgeSeconds != nil {
		fmt.Fprintf(tw, "  urgency\t= clamp(oldest ÷ T, 1, 4)\t= clamp(%s ÷ %s, 1, 4) = %s\n", secs(in.GetOldestAgeSeconds()), secs(p.GetTargetAgeSeconds()), num(t.GetUrgency()))
	} else {
		fmt.Fprintf(tw, "  urgency\t= clamp(oldest ÷ T, 1, 4)\t= 1 (oldest age unknown)\n")
	}
	fmt.Fprintf(tw, "  drain\t= (B ÷ T)·W·urgency\t= (%s ÷ %s) × %s × %s = %s slots\n",
		num(in.GetDepthMessages()), secs(p.GetTargetAgeSeconds()), secs(w), num(t.GetUrgency()), num(t.GetDrainSlots()))
	fmt.Fprintf(tw, "  raw\t= ceil((steady + drain) ÷ c)\t= ceil((%s + %s) ÷ %d) = %d\n", num(t.GetSteadySlots()), num(t.GetDrainSlots()), p.GetConcurrency(), t.GetRaw())
	fmt.Fprintf(tw, "  floor\t= ceil(in flight ÷ prefetch)\t= ceil(%s ÷ %d) = %d\n", num(in.GetInFlightMessages()), max(p.GetPrefetch(), p.GetConcurrency()), t.GetInFlightFloor())
	activeFloor := 0
	if dec.GetActive() {
		activeFloor = 1
	}
	if t.GetStalled() != "" {
		fmt.Fprintf(tw, "  recommended\t= %d\t  stalled: %s; the drain term is dropped (see the reason)\n", t.GetRecommended(), t.GetStalled())
	} else {
		fmt.Fprintf(tw, "  recommended\t= clamp(max(raw, floor, active), min, max)\t= clamp(max(%d, %d, %d), %d, %d) = %d\n",
			t.GetRaw(), t.GetInFlightFloor(), activeFloor, p.GetMinReplicas(), p.GetMaxReplicas(), t.GetRecommended())
	}
	fmt.Fprintf(tw, "  target\t\t= %d%s\n", t.GetPolicyReplicas(), targetNote(t, p))
	tw.Flush()
	if dec.GetMode() == "shadow" {
		fmt.Fprintf(b, "  served = %d: shadow mode serves the classic ceil(B ÷ messageCount) = ceil(%s ÷ %s), clamped to %d..%d\n",
			dec.GetReplicas(), num(in.GetDepthMessages()), num(p.GetMessageCount()), p.GetMinReplicas(), p.GetMaxReplicas())
	}

	h := d.GetHints()
	fmt.Fprintf(b, "\nHints for the consumers\n  concurrency %d, prefetch %d, scale-down cooldown %s (%s)\n",
		h.GetConcurrency(), h.GetPrefetch(), secs(h.GetCooldownSeconds()), h.GetBasis())
}

// targetNote says why the target differs from the recommendation.
func targetNote(t *flowscalerv1.Terms, p *flowscalerv1.Params) string {
	var notes []string
	switch target, rec := t.GetPolicyReplicas(), t.GetRecommended(); {
	case t.GetHeldUntilUnixMillis() != 0:
		notes = append(notes, fmt.Sprintf("held above %d for the arrival rate until %s (scale-down cooldown %s)",
			rec, time.UnixMilli(t.GetHeldUntilUnixMillis()).UTC().Format("15:04:05 UTC"), secs(p.GetScaleDownCooldownSeconds())))
	case target < rec:
		notes = append(notes, fmt.Sprintf("limited from %d (scale-up limit or a cap, see the reason)", rec))
	case target > rec:
		notes = append(notes, fmt.Sprintf("kept above %d (scale-down waits until the work left fits, see the reason)", rec))
	default:
		notes = append(notes, "the recommendation")
	}
	if t.GetPanicking() {
		notes = append(notes, "panic mode: no scale-down while a burst is answered")
	}
	return ": " + strings.Join(notes, "; ")
}

// metricLine writes one consumer metric with where it came from and how
// old it was.
func metricLine(w io.Writer, label string, m *flowscalerv1.ConsumerMetric, f func(float64) string, queue string, decisionAge float64) {
	value := "unknown"
	if m != nil && m.Value != nil {
		value = f(m.GetValue())
	}
	var from string
	switch m.GetFrom() {
	case "":
		value, from = "not read", "no consumer metrics configured for it"
	case "measured":
		from = "measured, read " + age(decisionAge) + " ago"
	case "last-good":
		from = fmt.Sprintf("last good value, %s old when used, %s ago", age(m.GetAgeSeconds()), age(decisionAge))
	case "configured":
		from = "configured"
	case "dead-letters":
		from = "dead-letter growth standing in (no failure rate from the consumers)"
	case "counters":
		from = "queue counters, " + strings.TrimPrefix(queue, "queue, ")
	case "unknown":
		from = "not measured"
		if m.GetWhy() == "" {
			from += " (see the reason)"
		}
	default:
		from = m.GetFrom()
	}
	if m.GetWhy() != "" {
		from += ": " + m.GetWhy()
	}
	fmt.Fprintf(w, "%s\t%s\t%s\n", label, value, from)
}

func messages(v float64, capped bool) string {
	s := num(v) + " messages"
	if capped {
		s = "≥ " + s + " (counting was bounded)"
	}
	return s
}

// num is v with at most three decimals and no trailing zeros.
func num(v float64) string {
	if math.IsInf(v, 0) || math.IsNaN(v) || math.Abs(v) >= 1e15 {
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
	return strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64)
}

func rate(v float64) string { return num(v) + "/s" }

// secs is a duration in seconds as Go writes durations, to the millisecond.
func secs(s float64) string {
	if math.IsNaN(s) || s > math.MaxInt64/1e9 {
		return num(s) + "s"
	}
	return time.Duration(math.Round(s * 1e9)).Round(time.Millisecond).String()
}

// age is an age to a precision a person reads: 100 ms under a minute, else seconds.
func age(s float64) string {
	d := time.Duration(math.Round(s * 1e9))
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
