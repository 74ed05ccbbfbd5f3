package sim

import (
	"math"
	"sort"
	"strings"
	"time"
)

// epoch is the virtual clock's start: second 0 of every trace.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type model struct {
	tr            Trace
	sc            Scenario
	pol           Policy
	dep           Deployment
	steps         int
	progressEvery int
	arrivals      []float64
	kernels       kernels
	p95Factor     float64 // p95 ÷ mean of the processing-time distribution

	main, retry, locked fifo
	ring                *ring

	// The message that always fails.
	poisonIn         bool // in the queue, not yet dead-lettered
	poisonPending    bool
	poisonDeliveries int
	poisonUntil      int

	pods          []int // ready-at second of every pod, oldest first
	rep           int   // the deployment's replica count
	hpa           hpa
	lastActive    int
	evalAt        int
	answer        Answer
	produced      float64
	consumed      float64
	win           []window // consumer metrics, one per second of the metrics window
	lastBusy      float64
	util          float64 // share of the capacity used in the previous second
	firstScaleUp  int
	series        seriesBuilder
	waits         []float64 // messages by whole seconds waited before their first delivery
	rep95         time.Duration
	report        Report
	reasonStalled string
}

type window struct{ ok, failed, work float64 }

func newModel(tr Trace, sc Scenario, p Policy, o Options) *model {
	m := &model{
		tr: tr, sc: sc, pol: p, dep: p.Deployment(),
		steps:        len(tr.Points),
		arrivals:     Arrivals(tr, sc.Seed),
		kernels:      kernels{cv: sc.ProcessingCV},
		p95Factor:    newLognormal(1, sc.ProcessingCV).quantile(0.95),
		ring:         newRing(1024, sc.DeadLetterAfter+1),
		lastActive:   math.MinInt / 2,
		evalAt:       -1,
		firstScaleUp: -1,
		win:          make([]window, int(sc.MetricsWindow/time.Second)),
	}
	m.progressEvery = max(1, m.steps/100)
	if m.dep.PollingInterval < time.Second {
		m.dep.PollingInterval = DefaultDeployment().PollingInterval
	}
	m.hpa = hpa{b: m.dep.HPA, min: max(1, sc.MinReplicas), max: sc.MaxReplicas}
	m.series = newSeriesBuilder(m.steps, o.SeriesPoints)
	m.rep = sc.MinReplicas
	for range m.rep {
		m.pods = append(m.pods, 0)
	}
	return m
}

func (m *model) step(t int) {
	pt := m.tr.Points[t]
	for !m.locked.empty() && m.locked.front().due <= t {
		m.retry.push(m.locked.take(math.Inf(1)))
	}
	m.poisonTick(t)
	if a := m.arrivals[t]; a > 0 {
		m.main.push(cohort{enq: float64(t), n: a})
		m.produced += a
	}
	if t == m.tr.PoisonAt {
		m.main.push(cohort{enq: float64(t), n: 1, poison: true})
		m.poisonIn = true
		m.produced++
	}

	ready := m.ready(t)
	w := pt.ProcessingTime.Seconds()
	if m.tr.Downstream > 0 {
		// The dependency slows down with the calls it gets: busy slots
		// (all of them while work waits, as in the previous second) calling
		// at the nominal rate.
		if demand := m.util * float64(ready*m.sc.Concurrency) / w; demand > m.tr.Downstream {
			w *= math.Pow(demand/m.tr.Downstream, 1.25)
		}
	}
	k, wq := m.kernels.get(w)
	capacity := float64(ready*m.sc.Concurrency) / wq
	left := m.start(t, capacity, k)
	m.util = 1
	if capacity > 0 {
		m.util = 1 - left/capacity
	}
	m.complete(t, pt.FailureRate, wq)

	m.observeStats(t)
	m.report.ReplicaSeconds += float64(len(m.pods))
	if m.firstScaleUp >= 0 {
		m.report.SecondsAfterFirstScaleUp++
	}
	m.control(t)
}

// ready counts pods ready at second t.
func (m *model) ready(t int) int {
	return sort.Search(len(m.pods), func(i int) bool { return m.pods[i] > t })
}

// poisonTick moves the poison message through its deliveries: each one
// holds it (and, the queue being ordered, everything behind it) for the
// lock duration; after the last it is dead-lettered.
func (m *model) poisonTick(t int) {
	if !m.poisonIn || !m.poisonPending || t < m.poisonUntil {
		return
	}
	m.poisonPending = false
	if m.poisonDeliveries >= m.sc.DeadLetterAfter {
		m.main.pop() // the poison is at the head while it is pending
		m.poisonIn = false
		m.report.DeadLettered++
	}
}

