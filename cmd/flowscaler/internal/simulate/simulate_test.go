package simulate

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flowscaler/flowscaler/policy/sim"
)

func TestParseCSV(t *testing.T) {
	tr, err := parseCSV(strings.NewReader("seconds,arrivals_per_second,processing_ms,failure_rate\n# comment\n0,10\n2,20,250\n4,5,,0.1\n"), "t.csv", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ms := time.Millisecond
	want := []sim.Point{
		{Rate: 10, ProcessingTime: 100 * ms}, {Rate: 10, ProcessingTime: 100 * ms},
		{Rate: 20, ProcessingTime: 250 * ms}, {Rate: 20, ProcessingTime: 250 * ms},
		{Rate: 5, ProcessingTime: 100 * ms, FailureRate: 0.1},
	}
	if diff := cmp.Diff(want, tr.Points); diff != "" {
		t.Errorf("points (-want +got):\n%s", diff)
	}
}

func TestParseCSVErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "t.csv: no rows: want seconds,arrivals_per_second[,processing_ms][,failure_rate]"},
		{"bad header", "seconds,rate\n0,1\n", `t.csv line 1: header column 2 = "rate": must be arrivals_per_second`},
		{"bad seconds", "0,1\nx,2\n", `t.csv line 2: seconds = "x": must be a whole number between 0 and 604799`},
		{"not increasing", "0,1\n5,2\n5,3\n", `t.csv line 3: seconds = "5": must be greater than the previous row's 5`},
		{"negative rate", "0,-1\n", `t.csv line 1: arrivals_per_second = "-1": must be a number between 0 and 10000000`},
		{"NaN rate", "0,NaN\n", `t.csv line 1: arrivals_per_second = "NaN": must be a number between 0 and 10000000`},
		{"zero processing", "0,1,0\n", `t.csv line 1: processing_ms = "0": must be a number of milliseconds between 0.001 and 3600000`},
		{"failure above 1", "0,1,10,1.5\n", `t.csv line 1: failure_rate = "1.5": must be a fraction between 0 and 1`},
		{"too many columns", "0,1,2,0,9\n", "t.csv line 1: 5 columns: want seconds,arrivals_per_second[,processing_ms][,failure_rate]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseCSV(strings.NewReader(tt.in), "t.csv", 100*time.Millisecond)
			if err == nil || err.Error() != tt.want {
				t.Errorf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func FuzzParseCSV(f *testing.F) {
	f.Add("seconds,arrivals_per_second\n0,10\n60,20\n")
	f.Add("0,1,250,0.5\n10,0\n")
	f.Add("0,1e7,3600000,1\n604799,0\n")
	f.Add("5,1\n4,1\n")
	f.Fuzz(func(t *testing.T, in string) {
		tr, err := parseCSV(strings.NewReader(in), "f.csv", 100*time.Millisecond)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.csv") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if err := tr.Validate(); err != nil {
			t.Fatalf("parsed trace is invalid: %v", err)
		}
	})
}

func TestRunFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "--trace is required"},
		{[]string{"--trace", "builtin:nope"}, `trace = "builtin:nope": must be one of builtin:steady`},
		{[]string{"--trace", "builtin:steady", "--target-age", "0s", "--concurrency", "0"}, `--target-age = "0s": must be >= 1s` + "\n" + `--concurrency = "0": must be between 1 and 100000`},
		{[]string{"--trace", "builtin:steady", "--plot", "x.gif"}, `--plot = "x.gif": must end in .svg or .png`},
		{[]string{"--trace", "builtin:steady", "--profile", "gpu"}, `policy = "gpu": must be one of the configured profiles`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := Run(Options{Args: tt.args, Stdout: &out, Stderr: &errOut})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestRunWritesReports runs a short CSV trace end to end: table, JSON with
// one object per policy, and both plot formats.
func TestRunWritesReports(t *testing.T) {
	dir := t.TempDir()
	csv := filepath.Join(dir, "load.csv")
	if err := os.WriteFile(csv, []byte("seconds,arrivals_per_second,processing_ms\n0,40,250\n600,400,250\n900,40,250\n1800,40\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	jsonPath, plotPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.svg")
	var out, errOut bytes.Buffer
	err := Run(Options{Args: []string{"--trace", csv, "--json", jsonPath, "--plot", plotPath, "--max-replicas", "40", "--progress"}, Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"flowscaler", "keda-queue-length-5", "keda-queue-length-50", "aws-backlog", "oracle"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("table has no row %q:\n%s", name, out.String())
		}
	}
	if !strings.Contains(errOut.String(), "100%") {
		t.Errorf("progress bar did not finish: %q", errOut.String())
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]json.RawMessage
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if _, ok := rep["oracleReplicaSeconds"]; !ok {
		t.Error("JSON has no oracleReplicaSeconds")
	}
	for _, name := range []string{"flowscaler", "keda-queue-length-5", "keda-queue-length-50", "aws-backlog"} {
		var fields map[string]any
		if err := json.Unmarshal(rep[name], &fields); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, k := range []string{"p50AgeSeconds", "p95AgeSeconds", "p99AgeSeconds", "secondsOverObjective", "secondsAfterFirstScaleUp", "maxBacklog", "replicaSeconds", "scaleEvents", "deadLettered"} {
			if _, ok := fields[k]; !ok {
				t.Errorf("%s has no %s", name, k)
			}
		}
	}
	for _, p := range []string{plotPath, filepath.Join(dir, "r.png")} {
		if st, err := os.Stat(p); err != nil || st.Size() < 1000 {
			t.Errorf("plot %s: %v", p, err)
		}
	}
}
