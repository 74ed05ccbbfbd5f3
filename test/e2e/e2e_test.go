package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Every scenario seeds its stream with entries stamped three hours ago, so
// oldest age ÷ targetAge is far above 4 and the urgency is exactly 4, and
// creates its ScaledObject after the seed, so that flowscaler's first
// reading sees no arrivals (λ = 0) and the target is the drain term alone
// (policy.Decide), with the run's targetAge T = 10s and concurrency c = 2:
//
//	replicas = ceil((B ÷ T) × W × 4 ÷ c) = ceil(B × W_s ÷ 5)
const hoursOld = 3 * time.Hour

// TestEndToEnd brings up etcd, kube-apiserver, kube-controller-manager,
// KEDA's operator and metrics adapter, Redis, Prometheus and flowscaler,
// then runs each scenario against the Deployment's spec.replicas. The
// outage scenario stops Redis, so it runs last.
func TestEndToEnd(t *testing.T) {
	logDir := os.Getenv("E2E_LOG_DIR")
	if logDir == "" {
		logDir = t.TempDir()
	}
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("bring-up (component logs in %s)\n", logDir)
	begin := time.Now()
	c := startCluster(t, logDir)
	fmt.Printf("bring-up done in %.1fs\n", time.Since(begin).Seconds())

	rdb := redis.NewClient(&redis.Options{Addr: c.redisAddr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })

	t.Run("1-redis-stream-backlog", func(t *testing.T) { backlogScenario(t, c, rdb) })
	t.Run("2-scale-from-zero-by-push", func(t *testing.T) { pushScenario(t, c, rdb) })
	t.Run("4-bad-metadata", func(t *testing.T) { badMetadataScenario(t, c) })
	t.Run("5-prometheus-processing-time", func(t *testing.T) { prometheusScenario(t, c, rdb) })
	t.Run("3-source-outage", func(t *testing.T) { outageScenario(t, c, rdb) })
}

// backlogScenario: 35 late entries → 35 × 1s ÷ 5 = 7 replicas; draining
// them brings the Deployment back to minReplicaCount at once (a drained
// backlog needs no pods). Then a steady arrival of 4 entries/s, each read
// and acknowledged at once, holds pods for the arrival rate alone; when it
// stops, flowscaler's scaleDownCooldown (40s here) holds them before the
// Deployment goes back down.
func backlogScenario(t *testing.T, c *cluster, rdb *redis.Client) {
	const name, seed, want = "backlog", 35, 7
	const cooldown = 40 * time.Second
	c.deployment(t, name, 1)
	addOldEntries(t, rdb, name, seed)
	createGroup(t, rdb, name, "0")
	tl := c.startTimeline(name, depthMetric)
	defer tl.finish(t, "1. Redis stream backlog (external)")
	tl.note("%d entries on stream %s, 3h old; Deployment at 1", seed, name)
	c.scaledObject(t, name, "external", soOptions{min: 1, max: 10, polling: 2}, map[string]string{"scaleDownCooldown": "40s"})
	tl.note("ScaledObject created: min 1, max 10, pollingInterval 2s, scaleDownCooldown 40s")

	tl.waitReplicas(t, want, 2*time.Minute)
	tl.note("at the target: %d = ceil(%d × 1s ÷ 5)", want, seed)

	drain(t, rdb, name, seed)
	tl.note("backlog drained: %d entries read and acknowledged", seed)
	tl.waitReplicas(t, 1, 2*time.Minute)
	tl.note("back at minReplicaCount 1: the drained backlog held nothing")

	// Arrivals with no backlog: each entry is read and acknowledged at once,
	// so the target comes from the arrival rate alone (Little's law, λ × W
	// busy slots ÷ utilisation 0.8 ÷ 2 per pod, plus Erlang C's headroom).
	// 6/s, then a dip to 3.5/s: the recommendations made at 6/s are within
	// twice the new rate, so the cooldown holds them (a drop below half the
	// rate would be a burst that has ended, let go at once).
	p := startArrivals(t, rdb, name, 6)
	tl.note("arrivals: 6 entries/s, each read and acknowledged at once")
	scaled := tl.waitAbove(t, 1, 2*time.Minute)
	time.Sleep(15 * time.Second) // the rate window (10s) settles at 6/s
	held := tl.observe("").replicas
	p.setRate(3.5)
	dip := tl.note("arrivals dip to 3.5/s at %d replicas (scaled up at %.0fs)", held, scaled.Seconds())
	lower := tl.waitBelow(t, held, cooldown+60*time.Second)
	tl.note("first step down, %.0fs into the dip", (lower - dip).Seconds())
	// Without the cooldown the target would follow the rate window (10s)
	// down and the HPA (5s sync, 5s stabilisation) within about 20s.
	if lower-dip < 30*time.Second {
		t.Errorf("scaled down %.0fs into the dip, want the %s cooldown to hold %d replicas for at least 30s", (lower - dip).Seconds(), cooldown, held)
	}
	p.stop(t)
	stopped := tl.note("arrivals stopped")
	down := tl.waitReplicas(t, 1, 2*time.Minute)
	tl.note("back at minReplicaCount 1, %.0fs after the arrivals stopped", (down - stopped).Seconds())
}