// start delivers up to capacity messages: visible retries first, then the
// queue in order (unless the poison message blocks it). It returns the
// capacity left unused.
func (m *model) start(t int, capacity float64, k *kernel) float64 {
	for capacity > 1e-9 && !m.retry.empty() {
		c := m.retry.take(capacity)
		capacity -= c.n
		m.deliver(t, c, k)
	}
	for capacity > 1e-9 && !m.main.empty() {
		if f := m.main.front(); f.poison {
			if !m.poisonPending {
				m.poisonPending = true
				m.poisonDeliveries++
				m.poisonUntil = t + int(m.sc.LockDuration/time.Second)
				if f.enq >= 0 && m.poisonDeliveries == 1 {
					m.wait(t, f.enq, 1)
					m.consumed++
				}
			}
			return 0
		}
		c := m.main.take(capacity)
		capacity -= c.n
		m.deliver(t, c, k)
	}
	return max(capacity, 0)
}

func (m *model) deliver(t int, c cohort, k *kernel) {
	if c.deliveries == 0 {
		m.wait(t, c.enq, c.n)
		m.consumed += c.n
	}
	c.deliveries++
	m.ring.add(t, k, c)
}

// wait records n messages first delivered at second t after arriving at enq.
func (m *model) wait(t int, enq, n float64) {
	s := int(float64(t) - enq)
	for len(m.waits) <= s {
		m.waits = append(m.waits, 0)
	}
	m.waits[s] += n
}

// complete settles the deliveries ending in second t: a fraction f fails
// and is locked for the lock duration, or dead-lettered on its last
// allowed delivery.
func (m *model) complete(t int, f, w float64) {
	r := m.ring
	slot := t % r.size
	var ok, failed float64
	for d := range r.width {
		i := slot*r.width + d
		n := r.n[i]
		if n <= 0 {
			continue
		}
		enq := r.enq[i] / n
		r.n[i], r.enq[i] = 0, 0
		ok += n * (1 - f)
		fail := n * f
		if fail <= 0 {
			continue
		}
		failed += fail
		if d >= m.sc.DeadLetterAfter {
			m.report.DeadLettered += fail
		} else {
			m.locked.push(cohort{enq: enq, deliveries: d, n: fail, due: t + int(m.sc.LockDuration/time.Second)})
		}
	}
	m.lastBusy = r.busy[slot]
	r.busy[slot] = 0
	m.report.Processed += ok
	m.win[t%len(m.win)] = window{ok: ok, failed: failed, work: (ok + failed) * w}
}

// abandon takes fraction phi of all work in flight away (its pods were
// removed): it is locked and delivered again after the lock duration.
func (m *model) abandon(t int, phi float64) {
	r := m.ring
	due := t + int(m.sc.LockDuration/time.Second)
	for d := range r.width {
		var n, enq float64
		for s := 1; s < r.size; s++ {
			i := ((t+s)%r.size)*r.width + d
			n += r.n[i] * phi
			enq += r.enq[i] * phi
			r.n[i] *= 1 - phi
			r.enq[i] *= 1 - phi
		}
		if n > 1e-9 {
			m.locked.push(cohort{enq: enq / n, deliveries: d, n: n, due: due})
		}
	}
	for s := range r.busy {
		r.busy[s] *= 1 - phi
	}
}

// observe is what a broker and the consumers' metrics report at the end of second t.
func (m *model) observe(t int) Observation {
	o := Observation{
		Depth:         m.main.total + m.retry.total,
		InFlight:      m.lastBusy + m.locked.total,
		ProducedTotal: m.produced, ConsumedTotal: m.consumed,
		ConsumptionRate: math.NaN(), FailureRate: math.NaN(),
		ProcessingTime: -1, ProcessingTimeP95: -1,
		ReadyReplicas: m.ready(t), Replicas: len(m.pods),
	}
	if m.poisonPending {
		o.Depth--
		o.InFlight++
	}
	o.Depth = max(0, o.Depth)
	if age := m.oldest(t); age > 0 {
		o.OldestAge = time.Duration(age * float64(time.Second))
	}
	switch {
	case m.poisonIn:
		o.MaxDeliveries = int64(m.poisonDeliveries)
	case !m.locked.empty():
		o.MaxDeliveries = int64(m.locked.front().deliveries)
	}
	if !m.retry.empty() {
		o.MaxDeliveries = max(o.MaxDeliveries, int64(m.retry.front().deliveries))
	}
	if t+1 >= len(m.win) {
		var w window
		for _, x := range m.win {
			w.ok += x.ok
			w.failed += x.failed
			w.work += x.work
		}
		secs := float64(len(m.win))
		o.ConsumptionRate, o.FailureRate = w.ok/secs, w.failed/secs
		if done := w.ok + w.failed; done > 0 {
			mean := w.work / done
			o.ProcessingTime = time.Duration(mean * float64(time.Second))
			o.ProcessingTimeP95 = time.Duration(mean * m.p95Factor * float64(time.Second))
		}
	}
	return o
}

