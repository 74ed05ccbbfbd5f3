package simulate

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flowscaler/flowscaler/policy"
	"github.com/flowscaler/flowscaler/policy/sim"
	"github.com/flowscaler/flowscaler/scaler/config"
)

// Options are what the command needs from main.
type Options struct {
	Args           []string
	Stdout, Stderr io.Writer
	// Terminal reports whether Stderr is a terminal: the progress bar is
	// drawn only there (or with --progress).
	Terminal bool
}

// Run parses the flags, replays the trace and writes the outputs asked for.
func Run(o Options) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(o.Stderr)
	traceSpec := fs.String("trace", "", "builtin:NAME ("+strings.Join(sim.BuiltinNames(), ", ")+") or a CSV file: seconds,arrivals_per_second[,processing_ms][,failure_rate]")
	cfgPath := fs.String("config", "", "flowscaler config file whose policy flowscaler runs (default: the built-in configuration)")
	profile := fs.String("profile", "", "profile of the config to run (default: policy.defaults)")
	targetAge := fs.Duration("target-age", 30*time.Second, "message-age objective, for every policy")
	concurrency := fs.Int("concurrency", 4, "messages one pod processes at once")
	startup := fs.Duration("pod-startup", 30*time.Second, "how long a new pod takes to become ready")
	maxReplicas := fs.Int("max-replicas", 0, "maxReplicaCount (default: the trace's own, 100 for CSV traces)")
	seed := fs.Uint64("seed", 1, "seed of the Poisson arrivals; every policy sees the same ones")
	jsonOut := fs.String("json", "", "write the JSON report here")
	plotOut := fs.String("plot", "", "write the plot here (.svg or .png; the other format is written next to it)")
	progress := fs.Bool("progress", o.Terminal, "draw a progress bar on stderr (default: when stderr is a terminal)")
	hpaName := fs.String("flowscaler-hpa", "reference", "HPA behaviour flowscaler runs with: reference (its ScaledObject: no stabilisation window, tolerance 0), tolerance-0.1 (a cluster without the per-HPA tolerance) or hpa-default")
	if err := fs.Parse(o.Args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("simulate: unexpected argument %q", fs.Arg(0))
	}
	if *traceSpec == "" {
		return errors.New("--trace is required: builtin:NAME or a CSV file")
	}
	sc, err := scenario(*targetAge, *concurrency, *startup, *maxReplicas, *seed)
	if err != nil {
		return err
	}
	params, err := flowscalerParams(*cfgPath, *profile)
	if err != nil {
		return err
	}
	dep, ok := sim.FlowscalerDeployments()[*hpaName]
	if !ok {
		return fmt.Errorf("--flowscaler-hpa = %q: must be reference, tolerance-0.1 or hpa-default", *hpaName)
	}
	tr, err := loadTrace(*traceSpec, params.ProcessingTime)
	if err != nil {
		return err
	}
	if err := tr.Validate(); err != nil {
		return err
	}
	if sc.MaxReplicas == 0 {
		sc.MaxReplicas = tr.MaxReplicas
	}
	var opts sim.Options
	var bar *progressBar
	if *progress {
		bar = &progressBar{w: o.Stderr, label: filepath.Base(tr.Name)}
		opts.Progress = bar.update
	}
	c := sim.CompareWith(tr, sc, params, dep, opts)
	if bar != nil {
		bar.done()
	}
	writeTable(o.Stdout, c)
	if *jsonOut != "" {
		if err := writeJSON(*jsonOut, c); err != nil {
			return err
		}
	}
	if *plotOut != "" {
		if err := writePlots(*plotOut, c); err != nil {
			return err
		}
	}
	return nil
}

func scenario(targetAge time.Duration, c int, startup time.Duration, maxReplicas int, seed uint64) (sim.Scenario, error) {
	var errs []error
	if targetAge < time.Second {
		errs = append(errs, fmt.Errorf("--target-age = %q: must be >= 1s", targetAge))
	}
	if c < 1 || c > 100000 {
		errs = append(errs, fmt.Errorf("--concurrency = \"%d\": must be between 1 and 100000", c))
	}
	if startup < 0 || startup > time.Hour {
		errs = append(errs, fmt.Errorf("--pod-startup = %q: must be between 0s and 1h", startup))
	}
	if maxReplicas < 0 || maxReplicas > config.MaxReplicasLimit {
		errs = append(errs, fmt.Errorf("--max-replicas = \"%d\": must be between 1 and %d", maxReplicas, config.MaxReplicasLimit))
	}
	sc := sim.DefaultScenario()
	sc.TargetAge, sc.Concurrency, sc.PodStartup, sc.MaxReplicas, sc.Seed = targetAge, c, startup, maxReplicas, seed
	return sc, errors.Join(errs...)
}

