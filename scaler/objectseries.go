package scaler

import (
	"bufio"
	"bytes"
	"cmp"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var _ prometheus.Gatherer = (*objectSeries)(nil)

// objectSeries holds the per-object gauges as plain values and writes
// them straight into the /metrics exposition. At 10,000 objects they are
// about 300,000 series: made into client_golang metrics and then protobuf
// families on every scrape, they cost 0.7 s of CPU and 200 MB of garbage,
// and with one core that stall was the tail of every KEDA call made during
// it. Written as text lines from a copy of the values, a scrape allocates
// the copy and little else, and it yields the core between objects.
type objectSeries struct {
	// gauges name and explain each per-object gauge, by gauge.
	gauges [numGauges]family
	// reason is one-hot over reasonClasses, from over processingSources.
	reason, from family

	mu      sync.Mutex
	objects map[objectKey]*objectValues
}

// family is the name and help text of one per-object family.
type family struct{ name, help string }

type objectKey struct{ namespace, name string }

// gauge names one per-object gauge.
type gauge int

const (
	gReplicas gauge = iota
	gActive
	gDepth
	gInFlight
	gOldestAge
	gArrivalRate
	gMaxDeliveries
	gMaxReplicas
	gPolicyReplicas
	gHintConcurrency
	gHintPrefetch
	gCooldown
	gProcessingTime
	gProcessingP95
	gConsumptionRate
	gFailureRate
	gReadyPods
	gDeadLetter
	gDeadLetterRate
	gScheduled
	numGauges
)

// objectValues are one object's gauges; a gauge that is not known has no
// series (an absent series is honest where a 0 would be believed).
type objectValues struct {
	value [numGauges]float64
	known [numGauges]bool
	// reason and from are the hot label values of the one-hot series; ""
	// exports none.
	reason, from string
}

// processingSources are the values of flowscaler_processing_time_from's from label.
var processingSources = []string{fromMeasured, fromLastGood, fromConfigured}

func newObjectSeries(gauges [numGauges]family, reason, from family) *objectSeries {
	return &objectSeries{gauges: gauges, reason: reason, from: from, objects: map[objectKey]*objectValues{}}
}

// update changes the values of one object under the lock, creating it.
func (o *objectSeries) update(ns, name string, f func(*objectValues)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := objectKey{ns, name}
	v := o.objects[k]
	if v == nil {
		v = &objectValues{}
		o.objects[k] = v
	}
	f(v)
}

func (v *objectValues) set(g gauge, x float64) { v.value[g], v.known[g] = x, true }

// setKnown sets a gauge when its value is known and removes it otherwise.
func (v *objectValues) setKnown(g gauge, x float64, known bool) {
	v.value[g], v.known[g] = x, known
}

func (o *objectSeries) delete(ns, name string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.objects, objectKey{ns, name})
}

// yieldEvery is how many objects a scrape writes between yields of the
// core, so that a KEDA call arriving mid-scrape waits for one such batch
// (microseconds, or a fraction of a millisecond when the batch fills a
// gzip block) rather than for Go's 10 ms preemption tick.
const yieldEvery = 32

// pauseEvery is how much writing a scrape does between short sleeps (see
// yield). A sleep can last up to a millisecond when nothing else runs: a
// scrape of 10,000 objects takes 0.16 s for its 0.1 s of CPU on one core.
const pauseEvery = time.Millisecond

// entry is one object's values, copied out of the map for a scrape.
type entry struct {
	k objectKey
	v objectValues
}

// snapshot copies the values out under the lock, sorted by namespace
// and name, so that writing them does not hold up decisions.
func (o *objectSeries) snapshot() []entry {
	o.mu.Lock()
	all := make([]entry, 0, len(o.objects))
	for k, v := range o.objects {
		all = append(all, entry{k, *v})
	}
	o.mu.Unlock()
	slices.SortFunc(all, func(a, b entry) int {
		return cmp.Or(strings.Compare(a.k.namespace, b.k.namespace), strings.Compare(a.k.name, b.k.name))
	})
	return all
}

