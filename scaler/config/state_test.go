package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const stateConns = `
connections:
  local: {type: redis, url: "redis://127.0.0.1:6379"}
  shared: {type: redis, url: "rediss://state.example:6380"}
  prometheus: {type: prometheus, url: "http://127.0.0.1:9090"}
`

func TestStateConfig(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want State
	}{
		{name: "absent is memory", yaml: stateConns, want: State{Backend: StateMemory}},
		{name: "memory", yaml: stateConns + "state: {backend: memory}", want: State{Backend: StateMemory}},
		{
			name: "redis on a named connection",
			yaml: stateConns + "state: {backend: redis, connection: shared}",
			want: State{Backend: StateRedis, Connection: "shared"},
		},
		{
			name: "redis with a key prefix",
			yaml: stateConns + "state: {backend: redis, connection: local, keyPrefix: team-a/flowscaler/}",
			want: State{Backend: StateRedis, Connection: "local", KeyPrefix: "team-a/flowscaler/"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), env(nil), noFiles)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, c.State); diff != "" {
				t.Errorf("state (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStatePrefix(t *testing.T) {
	if got := (State{Backend: StateRedis}).Prefix(); got != DefaultStateKeyPrefix {
		t.Errorf("default prefix = %q, want %q", got, DefaultStateKeyPrefix)
	}
	if got := (State{Backend: StateRedis, KeyPrefix: "x/"}).Prefix(); got != "x/" {
		t.Errorf("prefix = %q, want x/", got)
	}
}

func TestStateConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "unknown backend",
			yaml: stateConns + "state: {backend: etcd}",
			want: []string{`state.backend = "etcd": must be memory or redis`},
		},
		{
			name: "empty backend",
			yaml: stateConns + `state: {backend: ""}`,
			want: []string{`state.backend = "": must be memory or redis`},
		},
		{
			name: "redis without a connection",
			yaml: stateConns + "state: {backend: redis}",
			want: []string{`state.connection = "": must name a connection of type redis when state.backend is redis (configured: local, shared)`},
		},
		{
			name: "redis on a missing connection",
			yaml: stateConns + "state: {backend: redis, connection: nope}",
			want: []string{`state.connection = "nope": must name a configured connection of type redis (configured: local, shared)`},
		},
		{
			name: "redis on a prometheus connection",
			yaml: stateConns + "state: {backend: redis, connection: prometheus}",
			want: []string{`state.connection = "prometheus": must be a connection of type redis, not prometheus`},
		},
		{
			name: "redis without any redis connection",
			yaml: "connections:\n  prometheus: {type: prometheus, url: \"http://127.0.0.1:9090\"}\nstate: {backend: redis, connection: local}",
			want: []string{`state.connection = "local": must name a configured connection of type redis (configured: none)`},
		},
		{
			name: "key prefix with a space",
			yaml: stateConns + `state: {backend: redis, connection: local, keyPrefix: "a b/"}`,
			want: []string{`state.keyPrefix = "a b/": must not contain spaces or line breaks`},
		},
		{
			name: "memory takes no connection or prefix",
			yaml: stateConns + "state: {backend: memory, connection: local, keyPrefix: x/}",
			want: []string{
				`state.connection = "local": only the redis backend takes it`,
				`state.keyPrefix = "x/": only the redis backend takes it`,
			},
		},
		{
			name: "unknown field",
			yaml: stateConns + "state: {backend: redis, connection: local, ttl: 1h}",
			want: []string{"field ttl not found"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), env(nil), noFiles)
			if err == nil {
				t.Fatal("Parse accepted the config")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}
