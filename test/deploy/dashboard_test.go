package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// dashboard is the part of Grafana's dashboard model this test reads.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int            `json:"id"`
	Title      string         `json:"title"`
	Type       string         `json:"type"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []panelTarget  `json:"targets"`
	Panels     []panel        `json:"panels"`
}

type panelTarget struct {
	Datasource *datasourceRef `json:"datasource"`
	Expr       string         `json:"expr"`
	RefID      string         `json:"refId"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardsDir + "/flowscaler.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("flowscaler.json: %v", err)
	}
	return d
}

// flatPanels returns every panel, rows' nested panels included.
func flatPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatPanels(p.Panels)...)
	}
	return out
}

func TestDashboardModel(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both are needed for provisioning", d.UID, d.Title)
	}
	// 36 is Grafana 9's model with datasource references by uid.
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion = %d, want >= 36", d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	for name, typ := range map[string]string{"datasource": "datasource", "namespace": "query", "scaledobject": "query", "target": "textbox"} {
		if vars[name] != typ {
			t.Errorf("template variable %s: type %q, want %q", name, vars[name], typ)
		}
	}
	ids := map[int]string{}
	var titles []string
	for _, p := range flatPanels(d.Panels) {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d is used by %q and %q", p.ID, prev, p.Title)
		}
		ids[p.ID] = p.Title
		titles = append(titles, p.Title)
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q query %s: datasource %+v, want ${datasource}", p.Title, tg.RefID, tg.Datasource)
			}
			if bad := unknownMetrics(tg.Expr); len(bad) > 0 {
				t.Errorf("panel %q query %s uses metrics flowscaler does not export: %v", p.Title, tg.RefID, bad)
			}
			for _, m := range objectMetrics {
				for _, rest := range strings.Split(tg.Expr, m)[1:] {
					if !strings.HasPrefix(rest, `{namespace=~"$namespace", scaledobject=~"$scaledobject"`) {
						t.Errorf("panel %q query %s: %s is not filtered by the namespace and scaledobject variables", p.Title, tg.RefID, m)
					}
				}
			}
		}
	}
	// The classic message-processing panels, then flowscaler's own.
	for _, want := range []string{
		"Messages/sec", "Processing time p95", "Success rate", "Queue depth", "DLQ messages", "Consumer lag",
		"Messages over time", "Desired versus actual replicas", "Decision reason", "Consumer hints",
	} {
		if !slices.Contains(titles, want) {
			t.Errorf("no panel titled %q", want)
		}
	}
}

// dashboardExpr returns the query of a panel, its variables replaced as
// Grafana would for "All" selections and the given target regex.
func dashboardExpr(t *testing.T, d dashboard, title, refID, target string) string {
	t.Helper()
	for _, p := range flatPanels(d.Panels) {
		if p.Title != title {
			continue
		}
		for _, tg := range p.Targets {
			if tg.RefID == refID {
				return substituteVars(tg.Expr, target)
			}
		}
	}
	t.Fatalf("no query %s in panel %q", refID, title)
	return ""
}

func substituteVars(expr, target string) string {
	return strings.NewReplacer(
		"$namespace", ".*", "$scaledobject", ".*", "$target", target, "$__rate_interval", "2m",
	).Replace(expr)
}

// promtool returns promtool's path; without it the test is skipped, except
// under CI where test/deps.sh must have installed it.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool is not installed (test/deps.sh installs Debian's prometheus package): %v", err)
		}
		t.Skip("promtool not installed; run test/deps.sh")
	}
	return p
}

