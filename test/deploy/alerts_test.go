package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// Metric names flowscaler exports. Alerts and the dashboard may use these
// and nothing else starting with flowscaler_, so a misspelt name fails here
// instead of staying silent in Prometheus.
var (
	// Per ScaledObject, labelled namespace and scaledobject.
	objectMetrics = []string{
		"flowscaler_desired_replicas", "flowscaler_active", "flowscaler_queue_depth", "flowscaler_in_flight",
		"flowscaler_oldest_message_age_seconds", "flowscaler_arrival_rate", "flowscaler_consumption_rate",
		"flowscaler_failure_rate", "flowscaler_processing_time_seconds", "flowscaler_processing_time_p95_seconds",
		"flowscaler_dead_letter_messages", "flowscaler_max_delivery_count", "flowscaler_max_replicas",
		"flowscaler_decision_reason", "flowscaler_hint_concurrency", "flowscaler_hint_prefetch",
		"flowscaler_cooldown_seconds", "flowscaler_stale_answers_total", "flowscaler_object_source_errors_total",
	}
	globalMetrics = []string{
		"flowscaler_source_read_errors_total", "flowscaler_grpc_requests_total",
		"flowscaler_config_reloads_total", "flowscaler_config_last_reload_successful",
		"flowscaler_state_store_errors_total", "flowscaler_state_store_conflicts_total",
	}
	histograms = []string{"flowscaler_source_read_duration_seconds", "flowscaler_grpc_request_duration_seconds"}
)

func knownMetric(name string) bool {
	if slices.Contains(objectMetrics, name) || slices.Contains(globalMetrics, name) {
		return true
	}
	for _, h := range histograms {
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if name == h+suffix {
				return true
			}
		}
	}
	return false
}

var metricRef = regexp.MustCompile(`\bflowscaler_[a-z0-9_]+`)

// unknownMetrics lists the flowscaler_ names in a PromQL expression that
// flowscaler does not export.
func unknownMetrics(expr string) []string {
	var bad []string
	for _, m := range metricRef.FindAllString(expr, -1) {
		if !knownMetric(m) && !slices.Contains(bad, m) {
			bad = append(bad, m)
		}
	}
	return bad
}

var runbookURL = regexp.MustCompile(`^docs/runbooks/([a-z0-9-]+\.md)#([a-z0-9-]+)$`)

// githubAnchors returns the anchors GitHub derives from a Markdown file's
// headings: lower case, punctuation dropped, spaces as hyphens.
func githubAnchors(md string) []string {
	var anchors []string
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	for _, line := range strings.Split(md, "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		a := drop.ReplaceAllString(strings.ToLower(title), "")
		anchors = append(anchors, strings.ReplaceAll(a, " ", "-"))
	}
	return anchors
}

func TestAlertRules(t *testing.T) {
	index, err := os.ReadFile(runbooksDir + "/README.md")
	if err != nil {
		t.Fatalf("runbook index: %v", err)
	}
	for file, rf := range loadRuleFiles(t) {
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				if r.Alert == "" {
					continue
				}
				t.Run(file+"/"+r.Alert+"/"+r.Labels["signal"], func(t *testing.T) {
					if s := r.Labels["severity"]; s != "warning" && s != "critical" {
						t.Errorf("severity = %q, want warning or critical", s)
					}
					for _, a := range []string{"summary", "description", "runbook_url"} {
						if strings.TrimSpace(r.Annotations[a]) == "" {
							t.Errorf("annotation %s is missing", a)
						}
					}
					if r.For == nil {
						t.Error("no `for`: one bad scrape would page")
					}
					if bad := unknownMetrics(r.Expr.String()); len(bad) > 0 {
						t.Errorf("expr uses metrics flowscaler does not export: %v", bad)
					}
					m := runbookURL.FindStringSubmatch(r.Annotations["runbook_url"])
					if m == nil {
						t.Fatalf("runbook_url = %q, want docs/runbooks/<file>.md#<anchor>", r.Annotations["runbook_url"])
					}
					md, err := os.ReadFile(filepath.Join(runbooksDir, m[1]))
					if err != nil {
						t.Fatalf("runbook_url: %v", err)
					}
					if !slices.Contains(githubAnchors(string(md)), m[2]) {
						t.Errorf("runbook_url anchor #%s: %s has no such heading (anchors: %v)", m[2], m[1], githubAnchors(string(md)))
					}
					if !strings.Contains(string(md), r.Alert) {
						t.Errorf("%s does not mention %s", m[1], r.Alert)
					}
					if !strings.Contains(string(index), r.Alert) {
						t.Errorf("docs/runbooks/README.md does not list %s", r.Alert)
					}
				})
			}
		}
	}
}

