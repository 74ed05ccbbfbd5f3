package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flowscaler/flowscaler/policy"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML is the built-in configuration, served when no file is given.
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// Config is flowscaler.yaml after parsing, expansion and validation.
type Config struct {
	Server      Server                `yaml:"server"`
	Connections map[string]Connection `yaml:"connections"`
	Policy      Policy                `yaml:"policy"`
	// Queries read consumer metrics from prometheus connections.
	Queries Queries `yaml:"queries"`
	// State is where objects' policy state is kept (see state.go).
	State State `yaml:"state"`

	raw []byte // the file as read, before expansion: what Watch compares against
}

// Server holds listen addresses and the timing rules of every source read.
type Server struct {
	// GRPCAddr serves KEDA's externalscaler protocol and gRPC health.
	GRPCAddr string `yaml:"grpcAddr"`
	// HTTPAddr serves /metrics, /healthz, /readyz and /debug/decisions.
	HTTPAddr string `yaml:"httpAddr"`
	// ReadTimeout bounds every source read, whatever deadline the caller has. > 0.
	ReadTimeout Duration `yaml:"readTimeout"`
	// StaleAfter is how long a last-good answer may be served while a source
	// fails; after it the call fails with Unavailable so KEDA's fallback takes over. >= 0.
	StaleAfter Duration `yaml:"staleAfter"`
	// ReadCacheTTL is how long one read of a queue is shared by every caller
	// watching it: N ScaledObjects on one stream cost one read per TTL. >= 0.
	ReadCacheTTL Duration `yaml:"readCacheTTL"`
	// ReadCacheGrace is how long past its TTL (readCacheTTL, or
	// queries.cacheTTL) a shared reading still answers calls while one read
	// in the background replaces it, so that calls do not wait on a healthy
	// source. A failed read ends it: the next call reads. 0 turns it off. >= 0.
	ReadCacheGrace Duration `yaml:"readCacheGrace"`
	// StreamCheckInterval is how often StreamIsActive re-evaluates activity. > 0.
	StreamCheckInterval Duration `yaml:"streamCheckInterval"`
	// ShutdownTimeout is the hard deadline of a graceful stop. > 0.
	ShutdownTimeout Duration `yaml:"shutdownTimeout"`
	// TLS, when certFile is set, serves gRPC over TLS only (plaintext is
	// refused); clientCAFile adds mutual TLS.
	TLS TLS `yaml:"tls"`
}

// Connection is one named broker connection. Secrets are resolved at load
// and never printed: String and LogValue redact them.
type Connection struct {
	Type            string `yaml:"type"`
	URL             string `yaml:"url"`
	PasswordFromEnv string `yaml:"passwordFromEnv"`
	PasswordFile    string `yaml:"passwordFile"`
	// Prometheus connections only: a per-query timeout within
	// server.readTimeout, basic auth (username with the password above) or
	// a bearer token, and TLS.
	Timeout            *Duration `yaml:"timeout"`
	Username           string    `yaml:"username"`
	BearerTokenFromEnv string    `yaml:"bearerTokenFromEnv"`
	BearerTokenFile    string    `yaml:"bearerTokenFile"`
	TLS                ClientTLS `yaml:"tls"`
	// Service Bus connections only (see servicebus.go): a connection string
	// from the environment or a file, or auth: azure-ad with a namespace.
	ServiceBus `yaml:",inline"`

	password         string
	bearerToken      string
	connectionString string // servicebus
}

// Password is the resolved secret from PasswordFromEnv or PasswordFile ("" when none).
func (c Connection) Password() string { return c.password }

// String shows the connection without secrets.
func (c Connection) String() string {
	return fmt.Sprintf("%s %s", c.Type, RedactURL(c.URL))
}

// RedactURL hides any password in a URL; an unparsable URL is hidden whole,
// since it may still carry a secret.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparsable url>"
	}
	return u.Redacted()
}

// Policy holds the defaults every ScaledObject starts from and named profiles
// it can select with the `policy` metadata key.
type Policy struct {
	Defaults Profile            `yaml:"defaults"`
	Profiles map[string]Profile `yaml:"profiles"`
}