func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(promtool(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestDashboardQueriesParse has Prometheus's own parser check every query,
// as recording rules.
func TestDashboardQueriesParse(t *testing.T) {
	d := loadDashboard(t)
	var rules []map[string]string
	for _, p := range flatPanels(d.Panels) {
		for _, tg := range p.Targets {
			rules = append(rules, map[string]string{
				"record": fmt.Sprintf("dashboard:panel_%d_%s", p.ID, tg.RefID),
				"expr":   substituteVars(tg.Expr, "(.*)"),
			})
		}
	}
	if len(rules) == 0 {
		t.Fatal("no queries")
	}
	path := writeYAML(t, "dashboard-rules.yml", map[string]any{
		"groups": []any{map[string]any{"name": "dashboard", "rules": rules}},
	})
	runPromtool(t, "check", "rules", path)
}

// TestDashboardJoins evaluates the dashboard's least obvious queries in
// Prometheus's engine (promtool's unit tests) on series shaped like
// flowscaler's and kube-state-metrics'.
func TestDashboardJoins(t *testing.T) {
	d := loadDashboard(t)
	series := func(name string, labels map[string]string, value string) map[string]string {
		var ls []string
		for k, v := range labels {
			ls = append(ls, fmt.Sprintf("%s=%q", k, v))
		}
		slices.Sort(ls)
		return map[string]string{"series": name + "{" + strings.Join(ls, ",") + "}", "values": value + "x5"}
	}
	obj := func(so, pod string) map[string]string {
		return map[string]string{"namespace": "shop", "scaledobject": so, "pod": pod}
	}
	input := []map[string]string{
		// Two flowscaler replicas answer for orders; one for emails-scaler.
		series("flowscaler_desired_replicas", obj("orders", "a"), "5"),
		series("flowscaler_desired_replicas", obj("orders", "b"), "4"),
		series("flowscaler_desired_replicas", obj("emails-scaler", "a"), "2"),
		series("kube_deployment_status_replicas", map[string]string{"namespace": "shop", "deployment": "orders"}, "3"),
		series("kube_deployment_status_replicas", map[string]string{"namespace": "shop", "deployment": "emails"}, "1"),
		series("kube_deployment_status_replicas", map[string]string{"namespace": "other", "deployment": "orders"}, "9"),
		series("flowscaler_failure_rate", obj("orders", "a"), "1"),
		series("flowscaler_consumption_rate", obj("orders", "a"), "20"),
	}
	for _, r := range []string{"scale-up", "steady", "holding", "idle", "stalled", "clamped-max", "stale"} {
		v := "0"
		if r == "holding" {
			v = "1"
		}
		l := obj("orders", "a")
		l["reason"] = r
		input = append(input, series("flowscaler_decision_reason", l, v))
	}
	type sample struct {
		Labels string  `json:"labels"`
		Value  float64 `json:"value"`
	}
	type exprTest struct {
		Expr       string   `json:"expr"`
		EvalTime   string   `json:"eval_time"`
		ExpSamples []sample `json:"exp_samples"`
	}
	tests := []exprTest{
		{
			// The ScaledObject is named like its Deployment: orders joins,
			// emails-scaler has no Deployment of that name.
			Expr:       dashboardExpr(t, d, "Desired versus actual replicas", "B", "(.*)"),
			ExpSamples: []sample{{`{namespace="shop", scaledobject="orders"}`, 3}},
		},
		{
			// ScaledObjects named <deployment>-scaler.
			Expr:       dashboardExpr(t, d, "Desired versus actual replicas", "B", "(.*)-scaler"),
			ExpSamples: []sample{{`{namespace="shop", scaledobject="emails-scaler"}`, 1}},
		},
		{
			// Both replicas' answers, the higher one shown.
			Expr:       dashboardExpr(t, d, "Desired versus actual replicas", "A", "(.*)"),
			ExpSamples: []sample{{`{namespace="shop", scaledobject="emails-scaler"}`, 2}, {`{namespace="shop", scaledobject="orders"}`, 5}},
		},
		{
			// holding is the third reason: the panel's value mapping shows 3 as holding.
			Expr:       dashboardExpr(t, d, "Decision reason", "A", "(.*)"),
			ExpSamples: []sample{{`{namespace="shop", scaledobject="orders"}`, 3}},
		},
		{
			Expr:       dashboardExpr(t, d, "Success rate", "A", "(.*)"),
			ExpSamples: []sample{{`{}`, 0.95}},
		},
	}
	for i := range tests {
		tests[i].EvalTime = "2m"
	}
	path := writeYAML(t, "dashboard-test.yml", map[string]any{
		"rule_files":          []string{},
		"evaluation_interval": "1m",
		"tests": []any{map[string]any{
			"interval":         "1m",
			"input_series":     input,
			"promql_expr_test": tests,
		}},
	})
	runPromtool(t, "test", "rules", path)
}

func writeYAML(t *testing.T, name string, v any) string {
	t.Helper()
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
