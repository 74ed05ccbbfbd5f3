package config

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/flowscaler/flowscaler/policy"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func noFiles(name string) ([]byte, error) {
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

func TestDefaultConfig(t *testing.T) {
	c, err := Parse(DefaultYAML(), env(nil), noFiles)
	if err != nil {
		t.Fatalf("default config: %v", err)
	}
	if got := c.Connections["local"].URL; got != "redis://127.0.0.1:6379" {
		t.Errorf("local url = %q, want the ${FLOWSCALER_REDIS_URL:-…} default", got)
	}
	if diff := cmp.Diff([]string{"cpu-bound", "io-bound", "memory-heavy"}, c.ProfileNames()); diff != "" {
		t.Errorf("profiles (-want +got):\n%s", diff)
	}
	io, err := c.Params("io-bound")
	if err != nil {
		t.Fatal(err)
	}
	want := BuiltinDefaults()
	want.Concurrency, want.Prefetch = 32, 64
	if diff := cmp.Diff(want, io); diff != "" {
		t.Errorf("io-bound params (-want +got):\n%s", diff)
	}
}

// The commented example and the embedded default must not drift apart.
func TestExampleMatchesEmbeddedDefault(t *testing.T) {
	example, err := os.ReadFile("../../deploy/examples/flowscaler.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := env(map[string]string{"FLOWSCALER_REDIS_URL": "redis://redis.example:6379"})
	a, err := Parse(example, e, noFiles)
	if err != nil {
		t.Fatalf("example: %v", err)
	}
	b, err := Parse(DefaultYAML(), e, noFiles)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(b, a, cmp.AllowUnexported(Connection{}), cmpopts.IgnoreFields(Config{}, "raw")); diff != "" {
		t.Errorf("deploy/examples/flowscaler.yaml differs from the embedded default (-embedded +example):\n%s", diff)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		want []string // every one of these must appear in the error
	}{
		{
			name: "every problem is reported at once",
			yaml: `
server: {readTimeout: 0s}
connections:
  a: {type: kafka, url: "x"}
  b: {type: redis, url: "http://h:1"}
policy:
  defaults: {maxReplicas: 0, targetUtilization: 1.5}
  profiles:
    tiny: {concurrency: 0, prefetch: 1}
`,
			want: []string{
				`server.readTimeout = "0s": must be > 0`,
				`connections.a.type = "kafka": must be one of redis`,
				`connections.b.url = "http://h:1": scheme must be redis or rediss`,
				`policy.defaults.maxReplicas = "0": must be between 1 and 10000`,
				`policy.defaults.targetUtilization = "1.5": must be > 0 and <= 1`,
				`policy.profiles.tiny.concurrency = "0": must be between 1 and 100000`,
			},
		},
		{
			name: "policy keys of the control law",
			yaml: `
policy:
  defaults: {mode: canary, messageCount: 0, kind: gpu-bound, panicWindow: 500ms, scaleUpFactor: 0.5}
  profiles:
    p: {scaleUpPods: 0, scaleUpPeriod: 0s, stallDeliveries: 1, maxFailureRate: 2, deadLetterAfter: -1, lockDuration: -1s, podStartup: -1s}
`,
			want: []string{
				`policy.defaults.mode = "canary": must be flowscaler or shadow`,
				`policy.defaults.messageCount = "0": must be > 0`,
				`policy.defaults.kind = "gpu-bound": must be cpu-bound, io-bound or memory-heavy`,
				`policy.defaults.panicWindow = "500ms": must be >= 1s`,
				`policy.defaults.scaleUpFactor = "0.5": must be between 1 and 1000`,
				`policy.profiles.p.scaleUpPods = "0": must be between 1 and 10000`,
				`policy.profiles.p.scaleUpPeriod = "0s": must be >= 1s`,
				`policy.profiles.p.stallDeliveries = "1": must be >= 2`,
				`policy.profiles.p.maxFailureRate = "2": must be > 0 and <= 1`,
				`policy.profiles.p.deadLetterAfter = "-1": must be >= 0 (0: unknown)`,
				`policy.profiles.p.lockDuration = "-1s": must be >= 0 (0: unknown)`,
				`policy.profiles.p.podStartup = "-1s": must be >= 0`,
			},
		},
		{
			name: "a duration without a unit",
			yaml: "policy:\n  defaults:\n    targetAge: 30\n",
			want: []string{`"30": must be a duration like 30s`},
		},
		{
			name: "unknown field",
			yaml: "server:\n  grpcAdr: \":1\"\n",
			want: []string{"field grpcAdr not found"},
		},
		{
			name: "unset variable without default",
			yaml: "connections:\n  a:\n    type: redis\n    url: ${NOPE}\n",
			want: []string{"line 4: ${NOPE}: environment variable is not set"},
		},
		{
			name: "cross-field rules",
			yaml: "policy:\n  defaults: {minReplicas: 5, maxReplicas: 2, concurrency: 8, prefetch: 4}\n",
			want: []string{
				`policy.defaults.minReplicas = "5": must be <= maxReplicas (2)`,
				`policy.defaults.prefetch = "4": must be >= concurrency (8)`,
			},
		},
		{
			name: "secret from an unset variable",
			yaml: "connections:\n  a: {type: redis, url: \"redis://h:1\", passwordFromEnv: REDIS_PW}\n",
			want: []string{`connections.a.passwordFromEnv = "REDIS_PW": environment variable is not set`},
		},
		{
			name: "secret from a missing file",
			yaml: "connections:\n  a: {type: redis, url: \"redis://h:1\", passwordFile: /nope}\n",
			want: []string{`connections.a.passwordFile = "/nope": cannot be read: file does not exist`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), env(tt.env), noFiles)
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	const secret = "s3cr3t-planted"
	y := "connections:\n  a: {type: redis, url: \"redis://user:" + secret + "@h:1\", passwordFromEnv: PW}\n  b: {type: redis, url: \"ftp://x:" + secret + "@h\"}\n"
	_, err := Parse([]byte(y), env(map[string]string{"PW": secret}), noFiles)
	if err == nil {
		t.Fatal("want an error for connection b")
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error leaks the secret: %v", err)
	}
	c, err := Parse([]byte("connections:\n  a: {type: redis, url: \"redis://user:"+secret+"@h:1\", passwordFromEnv: PW}\n"), env(map[string]string{"PW": secret}), noFiles)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Connections["a"].Password(); got != secret {
		t.Errorf("Password() = %q, want the env value", got)
	}
	if s := c.Connections["a"].String(); strings.Contains(s, secret) {
		t.Errorf("String() leaks the secret: %s", s)
	}
}

// A secret expanded into the wrong field is quoted by that field's error;
// the error names the variable instead.
func TestExpandedSecretInWrongFieldHidden(t *testing.T) {
	const secret = "pl4nted-s3cret-value"
	cases := []struct {
		name string
		yaml string
		want string
	}{
		{name: "validation error", yaml: "server:\n  staleAfter: ${REDIS_PASSWORD}\n",
			want: `${REDIS_PASSWORD}`},
		{name: "decode error", yaml: "policy: ${REDIS_PASSWORD}\n",
			want: `${REDIS_PASSWORD}`},
		{name: "a prefix of the value in a longer one", yaml: "server:\n  grpcAddr: ${SHORT}\n  staleAfter: ${REDIS_PASSWORD}\n",
			want: `${REDIS_PASSWORD}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), env(map[string]string{"REDIS_PASSWORD": secret, "SHORT": "pl4nted"}), noFiles)
			if err == nil {
				t.Fatal("want an error")
			}
			if strings.Contains(err.Error(), "pl4nted") {
				t.Errorf("error leaks the expanded value: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to name %s", err, tc.want)
			}
		})
	}
}

func TestPasswordFile(t *testing.T) {
	files := func(name string) ([]byte, error) {
		if name == "/run/secrets/redis" {
			return []byte("from-file\n"), nil
		}
		return noFiles(name)
	}
	c, err := Parse([]byte("connections:\n  a: {type: redis, url: \"redis://h:1\", passwordFile: /run/secrets/redis}\n"), env(nil), files)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Connections["a"].Password(); got != "from-file" {
		t.Errorf("Password() = %q, want %q (trailing newline trimmed)", got, "from-file")
	}
}

func TestProfileLayers(t *testing.T) {
	c, err := Parse([]byte("policy:\n  defaults: {targetAge: 1m}\n  profiles:\n    slow: {processingTime: 2s}\n"), env(nil), noFiles)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Params("slow")
	if err != nil {
		t.Fatal(err)
	}
	want := BuiltinDefaults()
	want.TargetAge = time.Minute
	want.ProcessingTime = 2 * time.Second
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	_, err = c.Params("fast")
	if err == nil || err.Error() != `policy = "fast": must be one of the configured profiles (slow)` {
		t.Errorf("unknown profile error = %v", err)
	}
}

func TestWatchReloadsAndKeepsOldOnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flowscaler.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("policy:\n  defaults: {maxReplicas: 10}\n")
	current, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var applied []int
	var rejected []error
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, path, 10*time.Millisecond, current, func(c *Config) {
			p, _ := c.Params("")
			mu.Lock()
			applied = append(applied, p.MaxReplicas)
			mu.Unlock()
		}, func(err error) {
			mu.Lock()
			rejected = append(rejected, err)
			mu.Unlock()
		})
	}()
	waitFor := func(cond func() bool) {
		t.Helper()
		for i := 0; i < 500; i++ {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("timed out; applied=%v rejected=%v", applied, rejected)
	}
	write("policy:\n  defaults: {maxReplicas: 0}\n")
	waitFor(func() bool { return len(rejected) == 1 })
	write("policy:\n  defaults: {maxReplicas: 20}\n")
	waitFor(func() bool { return len(applied) == 1 })
	cancel()
	<-done
	if diff := cmp.Diff([]int{20}, applied); diff != "" {
		t.Errorf("applied (-want +got):\n%s", diff)
	}
	if !strings.Contains(rejected[0].Error(), `policy.defaults.maxReplicas = "0"`) {
		t.Errorf("rejection does not name the field: %v", rejected[0])
	}
}

func FuzzParse(f *testing.F) {
	f.Add(DefaultYAML())
	f.Add([]byte("server: {readTimeout: -1s}\n"))
	f.Add([]byte("connections: {a: {type: redis, url: ${X:-redis://h:1}}}\n"))
	f.Add([]byte("policy: {profiles: {'': {concurrency: 3}}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, env(map[string]string{"X": "redis://h:2"}), noFiles)
		if err != nil {
			if c != nil {
				t.Fatal("a config and an error together")
			}
			return
		}
		// A config that parses must give usable params for every profile.
		for _, name := range append([]string{""}, c.ProfileNames()...) {
			p, err := c.Params(name)
			if err != nil {
				t.Fatalf("profile %q: %v", name, err)
			}
			checkParams(t, p)
		}
	})
}

func checkParams(t *testing.T, p policy.Params) {
	t.Helper()
	switch {
	case p.MinReplicas < 0, p.MaxReplicas < 1, p.MinReplicas > p.MaxReplicas:
		t.Fatalf("replica bounds: %+v", p)
	case p.Concurrency < 1, p.Prefetch < p.Concurrency:
		t.Fatalf("concurrency: %+v", p)
	case p.TargetAge <= 0, p.ProcessingTime <= 0, p.RateWindow <= 0, p.ScaleDownCooldown < 0:
		t.Fatalf("durations: %+v", p)
	case !(p.TargetUtilization > 0 && p.TargetUtilization <= 1), p.ActivationDepth < 0:
		t.Fatalf("utilisation/activation: %+v", p)
	}
}
