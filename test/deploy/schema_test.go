package deploy

import (
	"encoding/json"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flowscaler/flowscaler/scaler/config"
)

// schemaNode is the part of a JSON schema this test walks.
type schemaNode struct {
	Ref                  string                 `json:"$ref"`
	Properties           map[string]*schemaNode `json:"properties"`
	AdditionalProperties json.RawMessage        `json:"additionalProperties"`
	Items                *schemaNode            `json:"items"`
	Definitions          map[string]*schemaNode `json:"definitions"`
}

func loadSchema(t *testing.T) *schemaNode {
	t.Helper()
	data, err := os.ReadFile(chartDir + "/values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s schemaNode
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	return &s
}

// resolve follows a local "#/definitions/NAME" reference.
func (s *schemaNode) resolve(root *schemaNode) *schemaNode {
	if name, ok := strings.CutPrefix(s.Ref, "#/definitions/"); ok {
		return root.Definitions[name].resolve(root)
	}
	return s
}

// at walks properties by name; "*" steps into additionalProperties.
func (s *schemaNode) at(t *testing.T, root *schemaNode, path ...string) *schemaNode {
	t.Helper()
	n := s.resolve(root)
	for _, p := range path {
		var next *schemaNode
		if p == "*" {
			if err := json.Unmarshal(n.AdditionalProperties, &next); err != nil || next == nil {
				t.Fatalf("schema: %v has no additionalProperties schema", path)
			}
		} else {
			next = n.Properties[p]
		}
		if next == nil {
			t.Fatalf("schema: no %v (at %q)", path, p)
		}
		n = next.resolve(root)
	}
	return n
}

// yamlFields lists the yaml names of a config struct's fields.
func yamlFields(v any) []string {
	var names []string
	typ := reflect.TypeOf(v)
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case !f.IsExported() || name == "-":
		case opts == "inline":
			// An inlined struct's keys are the parent's own.
			names = append(names, yamlFields(reflect.Zero(f.Type).Interface())...)
		case name != "":
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// TestSchemaCoversConfig: every key of flowscaler's config has a place in
// values.schema.json, so that a new config key fails here until the chart
// can set it, rather than being unreachable for chart users.
func TestSchemaCoversConfig(t *testing.T) {
	root := loadSchema(t)
	cfgNode := root.at(t, root, "config")
	keys := func(n *schemaNode) []string { return slices.Sorted(maps.Keys(n.Properties)) }

	t.Run("policy profile", func(t *testing.T) {
		if diff := cmp.Diff(yamlFields(config.Profile{}), keys(cfgNode.at(t, root, "policy", "defaults"))); diff != "" {
			t.Errorf("config.Profile keys against the schema's policy profile (-config +schema):\n%s", diff)
		}
	})
	t.Run("server", func(t *testing.T) {
		// The listen addresses come from `ports`, the TLS files from `tls`.
		var want []string
		for _, f := range yamlFields(config.Server{}) {
			if !slices.Contains([]string{"grpcAddr", "httpAddr", "tls"}, f) {
				want = append(want, f)
			}
		}
		if diff := cmp.Diff(want, keys(cfgNode.at(t, root, "server"))); diff != "" {
			t.Errorf("config.Server keys against the schema (-config +schema):\n%s", diff)
		}
	})
	t.Run("queries", func(t *testing.T) {
		if diff := cmp.Diff(yamlFields(config.Queries{}), keys(cfgNode.at(t, root, "queries"))); diff != "" {
			t.Errorf("config.Queries keys against the schema (-config +schema):\n%s", diff)
		}
	})
	t.Run("connection", func(t *testing.T) {
		// Secrets are given as Secret references; the chart writes the
		// …FromEnv or …File key.
		chartKey := map[string]string{
			"passwordFromEnv": "password", "passwordFile": "password",
			"bearerTokenFromEnv": "bearerToken", "bearerTokenFile": "bearerToken",
			"connectionStringFromEnv": "connectionString", "connectionStringFile": "connectionString",
		}
		var want []string
		for _, f := range yamlFields(config.Connection{}) {
			if k, ok := chartKey[f]; ok {
				f = k
			}
			if !slices.Contains(want, f) {
				want = append(want, f)
			}
		}
		slices.Sort(want)
		conn := cfgNode.at(t, root, "connections", "*")
		if diff := cmp.Diff(want, keys(conn)); diff != "" {
			t.Errorf("config.Connection keys against the schema (-config +schema):\n%s", diff)
		}
		// TLS files come from Secrets too.
		tlsKey := map[string]string{"caFile": "caSecret", "certFile": "clientCertSecret", "keyFile": "clientCertSecret"}
		var wantTLS []string
		for _, f := range yamlFields(config.ClientTLS{}) {
			if k, ok := tlsKey[f]; ok {
				f = k
			}
			if !slices.Contains(wantTLS, f) {
				wantTLS = append(wantTLS, f)
			}
		}
		slices.Sort(wantTLS)
		if diff := cmp.Diff(wantTLS, keys(conn.at(t, root, "tls"))); diff != "" {
			t.Errorf("config.ClientTLS keys against the schema (-config +schema):\n%s", diff)
		}
	})
}