// arrivals adds entries to a stream at a steady rate and reads and
// acknowledges each at once, as consumers that keep up would.
type arrivals struct {
	rate chan float64
	done chan error
}

func startArrivals(t *testing.T, rdb *redis.Client, stream string, perSecond float64) *arrivals {
	a := &arrivals{rate: make(chan float64, 1), done: make(chan error, 1)}
	go func() {
		ctx := context.Background()
		tick := time.NewTicker(time.Duration(float64(time.Second) / perSecond))
		defer tick.Stop()
		for {
			select {
			case r, ok := <-a.rate:
				if !ok {
					a.done <- nil
					return
				}
				tick.Reset(time.Duration(float64(time.Second) / r))
			case <-tick.C:
				if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []string{"n", "1"}}).Err(); err != nil {
					a.done <- fmt.Errorf("XADD %s: %w", stream, err)
					return
				}
				res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "e2e", Streams: []string{stream, ">"}, Count: 10, Block: -1}).Result()
				if err != nil {
					a.done <- fmt.Errorf("XREADGROUP %s: %w", stream, err)
					return
				}
				for _, s := range res {
					for _, m := range s.Messages {
						if err := rdb.XAck(ctx, stream, "workers", m.ID).Err(); err != nil {
							a.done <- fmt.Errorf("XACK %s: %w", stream, err)
							return
						}
					}
				}
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			close(a.rate)
			<-a.done
		}
	})
	return a
}

func (a *arrivals) setRate(perSecond float64) { a.rate <- perSecond }

// stop ends the arrivals and fails the test if they had failed.
func (a *arrivals) stop(t *testing.T) {
	t.Helper()
	close(a.rate)
	err := <-a.done
	a.done <- nil // for the cleanup, which must not close a.rate again
	if err != nil {
		t.Fatal(err)
	}
}

