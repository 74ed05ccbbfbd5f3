package policy

import (
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestSanitize(t *testing.T) {
	tests := []struct {
		name string
		in   func(*Params)
		want func(*Params)
	}{{
		name: "sane params are kept",
	}, {
		name: "zero value gets fallbacks",
		in:   func(p *Params) { *p = Params{} },
		want: func(p *Params) {
			*p = withNewDefaults(Params{MaxReplicas: 1, Concurrency: 1, Prefetch: 1, TargetAge: 30 * time.Second,
				ProcessingTime: 100 * time.Millisecond, TargetUtilization: 0.8, RateWindow: time.Minute})
		},
	}, {
		name: "negatives",
		in: func(p *Params) {
			p.MinReplicas, p.MaxReplicas, p.Concurrency, p.Prefetch = -1, -1, -1, -1
			p.TargetAge, p.ProcessingTime, p.ScaleDownCooldown, p.RateWindow = -1, -1, -1, -1
			p.TargetUtilization, p.ActivationDepth = -0.5, -1
		},
		want: func(p *Params) {
			p.MinReplicas, p.MaxReplicas, p.Concurrency, p.Prefetch = 0, 1, 1, 1
			p.TargetAge, p.ProcessingTime, p.ScaleDownCooldown, p.RateWindow = 30*time.Second, 100*time.Millisecond, 0, time.Minute
			p.TargetUtilization, p.ActivationDepth = 0.8, 0
		},
	}, {
		name: "NaN floats",
		in:   func(p *Params) { p.TargetUtilization, p.ActivationDepth = math.NaN(), math.NaN() },
		want: func(p *Params) { p.TargetUtilization, p.ActivationDepth = 0.8, 0 },
	}, {
		name: "utilisation above 1 is 1",
		in:   func(p *Params) { p.TargetUtilization = 1.5 },
		want: func(p *Params) { p.TargetUtilization = 1 },
	}, {
		name: "max below min is raised to min",
		in:   func(p *Params) { p.MinReplicas, p.MaxReplicas = 7, 3 },
		want: func(p *Params) { p.MinReplicas, p.MaxReplicas = 7, 7 },
	}, {
		name: "prefetch below concurrency is raised",
		in:   func(p *Params) { p.Concurrency, p.Prefetch = 16, 8 },
		want: func(p *Params) { p.Concurrency, p.Prefetch = 16, 16 },
	}, {
		name: "replica counts fit int32",
		in:   func(p *Params) { p.MinReplicas, p.MaxReplicas = math.MaxInt, math.MaxInt },
		want: func(p *Params) { p.MinReplicas, p.MaxReplicas = math.MaxInt32, math.MaxInt32 },
	}, {
		name: "new fields: nonsense gets fallbacks",
		in: func(p *Params) {
			p.Mode, p.MessageCount, p.DeadLetterAfter, p.LockDuration, p.PodStartup = "bogus", math.Inf(1), -1, -1, -1
			p.PanicWindow, p.ScaleUpFactor, p.ScaleUpPods, p.ScaleUpPeriod = -1, math.NaN(), 0, 0
			p.StallDeliveries, p.MaxFailureRate, p.Kind = 1, 1.5, "gpu-bound"
		},
		want: func(p *Params) { p.DeadLetterAfter, p.LockDuration, p.PodStartup = 0, 0, 0 },
	}, {
		name: "new fields: sane values are kept, a huge factor is capped",
		in: func(p *Params) {
			p.Mode, p.MessageCount, p.ScaleUpFactor, p.Kind, p.MaxFailureRate = ModeShadow, 50, 1e9, KindIOBound, 1
		},
		want: func(p *Params) {
			p.Mode, p.MessageCount, p.ScaleUpFactor, p.Kind, p.MaxFailureRate = ModeShadow, 50, 1000, KindIOBound, 1
		},
	}, {
		name: "infinite activation depth is kept",
		in:   func(p *Params) { p.ActivationDepth = math.Inf(1) },
		want: func(p *Params) { p.ActivationDepth = math.Inf(1) },
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, want := testParams(), testParams()
			if tt.in != nil {
				tt.in(&in)
			}
			if tt.want != nil {
				tt.want(&want)
			}
			got := in.Sanitize()
			if diff := cmp.Diff(want, got, cmpopts.EquateNaNs()); diff != "" {
				t.Errorf("Sanitize() mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(got, got.Sanitize()); diff != "" {
				t.Errorf("Sanitize() not idempotent (-once +twice):\n%s", diff)
			}
		})
	}
}

// withNewDefaults sets the fallbacks of the fields Sanitize fills in when unset.
func withNewDefaults(p Params) Params {
	p.Mode, p.MessageCount, p.PanicWindow = ModeFlowscaler, 5, 6*time.Second
	p.ScaleUpFactor, p.ScaleUpPods, p.ScaleUpPeriod = 2, 4, 15*time.Second
	p.StallDeliveries, p.MaxFailureRate = 5, 0.5
	return p
}