// Profile is a partial set of policy parameters: nil fields inherit. The
// order is built-in defaults < policy.defaults < profile < trigger metadata.
type Profile struct {
	MinReplicas       *int      `yaml:"minReplicas"`
	MaxReplicas       *int      `yaml:"maxReplicas"`
	TargetAge         *Duration `yaml:"targetAge"`
	Concurrency       *int      `yaml:"concurrency"`
	Prefetch          *int      `yaml:"prefetch"`
	ProcessingTime    *Duration `yaml:"processingTime"`
	TargetUtilization *float64  `yaml:"targetUtilization"`
	ScaleDownCooldown *Duration `yaml:"scaleDownCooldown"`
	ActivationDepth   *float64  `yaml:"activationDepth"`
	RateWindow        *Duration `yaml:"rateWindow"`
	// Mode is "flowscaler" (serve flowscaler's target) or "shadow" (serve
	// the classic depth ÷ messageCount, compute and explain flowscaler's).
	Mode            *string   `yaml:"mode"`
	MessageCount    *float64  `yaml:"messageCount"`
	Kind            *string   `yaml:"kind"`
	PanicWindow     *Duration `yaml:"panicWindow"`
	ScaleUpFactor   *float64  `yaml:"scaleUpFactor"`
	ScaleUpPods     *int      `yaml:"scaleUpPods"`
	ScaleUpPeriod   *Duration `yaml:"scaleUpPeriod"`
	StallDeliveries *int      `yaml:"stallDeliveries"`
	MaxFailureRate  *float64  `yaml:"maxFailureRate"`
	DeadLetterAfter *int      `yaml:"deadLetterAfter"`
	LockDuration    *Duration `yaml:"lockDuration"`
	PodStartup      *Duration `yaml:"podStartup"`
}

// BuiltinDefaults are the parameters used where neither the config nor the
// trigger says otherwise: the policy's own defaults.
func BuiltinDefaults() policy.Params { return policy.DefaultParams() }

// Apply returns base with every set field of p written over it.
func (p Profile) Apply(base policy.Params) policy.Params {
	setInt(&base.MinReplicas, p.MinReplicas)
	setInt(&base.MaxReplicas, p.MaxReplicas)
	setDur(&base.TargetAge, p.TargetAge)
	setInt(&base.Concurrency, p.Concurrency)
	setInt(&base.Prefetch, p.Prefetch)
	setDur(&base.ProcessingTime, p.ProcessingTime)
	setFloat(&base.TargetUtilization, p.TargetUtilization)
	setDur(&base.ScaleDownCooldown, p.ScaleDownCooldown)
	setFloat(&base.ActivationDepth, p.ActivationDepth)
	setDur(&base.RateWindow, p.RateWindow)
	setString(&base.Mode, p.Mode)
	setFloat(&base.MessageCount, p.MessageCount)
	setString(&base.Kind, p.Kind)
	setDur(&base.PanicWindow, p.PanicWindow)
	setFloat(&base.ScaleUpFactor, p.ScaleUpFactor)
	setInt(&base.ScaleUpPods, p.ScaleUpPods)
	setDur(&base.ScaleUpPeriod, p.ScaleUpPeriod)
	setInt(&base.StallDeliveries, p.StallDeliveries)
	setFloat(&base.MaxFailureRate, p.MaxFailureRate)
	setInt(&base.DeadLetterAfter, p.DeadLetterAfter)
	setDur(&base.LockDuration, p.LockDuration)
	setDur(&base.PodStartup, p.PodStartup)
	return base
}

func setString(dst *string, v *string) {
	if v != nil {
		*dst = *v
	}
}

func setInt(dst *int, v *int) {
	if v != nil {
		*dst = *v
	}
}

func setFloat(dst *float64, v *float64) {
	if v != nil {
		*dst = *v
	}
}

func setDur(dst *time.Duration, v *Duration) {
	if v != nil {
		*dst = time.Duration(*v)
	}
}

// Params resolves the parameters of a profile name ("" for the defaults alone).
func (c *Config) Params(profile string) (policy.Params, error) {
	p := c.Policy.Defaults.Apply(BuiltinDefaults())
	if profile == "" {
		return p, nil
	}
	prof, ok := c.Policy.Profiles[profile]
	if !ok {
		return policy.Params{}, fmt.Errorf("policy = %q: must be one of the configured profiles (%s)", profile, strings.Join(c.ProfileNames(), ", "))
	}
	return prof.Apply(p), nil
}

// ProfileNames lists the configured profiles, sorted.
func (c *Config) ProfileNames() []string {
	names := make([]string, 0, len(c.Policy.Profiles))
	for n := range c.Policy.Profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Load reads, expands, parses and validates a config file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, os.LookupEnv, os.ReadFile)
}