// pushScenario: minReplicaCount 0 with external-push. The first entry on
// an empty stream must bring 0 → 1 before KEDA's next poll could have: the
// polling interval is 60 s, so only the pushed activity explains it.
func pushScenario(t *testing.T, c *cluster, rdb *redis.Client) {
	const name = "push"
	const polling = 60 * time.Second
	c.deployment(t, name, 0)
	createGroup(t, rdb, name, "$")
	tl := c.startTimeline(name, depthMetric)
	defer tl.finish(t, "2. scale from zero by push (external-push)")
	c.scaledObject(t, name, "external-push", soOptions{min: 0, max: 5, polling: int(polling / time.Second)}, nil)
	created := time.Now()
	tl.note("ScaledObject created: min 0, pollingInterval %s, empty stream", polling)

	// The stream is open once flowscaler has evaluated the object (it
	// sends the activity at once) and KEDA calls the object Ready.
	waitFor(t, 60*time.Second, "ScaledObject push to be Ready with its activity stream open", func() error {
		if _, ok := c.decisionOf(name); !ok {
			return notYet("flowscaler has no decision for %s yet", name)
		}
		if !c.scaledObjectCondition(name, "Ready") {
			return notYet("not Ready")
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	if s := tl.observe("stream open; still idle"); s.replicas != 0 {
		t.Fatalf("spec.replicas = %d before any message, want 0", s.replicas)
	}

	if err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: name, Values: []any{"n", 1}}).Err(); err != nil {
		t.Fatalf("XADD %s: %v", name, err)
	}
	sent := time.Now()
	tl.note("first message added")
	nextPoll := created.Add(polling)
	tl.waitReplicas(t, 1, time.Until(nextPoll))
	took := time.Since(sent)
	tl.note("0 -> 1 in %.1fs after the message (next poll was due %.0fs after it)", took.Seconds(), nextPoll.Sub(sent).Seconds())
	fmt.Printf("  scale from zero: 0 -> 1 took %.1fs (pollingInterval %s)\n", took.Seconds(), polling)
}

// badMetadataScenario: flowscaler refuses targetAge "5x" with
// InvalidArgument, the message reaches the ScaledObject's events, and
// nothing scales.
//
// flowscaler serves the metric spec whatever the metadata (it depends on
// the name alone), so KEDA makes the HPA and polls; every GetMetrics and
// IsActive is refused, and KEDA records each refusal, in flowscaler's words,
// as a KEDAScalerFailed event on the ScaledObject: what `kubectl describe
// scaledobject bad` shows. No fallback is configured, so the Deployment
// keeps its replicas.
func badMetadataScenario(t *testing.T, c *cluster) {
	const name, replicas = "bad", 2
	const want = `invalid metadata for e2e/bad: targetAge = "5x": must be a duration like 30s`
	c.deployment(t, name, replicas)
	tl := c.startTimeline(name, depthMetric)
	defer tl.finish(t, "4. bad metadata")
	c.scaledObject(t, name, "external", soOptions{min: 1, max: 10, polling: 2}, map[string]string{"targetAge": "5x"})
	tl.note("ScaledObject created with targetAge: 5x; Deployment at %d", replicas)

	var event string
	waitFor(t, 90*time.Second, "a KEDAScalerFailed event on ScaledObject "+name+" with flowscaler's message", func() error {
		var err error
		event, err = c.scalerFailedEvent(name, want)
		return err
	})
	tl.note("event KEDAScalerFailed: %s", event)

	// Nothing scales while KEDA keeps polling and being refused.
	mark := tl.elapsed()
	time.Sleep(15 * time.Second)
	tl.note("after 15s")
	for _, s := range tl.since(mark) {
		if s.replicas != replicas {
			t.Errorf("at %.1fs spec.replicas = %d, want it to stay %d", s.at.Seconds(), s.replicas, replicas)
			break
		}
	}
	if hpa, err := c.kube.AutoscalingV2().HorizontalPodAutoscalers(testNamespace).Get(context.Background(), "keda-hpa-"+name, metav1.GetOptions{}); err == nil {
		for _, cond := range hpa.Status.Conditions {
			if cond.Type == "ScalingActive" {
				tl.note("HPA ScalingActive=%s: %s", cond.Status, cond.Message)
			}
		}
	}
}

// scalerFailedEvent finds a KEDAScalerFailed event about ScaledObject name
// whose message contains want, in either events API (KEDA writes
// events.k8s.io/v1; the core API shows the same objects).
func (c *cluster) scalerFailedEvent(name, want string) (string, error) {
	ctx := context.Background()
	evs, err := c.kube.EventsV1().Events(testNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	var seen []string
	for _, e := range evs.Items {
		if e.Regarding.Kind != "ScaledObject" || e.Regarding.Name != name {
			continue
		}
		if e.Reason == "KEDAScalerFailed" && strings.Contains(e.Note, want) {
			return e.Note, nil
		}
		seen = append(seen, e.Reason+": "+e.Note)
	}
	core, err := c.kube.CoreV1().Events(testNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	for _, e := range core.Items {
		if e.InvolvedObject.Kind == "ScaledObject" && e.InvolvedObject.Name == name && e.Reason == "KEDAScalerFailed" && strings.Contains(e.Message, want) {
			return e.Message, nil
		}
	}
	return "", notYet("no KEDAScalerFailed event containing %q; events about %s: %q", want, name, seen)
}

// prometheusScenario: 15 late entries; the consumers' measured processing
// time W decides: 1s → ceil(15 × 1 ÷ 5) = 3, 2s → 6. The configured
// processingTime (250ms, which would give 1) is only a fallback.
func prometheusScenario(t *testing.T, c *cluster, rdb *redis.Client) {
	const name, seed = "prom", 15
	c.exporter.set(time.Second)
	c.deployment(t, name, 1)
	addOldEntries(t, rdb, name, seed)
	createGroup(t, rdb, name, "0")
	tl := c.startTimeline(name, func(d decision) string {
		return fmt.Sprintf("W %gs (%s)", d.ProcessingSec, d.ProcessingFrom)
	})
	defer tl.finish(t, "5. processing time from Prometheus")
	tl.note("%d entries, 3h old; consumers report 1s per message", seed)
	c.scaledObject(t, name, "external", soOptions{min: 1, max: 10, polling: 2}, map[string]string{
		"stream":             name,
		"metrics":            "prometheus",
		"processingSelector": `service="e2e-consumer"`,
		"metricsWindow":      "5s",
		"processingTime":     "250ms",
	})
	tl.note("ScaledObject created: metrics from prometheus, configured processingTime 250ms")
	tl.waitReplicas(t, 3, 2*time.Minute)
	tl.note("target 3 = ceil(15 × 1s ÷ 5)")

	c.exporter.set(2 * time.Second)
	tl.note("consumers now report 2s per message")
	tl.waitReplicas(t, 6, 2*time.Minute)
	tl.note("target 6 = ceil(15 × 2s ÷ 5): twice the processing time, twice the replicas")
	c.exporter.set(0)
}

// outageScenario: 20 late entries → 4 replicas; then Redis stops.
// flowscaler serves its last good answer for staleAfter (10s), then
// Unavailable, and KEDA's fallback (6 replicas after 3 failures) takes
// over. spec.replicas is 4 or 6 throughout: never lower, never 0.
func outageScenario(t *testing.T, c *cluster, rdb *redis.Client) {
	const name, seed, want, fallback = "outage", 20, 4, 6
	c.deployment(t, name, 1)
	addOldEntries(t, rdb, name, seed)
	createGroup(t, rdb, name, "0")
	tl := c.startTimeline(name, func(d decision) string {
		m := depthMetric(d)
		if n := c.flowscalerCounter("flowscaler_stale_answers_total", `scaledobject="`+name+`"`); n > 0 {
			m += fmt.Sprintf(", %g stale", n)
		}
		// The other scenarios' objects are gone: every Unavailable is this one's.
		if n := c.flowscalerCounter("flowscaler_grpc_requests_total", `code="Unavailable"`); n > 0 {
			m += fmt.Sprintf(", %g unavail.", n)
		}
		if c.scaledObjectCondition(name, "Fallback") {
			m += ", fallback"
		}
		return m
	})
	defer tl.finish(t, "3. source outage")
	tl.note("%d entries, 3h old", seed)
	c.scaledObject(t, name, "external", soOptions{min: 1, max: 10, polling: 2, fallbackReplicas: fallback, failureThreshold: 3}, nil)
	tl.note("ScaledObject created: fallback %d replicas after 3 failures", fallback)
	tl.waitReplicas(t, want, 2*time.Minute)
	tl.note("at the target: %d = ceil(%d × 1s ÷ 5)", want, seed)

	mark := tl.elapsed()
	c.redis.kill()
	tl.note("redis-server killed")
	tl.waitReplicas(t, fallback, 3*time.Minute)
	tl.note("KEDA's fallback replicas in charge")
	time.Sleep(10 * time.Second)
	tl.note("10s later")
	for _, s := range tl.since(mark) {
		if s.replicas != want && s.replicas != fallback {
			t.Errorf("at %.1fs spec.replicas = %d during the outage, want %d (held) or %d (fallback)", s.at.Seconds(), s.replicas, want, fallback)
		}
	}
}

// deployment creates a Deployment whose pods never run (there is no
// kubelet): the HPA only needs its scale subresource and selector.
func (c *cluster) deployment(t *testing.T, name string, replicas int32) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					AutomountServiceAccountToken: new(false),
					Containers:                   []corev1.Container{{Name: "consumer", Image: "e2e.invalid/consumer:none"}},
				},
			},
		},
	}
	ctx := context.Background()
	if _, err := c.kube.AppsV1().Deployments(testNamespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating Deployment %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = c.dyn.Resource(scaledObjects).Namespace(testNamespace).Delete(ctx, name, metav1.DeleteOptions{})
		_ = c.kube.AppsV1().Deployments(testNamespace).Delete(ctx, name, metav1.DeleteOptions{})
	})
	// The HPA needs the selector in the scale subresource's status, which
	// the Deployment controller writes.
	waitFor(t, 30*time.Second, "Deployment "+name+" to be observed", func() error {
		got, err := c.kube.AppsV1().Deployments(testNamespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.Status.ObservedGeneration < got.Generation {
			return notYet("generation %d observed %d", got.Generation, got.Status.ObservedGeneration)
		}
		return nil
	})
}

