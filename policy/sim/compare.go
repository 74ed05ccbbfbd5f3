package sim

import "github.com/flowscaler/flowscaler/policy"

// Comparison is every policy replayed on one trace under one scenario.
type Comparison struct {
	Trace    Trace
	Scenario Scenario
	// OracleReplicaSeconds is the lower bound of Oracle.
	OracleReplicaSeconds float64
	// Results are flowscaler's first, then the baselines'.
	Results []Result
}

// Result returns the result of the named policy, or false.
func (c Comparison) Result(name string) (Result, bool) {
	for _, r := range c.Results {
		if r.Policy == name {
			return r, true
		}
	}
	return Result{}, false
}

// Compare replays tr under sc with flowscaler (params p adapted to the
// scenario by FlowscalerParams, deployed as FlowscalerDeployment) and the
// Baselines, each deployed as its own documentation recommends. In shadow
// mode flowscaler runs twice: "flowscaler-shadow" serves the classic answer
// as deployed, and "flowscaler" what flowscaler itself would have served.
// The AWS target is set for the trace's first processing time.
func Compare(tr Trace, sc Scenario, p policy.Params, o Options) Comparison {
	return CompareWith(tr, sc, p, FlowscalerDeployment(), o)
}

// CompareWith is Compare with flowscaler deployed as dep instead of its
// reference ScaledObject: to see what a cluster without the per-HPA
// tolerance, or an HPA left at its defaults, does to it.
func CompareWith(tr Trace, sc Scenario, p policy.Params, dep Deployment, o Options) Comparison {
	sc = sc.withDefaults()
	w := tr.Points[0].ProcessingTime
	fp := FlowscalerParams(p, sc, w)
	var pols []Policy
	if fp.Mode == policy.ModeShadow {
		pols = append(pols, &Flowscaler{Label: "flowscaler-shadow", Params: fp, Deploy: DefaultDeployment()})
		fp.Mode = policy.ModeFlowscaler
	}
	pols = append([]Policy{&Flowscaler{Params: fp, Deploy: dep}}, pols...)
	pols = append(pols, Baselines(sc, w)...)
	c := Comparison{Trace: tr, Scenario: sc, OracleReplicaSeconds: Oracle(tr, sc)}
	for i, pol := range pols {
		run := o
		if o.Progress != nil {
			steps := len(tr.Points)
			run.Progress = func(done, _ int) { o.Progress(i*steps+done, len(pols)*steps) }
		}
		c.Results = append(c.Results, Run(tr, sc, pol, run))
	}
	return c
}