// Parse expands ${VAR} and ${VAR:-default} from lookupEnv, decodes strictly
// (unknown fields are errors), resolves secrets and validates everything,
// returning all problems joined.
func Parse(data []byte, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (*Config, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("config is empty: a truncated file is refused rather than read as all defaults")
	}
	expanded, refs, err := expandEnv(data, lookupEnv)
	if err != nil {
		return nil, err
	}
	c, err := parseExpanded(data, expanded, lookupEnv, readFile)
	if err != nil {
		return nil, refs.hide(err)
	}
	return c, nil
}

func parseExpanded(data, expanded []byte, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (*Config, error) {
	// Defaults go in first so that an explicit zero stays zero and is refused.
	c := Config{Server: defaultServer(), Queries: DefaultQueries(), State: defaultState(), raw: bytes.Clone(data)}
	dec := yaml.NewDecoder(bytes.NewReader(expanded))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	errs := c.Server.validate()
	errs = append(errs, c.resolveConnections(lookupEnv, readFile)...)
	errs = append(errs, c.Policy.validate()...)
	errs = append(errs, c.Queries.validate()...)
	errs = append(errs, c.State.validate(c.Connections)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &c, nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expandEnv replaces ${VAR} and ${VAR:-default}. An unset variable without a
// default is an error, not an empty string: a silently empty URL or name is
// worse than a refusal to start.
func expandEnv(data []byte, lookupEnv func(string) (string, bool)) ([]byte, envRefs, error) {
	var errs []error
	var refs envRefs
	lines := bytes.Split(data, []byte("\n"))
	for i, line := range lines {
		if trimmed := bytes.TrimSpace(line); bytes.HasPrefix(trimmed, []byte("#")) {
			continue
		}
		lines[i] = envRef.ReplaceAllFunc(line, func(ref []byte) []byte {
			m := envRef.FindSubmatch(ref)
			name := string(m[1])
			if v, ok := lookupEnv(name); ok && v != "" {
				refs = append(refs, expansion{name: name, value: v})
				return []byte(v)
			}
			if m[2] != nil {
				return m[3]
			}
			errs = append(errs, fmt.Errorf("line %d: ${%s}: environment variable is not set (write ${%s:-default} to give a default)", i+1, name, name))
			return ref
		})
	}
	return bytes.Join(lines, []byte("\n")), refs, errors.Join(errs...)
}

// expansion is one ${NAME} the file used and the value it expanded to.
type expansion struct{ name, value string }

type envRefs []expansion

// hide writes ${NAME} in err's text where the value of NAME stands. A
// variable meant for one field (a password) may land in another by mistake
// (a duration), whose error quotes the value; the error must not carry the
// secret into logs. Values shorter than minHiddenLen are left alone: they
// would replace unrelated text ("line 2") and are not secrets anyone uses.
func (refs envRefs) hide(err error) error {
	const minHiddenLen = 4
	msg := err.Error()
	sorted := slices.Clone(refs)
	// Longest first, so a value that contains another is hidden whole.
	slices.SortFunc(sorted, func(a, b expansion) int { return len(b.value) - len(a.value) })
	changed := false
	for _, r := range sorted {
		if len(r.value) >= minHiddenLen && strings.Contains(msg, r.value) {
			msg = strings.ReplaceAll(msg, r.value, "${"+r.name+"}")
			changed = true
		}
	}
	// The YAML decoder quotes a value in backticks cut to a few characters
	// and "...": a prefix of a secret is a leak too.
	msg = yamlQuoted.ReplaceAllStringFunc(msg, func(q string) string {
		cut, ok := strings.CutSuffix(q[1:len(q)-1], "...")
		if !ok || len(cut) < minHiddenLen {
			return q
		}
		for _, r := range sorted {
			if strings.HasPrefix(r.value, cut) {
				changed = true
				return "`${" + r.name + "}`"
			}
		}
		return q
	})
	if !changed {
		return err
	}
	return errors.New(msg)
}

var yamlQuoted = regexp.MustCompile("`[^`]*`")

func defaultServer() Server {
	return Server{
		GRPCAddr:            ":6000",
		HTTPAddr:            ":8080",
		ReadTimeout:         Duration(2 * time.Second),
		StaleAfter:          Duration(time.Minute),
		ReadCacheTTL:        Duration(time.Second),
		ReadCacheGrace:      Duration(time.Second),
		StreamCheckInterval: Duration(500 * time.Millisecond),
		ShutdownTimeout:     Duration(10 * time.Second),
	}
}

func (s *Server) validate() []error {
	var errs []error
	positive := func(field string, d Duration) {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("server.%s = %q: must be > 0", field, d))
		}
	}
	positive("readTimeout", s.ReadTimeout)
	positive("staleAfter", s.StaleAfter)
	positive("readCacheTTL", s.ReadCacheTTL)
	if s.ReadCacheGrace < 0 {
		errs = append(errs, fmt.Errorf("server.readCacheGrace = %q: must be >= 0", s.ReadCacheGrace))
	}
	positive("streamCheckInterval", s.StreamCheckInterval)
	positive("shutdownTimeout", s.ShutdownTimeout)
	errs = append(errs, s.TLS.validate("server.tls.")...)
	return errs
}

// ConnectionTypes are the supported `type` values of a connection.
var ConnectionTypes = []string{"redis", "prometheus", "servicebus"}

func (c *Config) resolveConnections(lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) []error {
	var errs []error
	for _, name := range sortedKeys(c.Connections) {
		conn := c.Connections[name]
		field := "connections." + name
		switch conn.Type {
		case "redis":
			errs = append(errs, validateRedisURL(field+".url", conn.URL)...)
			for _, f := range conn.prometheusOnly() {
				errs = append(errs, fmt.Errorf("%s.%s: only prometheus connections take it", field, f))
			}
		case "prometheus":
			errs = append(errs, conn.validatePrometheus(field, c.Server.ReadTimeout, lookupEnv, readFile)...)
		case "servicebus":
			errs = append(errs, conn.resolveServiceBus(field, lookupEnv, readFile)...)
		default:
			errs = append(errs, fmt.Errorf("%s.type = %q: must be one of %s", field, conn.Type, strings.Join(ConnectionTypes, ", ")))
		}
		if conn.Type != "servicebus" {
			for _, f := range conn.ServiceBus.set() {
				errs = append(errs, fmt.Errorf("%s.%s: only servicebus connections take it", field, f))
			}
		}
		pw, err := resolveSecret(field, conn.PasswordFromEnv, conn.PasswordFile, lookupEnv, readFile)
		if err != nil {
			errs = append(errs, err)
		}
		conn.password = pw
		c.Connections[name] = conn
	}
	return errs
}

func validateRedisURL(field, raw string) []error {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return []error{fmt.Errorf("%s = \"\": must be a redis:// or rediss:// URL", field)}
	case err != nil:
		return []error{fmt.Errorf("%s = %q: must be a redis:// or rediss:// URL", field, RedactURL(raw))}
	case u.Scheme != "redis" && u.Scheme != "rediss":
		return []error{fmt.Errorf("%s = %q: scheme must be redis or rediss", field, u.Redacted())}
	case u.Host == "":
		return []error{fmt.Errorf("%s = %q: must name a host, as in redis://host:6379", field, u.Redacted())}
	}
	return nil
}

