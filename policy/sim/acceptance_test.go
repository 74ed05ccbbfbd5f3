package sim

import (
	"strings"
	"testing"

	"github.com/flowscaler/flowscaler/policy"
)

// TestAcceptance replays every built-in trace with flowscaler's defaults
// and holds flowscaler to its promises against the baselines, each
// deployed as its own documentation recommends, in the same model:
//
//   - never worse than KEDA's queue-length scaler (messageCount 5 and 50):
//     no more seconds over the age objective, at most 5% more replica-seconds;
//   - clearly better on spike, batch and slow-consumer: 20% fewer
//     replica-seconds or half the time over the objective, against each
//     baseline; on poison and saturation half the replica-seconds of
//     messageCount 5, with a reason saying why it held;
//   - close to the limit: on traces without failures or a saturating
//     dependency at most 1.5× the oracle's replica-seconds, and on steady
//     and diurnal load the objective met 99% of the seconds after the first
//     scale-up.
func TestAcceptance(t *testing.T) {
	clearly := map[string]bool{"spike": true, "batch": true, "slow-consumer": true}
	stalls := map[string]bool{"poison": true, "saturation": true}
	reachable := map[string]bool{"steady": true, "diurnal": true}
	for _, name := range BuiltinNames() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tr, err := Builtin(name)
			if err != nil {
				t.Fatal(err)
			}
			sc := DefaultScenario()
			sc.MaxReplicas = tr.MaxReplicas
			c := Compare(tr, sc, policy.DefaultParams(), Options{})
			fs, _ := c.Result("flowscaler")
			f := fs.Report
			for _, r := range c.Results[1:] {
				b := r.Report
				t.Logf("%-22s over %5d  replica-s %9.0f  |  flowscaler over %5d  replica-s %9.0f", r.Policy, b.SecondsOverObjective, b.ReplicaSeconds, f.SecondsOverObjective, f.ReplicaSeconds)
				if strings.HasPrefix(r.Policy, "keda-queue-length-") {
					if f.SecondsOverObjective > b.SecondsOverObjective {
						t.Errorf("worse than %s: %d s over the objective, it %d", r.Policy, f.SecondsOverObjective, b.SecondsOverObjective)
					}
					if f.ReplicaSeconds > 1.05*b.ReplicaSeconds {
						t.Errorf("worse than %s: %.0f replica-seconds, more than 105%% of its %.0f", r.Policy, f.ReplicaSeconds, b.ReplicaSeconds)
					}
				}
				if clearly[name] && f.ReplicaSeconds > 0.8*b.ReplicaSeconds && float64(f.SecondsOverObjective) > 0.5*float64(b.SecondsOverObjective) {
					t.Errorf("not clearly better than %s: %.0f replica-seconds (it %.0f), %d s over the objective (it %d)",
						r.Policy, f.ReplicaSeconds, b.ReplicaSeconds, f.SecondsOverObjective, b.SecondsOverObjective)
				}
				if stalls[name] && r.Policy == "keda-queue-length-5" && f.ReplicaSeconds > 0.5*b.ReplicaSeconds {
					t.Errorf("%.0f replica-seconds, more than half of %s's %.0f", f.ReplicaSeconds, r.Policy, b.ReplicaSeconds)
				}
			}
			if stalls[name] && !strings.Contains(f.StallReason, "scaling will not help") {
				t.Errorf("no reason says why flowscaler held; first stall reason %q", f.StallReason)
			}
			if !stalls[name] && f.StalledDecisions > 0 {
				t.Errorf("%d decisions held as stalled on a trace where scaling helps: %s", f.StalledDecisions, f.StallReason)
			}
			if tr.FailureFree() && tr.Downstream == 0 {
				if ratio := f.ReplicaSeconds / c.OracleReplicaSeconds; ratio > 1.5 {
					t.Errorf("%.0f replica-seconds = %.2f × the oracle's %.0f, want <= 1.5", f.ReplicaSeconds, ratio, c.OracleReplicaSeconds)
				}
			}
			if reachable[name] && f.ObjectiveMetAfterFirstScaleUp < 0.99 {
				t.Errorf("objective met %.2f%% of the %d s after the first scale-up, want >= 99%%", 100*f.ObjectiveMetAfterFirstScaleUp, f.SecondsAfterFirstScaleUp)
			}
		})
	}
}

// BenchmarkRunDiurnal is one policy over the 24-hour trace (86,400 steps).
func BenchmarkRunDiurnal(b *testing.B) {
	tr, _ := Builtin("diurnal")
	sc := DefaultScenario()
	p := FlowscalerParams(policy.DefaultParams(), sc, tr.Points[0].ProcessingTime)
	for b.Loop() {
		Run(tr, sc, &Flowscaler{Params: p, Deploy: FlowscalerDeployment()}, Options{})
	}
}

// TestCompareShadow: with a shadow-mode config the comparison replays both
// what is served (the classic answer) and what flowscaler would have done.
func TestCompareShadow(t *testing.T) {
	tr, _ := Builtin("batch")
	tr.Points = tr.Points[:3600]
	p := policy.DefaultParams()
	p.Mode, p.MessageCount = policy.ModeShadow, 50
	c := Compare(tr, DefaultScenario(), p, Options{})
	shadow, ok := c.Result("flowscaler-shadow")
	own, ok2 := c.Result("flowscaler")
	if !ok || !ok2 {
		t.Fatalf("results %v: want flowscaler-shadow and flowscaler", c.Results)
	}
	if shadow.Report.ReplicaSeconds <= own.Report.ReplicaSeconds {
		t.Errorf("shadow (classic answer served) used %.0f replica-seconds, flowscaler %.0f: want the classic answer to cost more", shadow.Report.ReplicaSeconds, own.Report.ReplicaSeconds)
	}
	var owned bool
	for _, x := range shadow.Series.Own {
		owned = owned || x >= 0
	}
	if !owned {
		t.Error("the shadow run recorded none of flowscaler's own answers")
	}
}