type soOptions struct {
	min, max, polling                  int
	fallbackReplicas, failureThreshold int
}

// scaledObject creates a ScaledObject for the Deployment of the same name
// with a flowscaler trigger per metadata map (one when none is given); each
// map extends the stream's defaults.
func (c *cluster) scaledObject(t *testing.T, name, triggerType string, o soOptions, metadata ...map[string]string) {
	t.Helper()
	if len(metadata) == 0 {
		metadata = []map[string]string{nil}
	}
	var triggers []any
	for _, extra := range metadata {
		md := map[string]any{
			"scalerAddress": c.flowscalerGRPC,
			"source":        "redis-stream",
			"connection":    "local",
			"stream":        name,
			"group":         "workers",
		}
		for k, v := range extra {
			md[k] = v
		}
		triggers = append(triggers, map[string]any{"type": triggerType, "metadata": md})
	}
	spec := map[string]any{
		"scaleTargetRef":  map[string]any{"name": name},
		"pollingInterval": int64(o.polling),
		"cooldownPeriod":  int64(5),
		"minReplicaCount": int64(o.min),
		"maxReplicaCount": int64(o.max),
		"advanced": map[string]any{
			"horizontalPodAutoscalerConfig": map[string]any{
				"behavior": map[string]any{
					// flowscaler holds scale-down itself.
					"scaleDown": map[string]any{"stabilizationWindowSeconds": int64(0)},
				},
			},
		},
		"triggers": triggers,
	}
	if o.fallbackReplicas > 0 {
		spec["fallback"] = map[string]any{"failureThreshold": int64(o.failureThreshold), "replicas": int64(o.fallbackReplicas)}
	}
	so := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "keda.sh/v1alpha1",
		"kind":       "ScaledObject",
		"metadata":   map[string]any{"name": name, "namespace": testNamespace},
		"spec":       spec,
	}}
	if _, err := c.dyn.Resource(scaledObjects).Namespace(testNamespace).Create(context.Background(), so, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating ScaledObject %s: %v", name, err)
	}
}