// resolveSecret reads a secret from an environment variable or a file. Only
// the variable's or file's name ever appears in an error.
func resolveSecret(field, fromEnv, file string, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (string, error) {
	switch {
	case fromEnv != "" && file != "":
		return "", fmt.Errorf("%s: passwordFromEnv and passwordFile are both set: choose one", field)
	case fromEnv != "":
		v, ok := lookupEnv(fromEnv)
		if !ok || v == "" {
			return "", fmt.Errorf("%s.passwordFromEnv = %q: environment variable is not set", field, fromEnv)
		}
		return v, nil
	case file != "":
		b, err := readFile(file)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return "", fmt.Errorf("%s.passwordFile = %q: cannot be read: %v", field, file, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return "", nil
}

func (p *Policy) validate() []error {
	errs := p.Defaults.Validate("policy.defaults.")
	base := p.Defaults.Apply(BuiltinDefaults())
	errs = append(errs, ValidateParams("policy.defaults.", base)...)
	for _, name := range sortedKeys(p.Profiles) {
		prefix := "policy.profiles." + name + "."
		prof := p.Profiles[name]
		if name == "" {
			errs = append(errs, fmt.Errorf("policy.profiles: a profile name must not be empty"))
		}
		errs = append(errs, prof.Validate(prefix)...)
		errs = append(errs, ValidateParams(prefix, prof.Apply(base))...)
	}
	return errs
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
