package sim

import (
	"fmt"
	"math"
	"time"

	"github.com/flowscaler/flowscaler/policy"
)

// Policy is an autoscaling policy as KEDA deploys it: a metric value with
// an AverageValue target per pod for the HPA, and an activity check.
type Policy interface {
	Name() string
	Deployment() Deployment
	// Evaluate answers at now from one observation. The HPA wants
	// ceil(Value ÷ Target) pods.
	Evaluate(o Observation, now time.Time) Answer
}

// Answer is a policy's reply to KEDA.
type Answer struct {
	Value, Target float64
	Active        bool
	// Own is the policy's own replica answer when it serves something else
	// (flowscaler in shadow mode); -1 otherwise.
	Own    int
	Reason string
}

// QueueLength is KEDA's built-in queue-length scaling: AverageValue on the
// visible queue depth with a messageCount target per pod, active when the
// depth exceeds the activation length (0).
type QueueLength struct {
	MessageCount float64
	Deploy       Deployment
}

func (q *QueueLength) Name() string           { return fmt.Sprintf("keda-queue-length-%g", q.MessageCount) }
func (q *QueueLength) Deployment() Deployment { return q.Deploy }
func (q *QueueLength) Evaluate(o Observation, _ time.Time) Answer {
	return Answer{Value: o.Depth, Target: q.MessageCount, Active: o.Depth > 0, Own: -1}
}

// AWSBacklog is the AWS backlog-per-instance rule: target backlog per
// instance = acceptable latency ÷ processing time per message, on the
// visible queue depth.
type AWSBacklog struct {
	AcceptableLatency, ProcessingTime time.Duration
	Deploy                            Deployment
}

func (a *AWSBacklog) Name() string           { return "aws-backlog" }
func (a *AWSBacklog) Deployment() Deployment { return a.Deploy }
func (a *AWSBacklog) Evaluate(o Observation, _ time.Time) Answer {
	return Answer{Value: o.Depth, Target: a.AcceptableLatency.Seconds() / a.ProcessingTime.Seconds(), Active: o.Depth > 0, Own: -1}
}

// Flowscaler runs policy.Decide, the code the daemon runs, on every
// evaluation, keeping its State between them.
type Flowscaler struct {
	Label  string // name in reports; "flowscaler" when empty
	Params policy.Params
	Deploy Deployment
	state  policy.State
}

func (f *Flowscaler) Name() string {
	if f.Label == "" {
		return "flowscaler"
	}
	return f.Label
}
func (f *Flowscaler) Deployment() Deployment { return f.Deploy }
func (f *Flowscaler) Evaluate(o Observation, now time.Time) Answer {
	d, next := policy.Decide(f.Params, o.Inputs(), f.state, now)
	f.state = next
	a := Answer{Value: float64(d.Replicas), Target: 1, Active: d.Active, Own: -1, Reason: d.Reason}
	if f.Params.Mode == policy.ModeShadow {
		a.Own = d.Terms.PolicyReplicas
	}
	return a
}

// Inputs are the observation as the daemon hands it to the policy.
func (o Observation) Inputs() policy.Inputs {
	return policy.Inputs{
		Depth: o.Depth, InFlight: o.InFlight, OldestAge: o.OldestAge, MaxDeliveries: o.MaxDeliveries,
		ProducedTotal: o.ProducedTotal, ConsumedTotal: o.ConsumedTotal,
		ConsumptionRate: o.ConsumptionRate, FailureRate: o.FailureRate,
		ProcessingTime: o.ProcessingTime, ProcessingTimeP95: o.ProcessingTimeP95,
		ReadyReplicas: o.ReadyReplicas,
	}
}

// FlowscalerDeployment is the reference ScaledObject of flowscaler
// (deploy/examples): polling every 15 s, cooldown 300 s, and an HPA that
// leaves stabilisation to flowscaler: no scale-down window and no tolerance
// (the per-HPA tolerance of Kubernetes 1.33+), scale-up as fast as
// flowscaler's own limit allows.
func FlowscalerDeployment() Deployment {
	d := DefaultDeployment()
	d.PollingInterval = 15 * time.Second
	d.HPA.ScaleUp.Tolerance = 0
	d.HPA.ScaleDown.Tolerance = 0
	d.HPA.ScaleDown.Stabilization = 0
	d.HPA.ScaleUp.Policies = []HPAPolicy{{Percent: true, Value: 900, Period: 15 * time.Second}}
	return d
}

// FlowscalerDeployments are the deployments CompareWith can be given by
// name: "reference" (FlowscalerDeployment), "tolerance-0.1" (the same on a
// cluster without the per-HPA tolerance) and "hpa-default" (no HPA
// behaviour set, polling every 15 s).
func FlowscalerDeployments() map[string]Deployment {
	tol := FlowscalerDeployment()
	tol.HPA.ScaleUp.Tolerance, tol.HPA.ScaleDown.Tolerance = 0.1, 0.1
	def := DefaultDeployment()
	def.PollingInterval = 15 * time.Second
	return map[string]Deployment{"reference": FlowscalerDeployment(), "tolerance-0.1": tol, "hpa-default": def}
}

// Baselines are KEDA's queue-length scaler with messageCount 5 (its
// default) and 50, and the AWS backlog-per-instance rule, each deployed
// with KEDA's defaults. w is the processing time the AWS target is set for.
func Baselines(sc Scenario, w time.Duration) []Policy {
	sc = sc.withDefaults()
	return []Policy{
		&QueueLength{MessageCount: 5, Deploy: DefaultDeployment()},
		&QueueLength{MessageCount: 50, Deploy: DefaultDeployment()},
		&AWSBacklog{AcceptableLatency: sc.TargetAge, ProcessingTime: w, Deploy: DefaultDeployment()},
	}
}

// FlowscalerParams adapts p to the scenario, as an operator would set the
// trigger metadata for these consumers: the scenario's objective,
// concurrency, replica bounds, broker limits and pod start-up, and w as the
// configured processing time.
func FlowscalerParams(p policy.Params, sc Scenario, w time.Duration) policy.Params {
	sc = sc.withDefaults()
	p.TargetAge = sc.TargetAge
	if p.Concurrency != sc.Concurrency {
		ratio := math.Max(1, float64(p.Prefetch)/float64(max(1, p.Concurrency)))
		p.Concurrency = sc.Concurrency
		p.Prefetch = int(math.Ceil(ratio * float64(sc.Concurrency)))
	}
	p.MinReplicas, p.MaxReplicas = sc.MinReplicas, sc.MaxReplicas
	p.ProcessingTime = w
	p.DeadLetterAfter = sc.DeadLetterAfter
	p.LockDuration = sc.LockDuration
	p.PodStartup = sc.PodStartup
	return p
}
