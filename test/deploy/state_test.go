package deploy

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flowscaler/flowscaler/scaler/config"
)

// The chart's state values reach flowscaler's loader as set, and the
// default is the built-in one.
func TestStateValuesReachTheConfig(t *testing.T) {
	ch := loadChart(t)
	tests := []struct {
		name   string
		values map[string]any
		want   config.State
	}{
		{name: "defaults", values: nil, want: config.State{Backend: config.StateMemory}},
		{name: "full options", values: readValues(t, fullValues),
			want: config.State{Backend: config.StateRedis, Connection: "orders", KeyPrefix: "flowscaler/prod/"}},
		{name: "redis on the default connection", values: valuesFromYAML(t, "config: {state: {backend: redis, connection: local}}"),
			want: config.State{Backend: config.StateRedis, Connection: "local"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := loadRenderedConfig(t, ch, tt.values)
			if diff := cmp.Diff(tt.want, cfg.State); diff != "" {
				t.Errorf("state (-want +got):\n%s", diff)
			}
		})
	}
	builtin, err := config.Parse(config.DefaultYAML(), func(string) (string, bool) { return "", false }, os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(builtin.State, loadRenderedConfig(t, ch, nil).State); diff != "" {
		t.Errorf("default state (-built-in +chart):\n%s", diff)
	}
}

func TestSchemaCoversStateConfig(t *testing.T) {
	root := loadSchema(t)
	n := root.at(t, root, "config", "state")
	var got []string
	for k := range n.Properties {
		got = append(got, k)
	}
	slices.Sort(got)
	if diff := cmp.Diff(yamlFields(config.State{}), got); diff != "" {
		t.Errorf("config.State keys against the schema (-config +schema):\n%s", diff)
	}
}

func TestStateValuesRefused(t *testing.T) {
	ch := loadChart(t)
	tests := []struct {
		name   string
		values string
		want   string
	}{
		{"unknown backend", "config: {state: {backend: etcd}}", "/config/state/backend"},
		{"typo in state", "config: {state: {backend: redis, conection: local}}", "conection"},
		{"key prefix with a space", "config: {state: {backend: redis, connection: local, keyPrefix: 'a b'}}", "/config/state/keyPrefix"},
		{"redis without a connection", "config: {state: {backend: redis}}",
			`config.state.connection = "": must name a connection of type redis when config.state.backend is redis`},
		{"redis on a missing connection", "config: {state: {backend: redis, connection: orders}}",
			`config.state.connection = "orders": must name a connection in config.connections`},
		{"redis on a prometheus connection", "config: {state: {backend: redis, connection: prometheus}}",
			`config.state.connection = "prometheus": must be a connection of type redis, not prometheus`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := render(ch, valuesFromYAML(t, tt.values))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("render error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// NOTES.txt says when replicas do not share state, and only then.
func TestNotesWarnWhenReplicasDoNotShareState(t *testing.T) {
	ch := loadChart(t)
	tests := []struct {
		name   string
		values string
		want   []string // "" means no note at all
	}{
		{"defaults: two replicas on memory", "", []string{
			"Note: 2 replicas with config.state.backend memory", "the next pod starts from nothing", "Set config.state.backend: redis"}},
		{"headless on memory", "service: {headless: {enabled: true}}", []string{
			"Through the headless Service KEDA polls the\npods in turn and they answer differently."}},
		{"one replica", "replicaCount: 1", nil},
		{"shared state", "config: {state: {backend: redis, connection: local}}", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := render(ch, valuesFromYAML(t, tt.values))
			if err != nil {
				t.Fatal(err)
			}
			notes := out["flowscaler/templates/NOTES.txt"]
			if notes == "" {
				t.Fatalf("no NOTES.txt among %d rendered files", len(out))
			}
			if tt.want == nil && strings.Contains(notes, "config.state.backend") {
				t.Errorf("NOTES warn although the state is shared or single:\n%s", notes)
			}
			for _, w := range tt.want {
				if !strings.Contains(notes, w) {
					t.Errorf("NOTES lack %q:\n%s", w, notes)
				}
			}
		})
	}
}