func (c *cluster) scaledObjectCondition(name, typ string) bool {
	u, err := c.dyn.Resource(scaledObjects).Namespace(testNamespace).Get(context.Background(), name, metav1.GetOptions{})
	return err == nil && conditionTrue(u, typ)
}

// addOldEntries adds n entries to stream stamped hoursOld ago.
func addOldEntries(t *testing.T, rdb *redis.Client, stream string, n int) {
	t.Helper()
	ctx := context.Background()
	ms := time.Now().Add(-hoursOld).UnixMilli()
	pipe := rdb.Pipeline()
	for i := 1; i <= n; i++ {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, ID: fmt.Sprintf("%d-%d", ms, i), Values: []any{"n", i}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("XADD %d entries to %s: %v", n, stream, err)
	}
}

// createGroup creates the consumer group "workers" at id ("0": every entry
// undelivered; "$": none), creating the stream if needed.
func createGroup(t *testing.T, rdb *redis.Client, stream, id string) {
	t.Helper()
	if err := rdb.XGroupCreateMkStream(context.Background(), stream, "workers", id).Err(); err != nil {
		t.Fatalf("XGROUP CREATE %s workers %s MKSTREAM: %v", stream, id, err)
	}
}

// drain reads n entries as consumer e2e of group workers and acknowledges
// them.
func drain(t *testing.T, rdb *redis.Client, stream string, n int) {
	t.Helper()
	ctx := context.Background()
	res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "e2e", Streams: []string{stream, ">"}, Count: int64(n), Block: -1}).Result()
	if err != nil {
		t.Fatalf("XREADGROUP %s: %v", stream, err)
	}
	var ids []string
	for _, s := range res {
		for _, m := range s.Messages {
			ids = append(ids, m.ID)
		}
	}
	if len(ids) != n {
		t.Fatalf("XREADGROUP %s read %d entries, want %d", stream, len(ids), n)
	}
	if err := rdb.XAck(ctx, stream, "workers", ids...).Err(); err != nil {
		t.Fatalf("XACK %s: %v", stream, err)
	}
}