// writeText writes every per-object family in the Prometheus text format
// (version 0.0.4): families in the order declared, each family's series in
// the order a client_golang registry sorts them into (by label values, in
// the order of the sorted label names), and a family with no series not
// at all.
func (o *objectSeries) writeText(w *bufio.Writer) error {
	all := o.snapshot()
	t := textWriter{w: w}
	// Labels namespace, scaledobject.
	for g, f := range o.gauges {
		t.family = f
		for i, e := range all {
			t.yield(i)
			if e.v.known[g] {
				t.sample(e.k, "", "", e.v.value[g])
			}
		}
	}
	// Labels namespace, reason, scaledobject: by namespace, then class.
	t.family = o.reason
	for start := 0; start < len(all); {
		end := start
		for end < len(all) && all[end].k.namespace == all[start].k.namespace {
			end++
		}
		for _, c := range sortedReasonClasses {
			for i, e := range all[start:end] {
				t.yield(i)
				if e.v.reason != "" {
					t.sample(e.k, "reason", c, b2f(c == e.v.reason))
				}
			}
		}
		start = end
	}
	// Labels from, namespace, scaledobject.
	t.family = o.from
	for _, f := range sortedProcessingSources {
		for i, e := range all {
			t.yield(i)
			if e.v.from != "" {
				t.sample(e.k, "from", f, b2f(f == e.v.from))
			}
		}
	}
	return t.err
}

// Gather parses what writeText writes, so that a test or a
// prometheus.Gatherers sees exactly the series /metrics serves.
func (o *objectSeries) Gather() ([]*dto.MetricFamily, error) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	if err := o.writeText(w); err != nil {
		return nil, err
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	byName, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		return nil, err
	}
	out := make([]*dto.MetricFamily, 0, len(byName))
	for _, mf := range byName {
		out = append(out, mf)
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out, nil
}

// textWriter writes the samples of one family at a time, its HELP and
// TYPE lines before the first; err keeps the first write error.
type textWriter struct {
	w       *bufio.Writer
	family  family
	written string // the family whose header is out
	line    []byte
	err     error
	// lastPause is when yield last parked.
	lastPause time.Time
}

// sample writes name{namespace="…",scaledobject="…"} v, with label="value"
// among them in its sorted place when label is set.
func (t *textWriter) sample(k objectKey, label, value string, v float64) {
	if t.err != nil {
		return
	}
	if t.written != t.family.name {
		t.header()
	}
	pairs := [3][2]string{{"namespace", k.namespace}, {"scaledobject", k.name}}
	n := 2
	if label != "" {
		pairs[2] = [2]string{label, value}
		n = 3
		for i := 2; i > 0 && pairs[i][0] < pairs[i-1][0]; i-- {
			pairs[i], pairs[i-1] = pairs[i-1], pairs[i]
		}
	}
	b := append(t.line[:0], t.family.name...)
	b = append(b, '{')
	for i, p := range pairs[:n] {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendLabel(b, p[0], p[1])
	}
	b = append(b, "} "...)
	b = appendFloat(b, v)
	b = append(b, '\n')
	t.line = b
	_, t.err = t.w.Write(b)
}

func (t *textWriter) header() {
	t.written = t.family.name
	b := append(t.line[:0], "# HELP "...)
	b = append(b, t.family.name...)
	b = append(b, ' ')
	b = appendEscaped(b, t.family.help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, t.family.name...)
	b = append(b, " gauge\n"...)
	t.line = b
	_, t.err = t.w.Write(b)
}

// yield gives up the core every yieldEvery objects, and parks for a moment
// after every pauseEvery of writing: Gosched lets goroutines that are
// already runnable go first, but on a lone P (one core) Go looks for newly
// arrived requests only when it has nothing to run, or from sysmon every
// 10 ms, so a call arriving mid-scrape would otherwise wait that long.
func (t *textWriter) yield(i int) {
	if i%yieldEvery != yieldEvery-1 {
		return
	}
	if now := time.Now(); now.Sub(t.lastPause) >= pauseEvery {
		time.Sleep(time.Microsecond) // parks: the scheduler polls the network
		t.lastPause = time.Now()
		return
	}
	runtime.Gosched()
}

func appendLabel(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, `="`...)
	b = appendEscaped(b, value, true)
	return append(b, '"')
}

// appendEscaped escapes as the text format asks: backslash and newline
// everywhere, the double quote in label values.
func appendEscaped(b []byte, s string, quote bool) []byte {
	if !strings.ContainsAny(s, "\\\n\"") { // Kubernetes names never need it
		return append(b, s...)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendFloat formats as the text format does: Go's shortest 'g' form,
// with +Inf, -Inf and NaN spelled out.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

var (
	sortedReasonClasses     = sortedCopy(reasonClasses)
	sortedProcessingSources = sortedCopy(processingSources)
)

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