// flowscalerParams are the policy parameters of a config file's defaults or
// profile, resolved the way the daemon resolves them.
func flowscalerParams(path, profile string) (policy.Params, error) {
	var cfg *config.Config
	var err error
	if path == "" {
		cfg, err = config.Parse(config.DefaultYAML(), os.LookupEnv, os.ReadFile)
	} else {
		cfg, err = config.Load(path)
	}
	if err != nil {
		return policy.Params{}, err
	}
	return cfg.Params(profile)
}

// writeTable prints one row per policy, then the oracle.
func writeTable(w io.Writer, c sim.Comparison) {
	sc := c.Scenario
	fmt.Fprintf(w, "trace %s: %s\n", c.Trace.Name, c.Trace.Description)
	fmt.Fprintf(w, "%v, target age %v, %d slots per pod, pod start-up %v, max %d replicas, seed %d\n\n",
		c.Trace.Duration(), sc.TargetAge, sc.Concurrency, sc.PodStartup, sc.MaxReplicas, sc.Seed)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tp50 age s\tp95 age s\tp99 age s\ts over objective\tmet after 1st scale-up\tmax backlog\treplica-seconds\t× oracle\tpeak\tscale events\tdead-lettered\t")
	for _, r := range c.Results {
		p := r.Report
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%d\t%.2f%%\t%.0f\t%.0f\t%.2f\t%d\t%d\t%.0f\t\n", r.Policy,
			p.P50AgeSeconds, p.P95AgeSeconds, p.P99AgeSeconds, p.SecondsOverObjective, 100*p.ObjectiveMetAfterFirstScaleUp,
			p.MaxBacklog, p.ReplicaSeconds, p.ReplicaSeconds/c.OracleReplicaSeconds, p.PeakReplicas, p.ScaleEvents, p.DeadLettered)
	}
	fmt.Fprintf(tw, "oracle\t\t\t\t\t\t\t%.0f\t1.00\t\t\t\t\n", c.OracleReplicaSeconds)
	tw.Flush()
	for _, r := range c.Results {
		if r.Report.StallReason != "" {
			fmt.Fprintf(w, "\n%s held %d times; first reason: %s\n", r.Policy, r.Report.StalledDecisions, r.Report.StallReason)
		}
	}
}

// report is the JSON form: one object per policy by name, and the oracle.
func report(c sim.Comparison) map[string]any {
	sc := c.Scenario
	out := map[string]any{
		"trace":                c.Trace.Name,
		"oracleReplicaSeconds": c.OracleReplicaSeconds,
		"scenario": map[string]any{
			"durationSeconds": c.Trace.Duration().Seconds(), "targetAgeSeconds": sc.TargetAge.Seconds(),
			"concurrency": sc.Concurrency, "podStartupSeconds": sc.PodStartup.Seconds(), "maxReplicas": sc.MaxReplicas,
			"seed": sc.Seed,
		},
	}
	for _, r := range c.Results {
		out[r.Policy] = r.Report
	}
	return out
}

func writeJSON(path string, c sim.Comparison) error {
	b, err := json.MarshalIndent(report(c), "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--json = %q: %w", path, err)
	}
	return nil
}

// writePlots writes path and its twin in the other format (.svg and .png).
func writePlots(path string, c sim.Comparison) error {
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".svg" && ext != ".png" {
		return fmt.Errorf("--plot = %q: must end in .svg or .png", path)
	}
	base := strings.TrimSuffix(path, filepath.Ext(path))
	for _, p := range []string{base + ".svg", base + ".png"} {
		if err := plotFile(p, c); err != nil {
			return fmt.Errorf("--plot = %q: %w", path, err)
		}
	}
	return nil
}

// progressBar draws `label [#####.....] 45%` on one line.
type progressBar struct {
	w     io.Writer
	label string
	last  int
}

func (b *progressBar) update(done, total int) {
	pct := 100 * done / max(total, 1)
	if pct == b.last {
		return
	}
	b.last = pct
	fill := pct * 30 / 100
	fmt.Fprintf(b.w, "\r%s [%s%s] %3d%%", b.label, strings.Repeat("#", fill), strings.Repeat(".", 30-fill), pct)
}

func (b *progressBar) done() { fmt.Fprintln(b.w) }
