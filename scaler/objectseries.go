package scaler

import (
	"cmp"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

var _ prometheus.Collector = (*objectSeries)(nil)

// objectSeries holds the per-object gauges as plain values and makes
// samples of them only when scraped. As GaugeVec children, the ~25 series
// of an object cost about 600 bytes each (150 MB of heap at 10,000
// objects) and one label hash per series per decision; here an object is
// one small struct and a decision one map lookup.
type objectSeries struct {
	descs  [numGauges]*prometheus.Desc
	reason *prometheus.Desc // one-hot over reasonClasses
	from   *prometheus.Desc // one-hot over processingSources

	mu      sync.Mutex
	objects map[objectKey]*objectValues
}

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

func newObjectSeries(help [numGauges][2]string, reason, from *prometheus.Desc) *objectSeries {
	o := &objectSeries{reason: reason, from: from, objects: map[objectKey]*objectValues{}}
	for i, h := range help {
		o.descs[i] = prometheus.NewDesc(h[0], h[1], objectLabels, nil)
	}
	return o
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

func (o *objectSeries) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range o.descs {
		ch <- d
	}
	ch <- o.reason
	ch <- o.from
}

// Collect copies the values out under the lock and makes the samples
// after it, so a scrape does not hold up decisions. Samples go out in the
// order the registry sorts each family into (label values in the order of
// the sorted label names), which makes its sort a linear pass instead of
// O(n log n) comparisons of label pairs: the largest cost of a scrape of
// 10,000 objects.
func (o *objectSeries) Collect(ch chan<- prometheus.Metric) {
	type entry struct {
		k objectKey
		v objectValues
	}
	o.mu.Lock()
	all := make([]entry, 0, len(o.objects))
	for k, v := range o.objects {
		all = append(all, entry{k, *v})
	}
	o.mu.Unlock()
	slices.SortFunc(all, func(a, b entry) int {
		return cmp.Or(strings.Compare(a.k.namespace, b.k.namespace), strings.Compare(a.k.name, b.k.name))
	})
	// Labels namespace, scaledobject.
	for _, e := range all {
		for g, d := range o.descs {
			if e.v.known[g] {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, e.v.value[g], e.k.namespace, e.k.name)
			}
		}
	}
	// Labels namespace, reason, scaledobject: by namespace, then class.
	for start := 0; start < len(all); {
		end := start
		for end < len(all) && all[end].k.namespace == all[start].k.namespace {
			end++
		}
		for _, c := range sortedReasonClasses {
			for _, e := range all[start:end] {
				if e.v.reason != "" {
					ch <- prometheus.MustNewConstMetric(o.reason, prometheus.GaugeValue, b2f(c == e.v.reason), e.k.namespace, e.k.name, c)
				}
			}
		}
		start = end
	}
	// Labels from, namespace, scaledobject.
	for _, f := range sortedProcessingSources {
		for _, e := range all {
			if e.v.from != "" {
				ch <- prometheus.MustNewConstMetric(o.from, prometheus.GaugeValue, b2f(f == e.v.from), e.k.namespace, e.k.name, f)
			}
		}
	}
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