// oldest is the age in seconds of the oldest visible message at the end of
// second t (arrivals are spread over their second: +0.5), 0 when none.
func (m *model) oldest(t int) float64 {
	enq := math.Inf(1)
	if !m.retry.empty() {
		enq = m.retry.front().enq
	}
	for i := m.main.head; i < len(m.main.items) && i <= m.main.head+1; i++ {
		c := m.main.items[i]
		if c.poison && m.poisonPending {
			continue
		}
		enq = min(enq, c.enq)
		break
	}
	if math.IsInf(enq, 1) {
		return 0
	}
	return float64(t) + 0.5 - enq
}

func (m *model) observeStats(t int) {
	depth := m.main.total + m.retry.total
	if m.poisonPending {
		depth--
	}
	depth = max(0, depth)
	age := m.oldest(t)
	m.report.MaxBacklog = max(m.report.MaxBacklog, depth)
	over := age > m.sc.TargetAge.Seconds()
	if over {
		m.report.SecondsOverObjective++
		if m.firstScaleUp >= 0 {
			m.report.SecondsOverObjectiveAfterFirstScaleUp++
		}
	}
	m.series.add(t, m.tr.Points[t].Rate, depth, age, float64(len(m.pods)), m.answer.Own)
}

// control runs KEDA's polling loop and the HPA's sync loop when they are due.
func (m *model) control(t int) {
	now := t + 1
	poll := now%int(m.dep.PollingInterval/time.Second) == 0
	sync := now%int(m.sc.HPASync/time.Second) == 0
	if !poll && !sync {
		return
	}
	a := m.evaluate(t)
	if poll {
		switch {
		case a.Active:
			m.lastActive = now
			if m.rep == 0 {
				m.scale(t, max(1, m.sc.MinReplicas))
			}
		case m.rep > 0 && m.sc.MinReplicas == 0 && time.Duration(now-m.lastActive)*time.Second >= m.dep.CooldownPeriod:
			m.scale(t, 0)
		}
	}
	if sync && m.rep > 0 {
		d := m.hpa.desired(a.Value, a.Target, m.rep, now)
		if d != m.rep {
			m.hpa.record(m.rep, d, now)
			m.scale(t, d)
		}
	}
}

func (m *model) evaluate(t int) Answer {
	if m.evalAt == t {
		return m.answer
	}
	a := m.pol.Evaluate(m.observe(t), epoch.Add(time.Duration(t+1)*time.Second))
	if !(a.Target > 0) {
		a.Target = 1
	}
	if math.IsNaN(a.Value) || a.Value < 0 {
		a.Value = 0
	}
	m.evalAt, m.answer = t, a
	if strings.HasPrefix(a.Reason, "stalled") || strings.Contains(a.Reason, "; stalled") || strings.Contains(a.Reason, ": stalled") {
		m.report.StalledDecisions++
		if m.report.StallReason == "" {
			m.report.StallReason = a.Reason
		}
	}
	return a
}

// scale sets the deployment to n replicas: new pods are ready after the
// start-up delay; removed pods are the newest, and the work in flight on
// removed ready pods is abandoned.
func (m *model) scale(t, n int) {
	if n == m.rep {
		return
	}
	m.report.ScaleEvents++
	if n > m.rep && m.firstScaleUp < 0 {
		m.firstScaleUp = t
	}
	ready := m.ready(t)
	for len(m.pods) < n {
		m.pods = append(m.pods, t+1+int(m.sc.PodStartup/time.Second))
	}
	if len(m.pods) > n {
		m.pods = m.pods[:n]
		if after := m.ready(t); after < ready && ready > 0 {
			m.abandon(t, float64(ready-after)/float64(ready))
		}
	}
	m.rep = n
	m.report.PeakReplicas = max(m.report.PeakReplicas, n)
}

func (m *model) result() Result {
	t := m.steps - 1
	// Messages never delivered count with the age they reached.
	for _, q := range []*fifo{&m.main, &m.retry} {
		for i := q.head; i < len(q.items); i++ {
			if c := q.items[i]; c.deliveries == 0 && !c.poison {
				m.wait(t, c.enq, c.n)
			}
		}
	}
	r := m.report
	r.P50AgeSeconds = quantile(m.waits, 0.50)
	r.P95AgeSeconds = quantile(m.waits, 0.95)
	r.P99AgeSeconds = quantile(m.waits, 0.99)
	if r.SecondsAfterFirstScaleUp > 0 {
		r.ObjectiveMetAfterFirstScaleUp = 1 - float64(r.SecondsOverObjectiveAfterFirstScaleUp)/float64(r.SecondsAfterFirstScaleUp)
	}
	return Result{Policy: m.pol.Name(), Report: r, Series: m.series.build()}
}

// quantile of a histogram of whole seconds, interpolated within the bin
// (a message counted in bin s waited between s and s+1 seconds).
func quantile(h []float64, q float64) float64 {
	total := 0.0
	for _, n := range h {
		total += n
	}
	if total <= 0 {
		return 0
	}
	want, acc := q*total, 0.0
	for s, n := range h {
		if acc+n >= want && n > 0 {
			return float64(s) + (want-acc)/n
		}
		acc += n
	}
	return float64(len(h))
}