// promtoolTests is the part of promtool's unit test format this check reads.
type promtoolTests struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name          string `json:"name"`
		AlertRuleTest []struct {
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `json:"exp_labels"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// TestEveryAlertIsTested: each alerting rule has a promtool test that fires
// it (an expected alert carrying the rule's own labels) and a test case in
// which the alert is evaluated and must stay quiet throughout. `make
// rules-test` runs them.
func TestEveryAlertIsTested(t *testing.T) {
	paths, err := filepath.Glob(rulesDir + "/tests/*.yml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no promtool tests in %s/tests (%v)", rulesDir, err)
	}
	type firing struct {
		alert  string
		labels map[string]string
	}
	var fired []firing
	quiet := map[string]bool{}
	covered := map[string]bool{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var pt promtoolTests
		if err := yaml.Unmarshal(data, &pt); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, rf := range pt.RuleFiles {
			covered[filepath.Base(rf)] = true
		}
		for _, tc := range pt.Tests {
			fires := map[string]bool{}
			evaluated := map[string]bool{}
			for _, at := range tc.AlertRuleTest {
				evaluated[at.Alertname] = true
				for _, ea := range at.ExpAlerts {
					fires[at.Alertname] = true
					fired = append(fired, firing{at.Alertname, ea.ExpLabels})
				}
			}
			for a := range evaluated {
				if !fires[a] {
					quiet[a] = true
				}
			}
		}
	}
	for file, rf := range loadRuleFiles(t) {
		if !covered[file] {
			t.Errorf("%s: no promtool test loads it", file)
		}
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				if r.Alert == "" {
					continue
				}
				name := fmt.Sprintf("%s%v", r.Alert, r.Labels)
				var ok bool
				for _, f := range fired {
					ok = ok || (f.alert == r.Alert && hasLabels(f.labels, r.Labels))
				}
				if !ok {
					t.Errorf("%s: no promtool test fires it", name)
				}
				if !quiet[r.Alert] {
					t.Errorf("%s: no promtool test shows it staying quiet", r.Alert)
				}
			}
		}
	}
}

func hasLabels(got, want map[string]string) bool {
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestRunbookLinks: every relative link in the runbooks reaches a file, and
// every #anchor a heading of it.
func TestRunbookLinks(t *testing.T) {
	paths, err := filepath.Glob(runbooksDir + "/*.md")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no runbooks (%v)", err)
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mdLink.FindAllStringSubmatch(string(data), -1) {
			link := m[1]
			if strings.Contains(link, "://") {
				continue
			}
			file, anchor, _ := strings.Cut(link, "#")
			target := p
			if file != "" {
				target = filepath.Join(filepath.Dir(p), file)
			}
			content, err := os.ReadFile(target)
			if err != nil {
				if _, statErr := os.Stat(target); statErr != nil {
					t.Errorf("%s: link %s: %v", filepath.Base(p), link, statErr)
				}
				continue // a directory
			}
			if anchor != "" && !slices.Contains(githubAnchors(string(content)), anchor) {
				t.Errorf("%s: link %s: no heading with anchor #%s in %s", filepath.Base(p), link, anchor, filepath.Base(target))
			}
		}
	}
}
