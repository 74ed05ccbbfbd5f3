package policy

import "time"

// DefaultParams are the parameters used where neither the config nor the
// trigger says otherwise (the config layer's built-in defaults). Prefetch 8 /
// concurrency 4 is the cpu-bound starting point of MassTransit-style
// consumers; ×2 or +4 pods per 15 s is the HPA's own default scale-up.
func DefaultParams() Params {
	return Params{
		MinReplicas:       0,
		MaxReplicas:       50,
		TargetAge:         30 * time.Second,
		Concurrency:       4,
		Prefetch:          8,
		ProcessingTime:    100 * time.Millisecond,
		TargetUtilization: 0.8,
		ScaleDownCooldown: 5 * time.Minute,
		ActivationDepth:   0,
		RateWindow:        time.Minute,
		Mode:              ModeFlowscaler,
		MessageCount:      5,
		PanicWindow:       6 * time.Second,
		ScaleUpFactor:     2,
		ScaleUpPods:       4,
		ScaleUpPeriod:     15 * time.Second,
		StallDeliveries:   5,
		MaxFailureRate:    0.5,
		PodStartup:        30 * time.Second,
	}
}
