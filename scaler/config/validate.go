package config

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flowscaler/flowscaler/policy"
)

// Duration is a time.Duration written as "30s", "5m" or "250ms".
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML accepts only Go duration strings, so `targetAge: 30` (seconds?
// milliseconds?) is refused instead of guessed.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q: %w", n.Line, n.Value, err)
	}
	*d = Duration(v)
	return nil
}

// ParseDuration parses a Go duration; the error states the rule.
func ParseDuration(s string) (time.Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("must be a duration like 30s")
	}
	return v, nil
}

// ParseInt parses a whole number; the error states the rule.
func ParseInt(s string) (int, error) {
	v, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("must be a whole number")
	}
	return v, nil
}

// ParseFloat parses a finite number; the error states the rule.
func ParseFloat(s string) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("must be a finite number")
	}
	return v, nil
}

// Validate checks each field that p sets, naming it with prefix
// ("policy.profiles.io-bound." in a file, "" for trigger metadata).
func (p Profile) Validate(prefix string) []error {
	var errs []error
	bad := func(field string, value any, rule string) {
		errs = append(errs, fmt.Errorf("%s%s = \"%v\": %s", prefix, field, value, rule))
	}
	if v := p.MinReplicas; v != nil && *v < 0 {
		bad("minReplicas", *v, "must be >= 0")
	}
	if v := p.MaxReplicas; v != nil && (*v < 1 || *v > MaxReplicasLimit) {
		bad("maxReplicas", *v, fmt.Sprintf("must be between 1 and %d", MaxReplicasLimit))
	}
	if v := p.TargetAge; v != nil && time.Duration(*v) < time.Second {
		bad("targetAge", *v, "must be >= 1s")
	}
	if v := p.Concurrency; v != nil && (*v < 1 || *v > 100000) {
		bad("concurrency", *v, "must be between 1 and 100000")
	}
	if v := p.Prefetch; v != nil && (*v < 1 || *v > 1000000) {
		bad("prefetch", *v, "must be between 1 and 1000000")
	}
	if v := p.ProcessingTime; v != nil && *v <= 0 {
		bad("processingTime", *v, "must be > 0")
	}
	if v := p.TargetUtilization; v != nil && !(*v > 0 && *v <= 1) {
		bad("targetUtilization", *v, "must be > 0 and <= 1")
	}
	if v := p.ScaleDownCooldown; v != nil && *v < 0 {
		bad("scaleDownCooldown", *v, "must be >= 0")
	}
	if v := p.ActivationDepth; v != nil && *v < 0 {
		bad("activationDepth", *v, "must be >= 0")
	}
	if v := p.RateWindow; v != nil && time.Duration(*v) < 2*time.Second {
		bad("rateWindow", *v, "must be >= 2s")
	}
	if v := p.Mode; v != nil && *v != policy.ModeFlowscaler && *v != policy.ModeShadow {
		bad("mode", *v, "must be flowscaler or shadow")
	}
	if v := p.MessageCount; v != nil && !(*v > 0) {
		bad("messageCount", *v, "must be > 0")
	}
	if v := p.Kind; v != nil && *v != "" && *v != policy.KindCPUBound && *v != policy.KindIOBound && *v != policy.KindMemoryHeavy {
		bad("kind", *v, "must be cpu-bound, io-bound or memory-heavy")
	}
	if v := p.PanicWindow; v != nil && time.Duration(*v) < time.Second {
		bad("panicWindow", *v, "must be >= 1s")
	}
	if v := p.ScaleUpFactor; v != nil && !(*v >= 1 && *v <= 1000) {
		bad("scaleUpFactor", *v, "must be between 1 and 1000")
	}
	if v := p.ScaleUpPods; v != nil && (*v < 1 || *v > MaxReplicasLimit) {
		bad("scaleUpPods", *v, fmt.Sprintf("must be between 1 and %d", MaxReplicasLimit))
	}
	if v := p.ScaleUpPeriod; v != nil && time.Duration(*v) < time.Second {
		bad("scaleUpPeriod", *v, "must be >= 1s")
	}
	if v := p.StallDeliveries; v != nil && *v < 2 {
		bad("stallDeliveries", *v, "must be >= 2")
	}
	if v := p.MaxFailureRate; v != nil && !(*v > 0 && *v <= 1) {
		bad("maxFailureRate", *v, "must be > 0 and <= 1")
	}
	if v := p.DeadLetterAfter; v != nil && *v < 0 {
		bad("deadLetterAfter", *v, "must be >= 0 (0: unknown)")
	}
	if v := p.LockDuration; v != nil && *v < 0 {
		bad("lockDuration", *v, "must be >= 0 (0: unknown)")
	}
	if v := p.PodStartup; v != nil && *v < 0 {
		bad("podStartup", *v, "must be >= 0")
	}
	return errs
}

// MaxReplicasLimit keeps a typo from asking the HPA for millions of pods.
const MaxReplicasLimit = 10000

// ValidateParams checks the rules that span fields, after every layer has
// been applied.
func ValidateParams(prefix string, p policy.Params) []error {
	var errs []error
	if p.MinReplicas > p.MaxReplicas {
		errs = append(errs, fmt.Errorf("%sminReplicas = \"%d\": must be <= maxReplicas (%d)", prefix, p.MinReplicas, p.MaxReplicas))
	}
	if p.Prefetch < p.Concurrency {
		errs = append(errs, fmt.Errorf("%sprefetch = \"%d\": must be >= concurrency (%d), or a pod can never fill its slots", prefix, p.Prefetch, p.Concurrency))
	}
	return errs
}
