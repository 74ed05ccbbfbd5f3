package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// decision is the part of flowscaler's /debug/decisions a timeline shows.
type decision struct {
	Namespace      string  `json:"namespace"`
	Name           string  `json:"name"`
	Replicas       int     `json:"replicas"`
	Active         bool    `json:"active"`
	Reason         string  `json:"reason"`
	Depth          float64 `json:"depth"`
	ProcessingSec  float64 `json:"processingTimeSeconds"`
	ProcessingFrom string  `json:"processingTimeFrom"`
}

// decisionOf is flowscaler's latest decision for the ScaledObject, if any.
func (c *cluster) decisionOf(name string) (decision, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.flowscalerHTTP+"/debug/decisions", nil)
	if err != nil {
		return decision{}, false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return decision{}, false
	}
	defer resp.Body.Close()
	var all []decision
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		return decision{}, false
	}
	for _, d := range all {
		if d.Namespace == testNamespace && d.Name == name {
			return d, true
		}
	}
	return decision{}, false
}

// flowscalerCounter sums the series of a counter on flowscaler's /metrics
// whose labels contain match; 0 when there are none.
func (c *cluster) flowscalerCounter(name, match string) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.flowscalerHTTP+"/metrics", nil)
	if err != nil {
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") || !strings.Contains(line, match) {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i >= 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				sum += v
			}
		}
	}
	return sum
}

// sample is one observation: the Deployment's spec.replicas and what
// flowscaler last decided for its ScaledObject.
type sample struct {
	at       time.Duration // since the scenario began
	replicas int           // -1 when the Deployment could not be read
	target   string        // flowscaler's replica target; "-" before its first decision
	metric   string        // the input the scenario varies
	note     string        // what the scenario did at this moment
}

// timeline samples one scenario every 250 ms and keeps the rows where
// something changed, plus the scenario's own notes.
type timeline struct {
	c      *cluster
	name   string // Deployment and ScaledObject
	metric func(d decision) string
	begin  time.Time

	mu   sync.Mutex
	rows []sample
	all  []sample
	stop chan struct{}
	done chan struct{}
}

func (c *cluster) startTimeline(name string, metric func(d decision) string) *timeline {
	tl := &timeline{c: c, name: name, metric: metric, begin: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tl.done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			tl.observe("")
			select {
			case <-tl.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return tl
}

// depthMetric shows the backlog flowscaler saw.
func depthMetric(d decision) string { return "depth " + strconv.FormatFloat(d.Depth, 'f', -1, 64) }

// observe takes a sample now and keeps it as a row when it differs from the
// previous row or carries a note.
func (tl *timeline) observe(note string) sample {
	s := sample{at: time.Since(tl.begin), replicas: -1, target: "-", metric: "-", note: note}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if dep, err := tl.c.kube.AppsV1().Deployments(testNamespace).Get(ctx, tl.name, metav1.GetOptions{}); err == nil && dep.Spec.Replicas != nil {
		s.replicas = int(*dep.Spec.Replicas)
	}
	if d, ok := tl.c.decisionOf(tl.name); ok {
		s.target = strconv.Itoa(d.Replicas)
		s.metric = tl.metric(d)
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.all = append(tl.all, s)
	if n := len(tl.rows); note != "" || n == 0 || tl.rows[n-1].replicas != s.replicas || tl.rows[n-1].target != s.target || tl.rows[n-1].metric != s.metric {
		tl.rows = append(tl.rows, s)
	}
	return s
}

// note records what the scenario does, with a sample taken at that moment,
// and returns that moment.
func (tl *timeline) note(format string, args ...any) time.Duration {
	return tl.observe(fmt.Sprintf(format, args...)).at
}

// since is every sample taken at or after at.
func (tl *timeline) since(at time.Duration) []sample {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var out []sample
	for _, s := range tl.all {
		if s.at >= at {
			out = append(out, s)
		}
	}
	return out
}

// elapsed is the time since the scenario began.
func (tl *timeline) elapsed() time.Duration { return time.Since(tl.begin) }

// finish stops sampling and prints the timeline.
func (tl *timeline) finish(t *testing.T, title string) {
	close(tl.stop)
	<-tl.done
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "\n  timeline: %s (Deployment and ScaledObject %s/%s)\n", title, testNamespace, tl.name)
	fmt.Fprintf(&b, "  %8s  %-46s  %-10s  %-13s  %s\n", "time", "metric", "flowscaler", "spec.replicas", "event")
	for _, s := range tl.rows {
		r := strconv.Itoa(s.replicas)
		if s.replicas < 0 {
			r = "?"
		}
		fmt.Fprintf(&b, "  %7.1fs  %-46s  %-10s  %-13s  %s\n", s.at.Seconds(), s.metric, s.target, r, s.note)
	}
	result := "PASS"
	if t.Failed() {
		result = "FAIL"
	}
	fmt.Fprintf(&b, "  %s: %s\n", result, title)
	fmt.Print(b.String())
}

// waitReplicas waits until spec.replicas is want and returns when that was
// first seen, relative to the scenario's start.
func (tl *timeline) waitReplicas(t *testing.T, want int, timeout time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := tl.observe("")
		if s.replicas == want {
			return s.at
		}
		if time.Now().After(deadline) {
			t.Fatalf("spec.replicas of %s is %d, want %d within %s (flowscaler's target %s, %s)", tl.name, s.replicas, want, timeout, s.target, s.metric)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitAbove waits until spec.replicas is above n and returns when that was
// first seen.
func (tl *timeline) waitAbove(t *testing.T, n int, timeout time.Duration) time.Duration {
	t.Helper()
	return tl.waitUntil(t, timeout, fmt.Sprintf("above %d", n), func(r int) bool { return r > n })
}

// waitBelow waits until spec.replicas is below n (and readable) and returns
// when that was first seen.
func (tl *timeline) waitBelow(t *testing.T, n int, timeout time.Duration) time.Duration {
	t.Helper()
	return tl.waitUntil(t, timeout, fmt.Sprintf("below %d", n), func(r int) bool { return r >= 0 && r < n })
}

func (tl *timeline) waitUntil(t *testing.T, timeout time.Duration, want string, ok func(replicas int) bool) time.Duration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := tl.observe("")
		if ok(s.replicas) {
			return s.at
		}
		if time.Now().After(deadline) {
			t.Fatalf("spec.replicas of %s is %d, want %s within %s (flowscaler's target %s, %s)", tl.name, s.replicas, want, timeout, s.target, s.metric)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
