package scaler

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

func testConfig(t testing.TB) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(`
connections:
  local: {type: redis, url: "redis://127.0.0.1:1"}
policy:
  defaults: {maxReplicas: 30}
  profiles:
    io-bound: {concurrency: 32, prefetch: 64}
`), func(string) (string, bool) { return "", false }, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func stream(extra ...string) map[string]string {
	md := map[string]string{"source": "redis-stream", "connection": "local", "stream": "orders", "group": "workers"}
	for i := 0; i+1 < len(extra); i += 2 {
		md[extra[i]] = extra[i+1]
	}
	return md
}

func TestParseObject(t *testing.T) {
	cfg := testConfig(t)
	base := config.BuiltinDefaults()
	base.MaxReplicas = 30
	tests := []struct {
		name      string
		md        map[string]string
		wantQuery sources.Query
		edit      func(*Object)
	}{
		{
			name:      "stream with defaults",
			md:        stream(),
			wantQuery: sources.Query{Kind: sources.RedisStream, Connection: "local", Name: "orders", Group: "workers"},
		},
		{
			name:      "list with overrides and KEDA's own keys",
			md:        map[string]string{"source": "redis-list", "connection": "local", "list": "jobs", "targetAge": "45s", "minReplicas": "2", "scaleDownCooldown": "90s", "activationDepth": "10", "targetUtilization": "0.5", "scalerAddress": "flowscaler:6000", "enableTLS": "false", "unsafeSsl": "false"},
			wantQuery: sources.Query{Kind: sources.RedisList, Connection: "local", Name: "jobs"},
			edit: func(o *Object) {
				o.Params.TargetAge = 45 * time.Second
				o.Params.MinReplicas = 2
				o.Params.ScaleDownCooldown = 90 * time.Second
				o.Params.ActivationDepth = 10
				o.Params.TargetUtilization = 0.5
			},
		},
		{
			name:      "profile then object override",
			md:        stream("policy", "io-bound", "concurrency", "16"),
			wantQuery: sources.Query{Kind: sources.RedisStream, Connection: "local", Name: "orders", Group: "workers"},
			edit: func(o *Object) {
				o.Profile = "io-bound"
				o.Params.Concurrency = 16
				o.Params.Prefetch = 64
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseObject(cfg, "shop", "order-processor", tt.md)
			if err != nil {
				t.Fatal(err)
			}
			want := Object{Namespace: "shop", Name: "order-processor", MetricName: "flowscaler-shop-order-processor", Query: tt.wantQuery, Params: base, ID: got.ID}
			if tt.edit != nil {
				tt.edit(&want)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseObjectErrors(t *testing.T) {
	cfg := testConfig(t)
	tests := []struct {
		name string
		md   map[string]string
		want []string
	}{
		{"bad duration", stream("targetAge", "5x"), []string{`targetAge = "5x": must be a duration like 30s`}},
		{"bad number", stream("maxReplicas", "lots"), []string{`maxReplicas = "lots": must be a whole number`}},
		{"out of range", stream("maxReplicas", "0", "targetUtilization", "2"), []string{
			`maxReplicas = "0": must be between 1 and 10000`, `targetUtilization = "2": must be > 0 and <= 1`}},
		{"cross-field", stream("minReplicas", "40"), []string{`minReplicas = "40": must be <= maxReplicas (30)`}},
		{"control-law keys", stream("mode", "canary", "messageCount", "x", "scaleUpPods", "0"), []string{
			`mode = "canary": must be flowscaler or shadow`, `messageCount = "x": must be a finite number`, `scaleUpPods = "0": must be between 1 and 10000`}},
		{"unknown key", stream("listLength", "5"), []string{`listLength = "5": unknown key: must be one of activationDepth, aggregation, concurrency, connection`}},
		{"missing source", map[string]string{"connection": "local"}, []string{`source = "": must be one of redis-list, redis-stream`}},
		{"stream without group", map[string]string{"source": "redis-stream", "connection": "local", "stream": "s"}, []string{`group = "": required when source is redis-stream`}},
		{"list key on a stream", stream("list", "jobs"), []string{`list = "jobs": not used by source redis-stream`}},
		{"unknown connection", stream("connection", "prod"), []string{`connection = "prod": must name a connection in flowscaler's config (configured: local)`}},
		{"unknown profile", stream("policy", "gpu"), []string{`policy = "gpu": must be one of the configured profiles (io-bound)`}},
		{"all at once", map[string]string{"source": "kafka", "targetAge": "x", "prefetch": "-1"}, []string{
			`source = "kafka"`, `targetAge = "x"`, `prefetch = "-1"`, `connection = ""`}},
		{"oversized value", stream("stream", strings.Repeat("s", 2000)), []string{`stream: value of 2000 bytes: must be at most 1024`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseObject(cfg, "shop", "orders", tt.md)
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestMetricName(t *testing.T) {
	tests := []struct{ ns, name, want string }{
		{"shop", "order-processor", "flowscaler-shop-order-processor"},
		{"Shop_NS", "a.b", "flowscaler-shop-ns-a-b"},
	}
	for _, tt := range tests {
		if got := metricName(tt.ns, tt.name); got != tt.want {
			t.Errorf("metricName(%q, %q) = %q, want %q", tt.ns, tt.name, got, tt.want)
		}
	}
	long1 := metricName("ns", strings.Repeat("x", 200)+"1")
	long2 := metricName("ns", strings.Repeat("x", 200)+"2")
	if len(long1) > maxMetricName || long1 == long2 {
		t.Errorf("long names must be bounded and distinct: %q %q", long1, long2)
	}
}

func TestObjectIDSeparatesTriggers(t *testing.T) {
	cfg := testConfig(t)
	a, _ := ParseObject(cfg, "ns", "so", stream())
	b, _ := ParseObject(cfg, "ns", "so", stream("stream", "other"))
	c, _ := ParseObject(cfg, "ns", "so", stream("scalerAddress", "elsewhere:6000"))
	if a.ID == b.ID {
		t.Error("two triggers of one ScaledObject share an ID")
	}
	if a.ID != c.ID {
		t.Error("KEDA's connection keys must not split an object's state")
	}
}

func FuzzParseObject(f *testing.F) {
	cfg := testConfig(f)
	f.Add("redis-stream", "local", "orders", "workers", "targetAge", "30s", "maxReplicas", "10")
	f.Add("redis-list", "local", "jobs", "", "concurrency", "0", "prefetch", "-5")
	f.Add("x", "", "", "", "targetUtilization", "NaN", "activationDepth", "1e309")
	f.Fuzz(func(t *testing.T, source, conn, key, group, k1, v1, k2, v2 string) {
		md := map[string]string{"source": source, "connection": conn, "group": group, k1: v1, k2: v2}
		if source == "redis-list" {
			md["list"] = key
			delete(md, "group")
		} else {
			md["stream"] = key
		}
		obj, err := ParseObject(cfg, "ns", "name", md)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		p := obj.Params
		if p.MinReplicas < 0 || p.MaxReplicas < 1 || p.MinReplicas > p.MaxReplicas || p.Concurrency < 1 ||
			p.Prefetch < p.Concurrency || p.TargetAge <= 0 || p.ProcessingTime <= 0 ||
			!(p.TargetUtilization > 0 && p.TargetUtilization <= 1) || p.ActivationDepth < 0 {
			t.Fatalf("accepted invalid params %+v from %v", p, md)
		}
		if obj.MetricName == "" || len(obj.MetricName) > maxMetricName {
			t.Fatalf("metric name %q", obj.MetricName)
		}
	})
}
