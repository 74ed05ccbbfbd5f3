package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"text/template"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
)

// ClientTLS is how flowscaler verifies a Prometheus served over https and,
// with certFile and keyFile, which client certificate it presents. The
// files are checked at load and read when the connection is built.
type ClientTLS struct {
	CAFile             string `yaml:"caFile"`
	CertFile           string `yaml:"certFile"`
	KeyFile            string `yaml:"keyFile"`
	ServerName         string `yaml:"serverName"`
	InsecureSkipVerify bool   `yaml:"insecureSkipVerify"`
}

// BearerToken is the token resolved from BearerTokenFromEnv ("" when none).
// A BearerTokenFile is not resolved here: the reader reads it on every
// query, so that a rotated token works without a reload.
func (c Connection) BearerToken() string { return c.bearerToken }

// Queries are the PromQL templates that read a queue's consumer metrics,
// rendered per ScaledObject with text/template: {{.Selector}} is the
// object's processingSelector (label matchers, without braces) and
// {{.Window}} the rate window as a PromQL duration. An empty template is
// not read. Every template must render to PromQL that parses and evaluates
// to an instant vector or a scalar; a ScaledObject may replace any of them
// with a whole query of its own.
type Queries struct {
	// Window is the range of the rates in the templates. >= 1s; several
	// scrape intervals, or rate() has too few samples.
	Window Duration `yaml:"window"`
	// ProcessingUnit is the unit the processing-time queries return: s,
	// ms or us. The seed's histogram is in milliseconds.
	ProcessingUnit string `yaml:"processingUnit"`
	// CacheTTL is how long one answer to a query is shared by every
	// ScaledObject that asks it (set at start). > 0.
	CacheTTL Duration `yaml:"cacheTTL"`
	// ProcessingMean evaluates to the mean processing time per message.
	ProcessingMean string `yaml:"processingMean"`
	// ProcessingP95 evaluates to the 95th-percentile processing time.
	ProcessingP95 string `yaml:"processingP95"`
	// ConsumptionRate evaluates to messages processed per second.
	ConsumptionRate string `yaml:"consumptionRate"`
	// FailureRate evaluates to messages failed per second.
	FailureRate string `yaml:"failureRate"`
	// ReadyPods evaluates to the number of ready consumer pods.
	ReadyPods string `yaml:"readyPods"`
}

// The seed consumers' metrics as an OpenTelemetry Prometheus exporter
// names them: messaging.processing.duration (a histogram in ms) gains its
// unit suffix, the counters gain _total. An exporter without unit suffixes
// writes messaging_processing_duration_bucket: change the templates.
const (
	seedHistogram = "messaging_processing_duration_milliseconds"
	seedConsumed  = "messaging_messages_consumed_total"
	seedFailed    = "messaging_messages_failed_total"
)

// DefaultQueries match the seed consumers' metrics. The failure rate is 0,
// not unknown, while the consumers' consumed counter exists but their
// failed counter does not yet: an OpenTelemetry counter appears only once
// something has failed.
func DefaultQueries() Queries {
	rate := func(metric string) string {
		return "rate(" + metric + "{ {{.Selector}} }[{{.Window}}])"
	}
	return Queries{
		Window:          Duration(2 * time.Minute),
		ProcessingUnit:  "ms",
		CacheTTL:        Duration(5 * time.Second),
		ProcessingMean:  "sum(" + rate(seedHistogram+"_sum") + ") / sum(" + rate(seedHistogram+"_count") + ")",
		ProcessingP95:   "histogram_quantile(0.95, sum by (le) (" + rate(seedHistogram+"_bucket") + "))",
		ConsumptionRate: "sum(" + rate(seedConsumed) + ")",
		FailureRate:     "sum(" + rate(seedFailed) + ") or 0 * sum(" + rate(seedConsumed) + ")",
		ReadyPods:       "",
	}
}

// processingUnits are the accepted ProcessingUnit values.
var processingUnits = map[string]time.Duration{"s": time.Second, "ms": time.Millisecond, "us": time.Microsecond}

// ParseProcessingUnit turns "s", "ms" or "us" into a Duration; the error states the rule.
func ParseProcessingUnit(s string) (time.Duration, error) {
	if u, ok := processingUnits[s]; ok {
		return u, nil
	}
	return 0, errors.New("must be one of s, ms, us")
}

// Unit is ProcessingUnit as a Duration (validated at load).
func (q Queries) Unit() time.Duration { return processingUnits[q.ProcessingUnit] }

// NamedTemplate is one query template and its name in the config.
type NamedTemplate struct {
	Name     string // e.g. "processingMean"
	Template string
}

// Templates lists the templates in a fixed order, empty ones included.
func (q Queries) Templates() []NamedTemplate {
	return []NamedTemplate{
		{"processingMean", q.ProcessingMean},
		{"processingP95", q.ProcessingP95},
		{"consumptionRate", q.ConsumptionRate},
		{"failureRate", q.FailureRate},
		{"readyPods", q.ReadyPods},
	}
}

// exampleSelector stands in for a ScaledObject's selector when templates
// are checked at load.
const exampleSelector = `service="example"`

func (q Queries) validate() []error {
	var errs []error
	if time.Duration(q.Window) < time.Second {
		errs = append(errs, fmt.Errorf("queries.window = %q: must be >= 1s", q.Window))
	}
	if _, err := ParseProcessingUnit(q.ProcessingUnit); err != nil {
		errs = append(errs, fmt.Errorf("queries.processingUnit = %q: %v", q.ProcessingUnit, err))
	}
	if q.CacheTTL <= 0 {
		errs = append(errs, fmt.Errorf("queries.cacheTTL = %q: must be > 0", q.CacheTTL))
	}
	for _, t := range q.Templates() {
		if t.Template == "" {
			continue
		}
		if _, err := RenderQuery(t.Template, exampleSelector, time.Duration(max(q.Window, Duration(time.Second)))); err != nil {
			errs = append(errs, fmt.Errorf("queries.%s = %q: %v", t.Name, t.Template, err))
		}
	}
	return errs
}

// queryData is what a template sees.
type queryData struct {
	Selector string // label matchers without braces, e.g. service="order-processor"
	Window   string // a PromQL duration, e.g. 2m
}

// RenderQuery renders a template for one selector and window and checks
// the result with the PromQL parser. Errors state the rule: "is not a
// valid template: …", or "does not parse as PromQL: … (rendered as …)".
func RenderQuery(tmpl, selector string, window time.Duration) (string, error) {
	t, err := template.New("query").Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("is not a valid template: %v", trimTemplateErr(err))
	}
	var b strings.Builder
	if err := t.Execute(&b, queryData{Selector: selector, Window: model.Duration(window).String()}); err != nil {
		return "", fmt.Errorf("is not a valid template: %v (it can use {{.Selector}} and {{.Window}})", trimTemplateErr(err))
	}
	expr := b.String()
	if err := CheckPromQL(expr); err != nil {
		return "", fmt.Errorf("%v (rendered as %q)", err, expr)
	}
	return expr, nil
}

// trimTemplateErr drops text/template's "template: query:" prefix, which
// names nothing the user wrote.
func trimTemplateErr(err error) string {
	return strings.TrimPrefix(err.Error(), "template: query:")
}

var promQLParser = parser.NewParser(parser.Options{})

// CheckPromQL parses expr as PromQL and requires an instant vector or a
// scalar: flowscaler reads one value at one instant.
func CheckPromQL(expr string) error {
	e, err := promQLParser.ParseExpr(expr)
	if err != nil {
		return fmt.Errorf("does not parse as PromQL: %v", err)
	}
	if t := e.Type(); t != parser.ValueTypeVector && t != parser.ValueTypeScalar {
		return fmt.Errorf("must evaluate to an instant vector or a scalar, not a %s", parser.DocumentedType(t))
	}
	return nil
}

// CanonicalSelector parses label matchers written without braces, such as
// `service="order-processor", namespace=~"shop|billing"`, and returns them
// in one canonical form, so that two ScaledObjects that write the same
// matchers differently share their queries. A metric name is refused: the
// templates choose the metrics.
func CanonicalSelector(sel string) (string, error) {
	ms, err := promQLParser.ParseMetricSelector("{" + sel + "}")
	if err != nil {
		return "", fmt.Errorf("must be PromQL label matchers like service=\"order-processor\": %v", err)
	}
	parts := make([]string, 0, len(ms))
	for _, m := range ms {
		if m.Name == model.MetricNameLabel {
			return "", errors.New("must not match the metric name: the query templates choose the metrics")
		}
		parts = append(parts, m.String())
	}
	return strings.Join(parts, ", "), nil
}

// validatePrometheus checks a prometheus connection and resolves its
// bearer token from the environment.
func (c *Connection) validatePrometheus(field string, readTimeout Duration, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) []error {
	var errs []error
	bad := func(f, value, rule string) { errs = append(errs, fmt.Errorf("%s.%s = %q: %s", field, f, value, rule)) }
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		bad("url", "", "must be an http:// or https:// URL")
	case err != nil:
		bad("url", RedactURL(c.URL), "must be an http:// or https:// URL")
	case u.Scheme != "http" && u.Scheme != "https":
		bad("url", u.Redacted(), "scheme must be http or https")
	case u.Host == "":
		bad("url", u.Redacted(), "must name a host, as in http://prometheus:9090")
	case u.User != nil:
		bad("url", u.Redacted(), "must not carry credentials: use username with passwordFromEnv or passwordFile, or a bearer token")
	case u.Scheme == "http" && c.TLS != (ClientTLS{}):
		bad("url", u.Redacted(), "is http:// but tls is set: use https://")
	}
	if c.Timeout != nil {
		switch t := *c.Timeout; {
		case t <= 0:
			bad("timeout", t.String(), "must be > 0")
		case t > readTimeout:
			bad("timeout", t.String(), fmt.Sprintf("must be <= server.readTimeout (%s), which cuts every read off anyway", readTimeout))
		}
	}
	basic := c.Username != "" || c.PasswordFromEnv != "" || c.PasswordFile != ""
	bearer := c.BearerTokenFromEnv != "" || c.BearerTokenFile != ""
	switch {
	case basic && bearer:
		errs = append(errs, fmt.Errorf("%s: basic auth (username, password…) and a bearer token (bearerToken…) are both set: choose one", field))
	case c.Username == "" && (c.PasswordFromEnv != "" || c.PasswordFile != ""):
		bad("username", "", "required with passwordFromEnv or passwordFile (basic auth)")
	case c.Username != "" && c.PasswordFromEnv == "" && c.PasswordFile == "":
		bad("username", c.Username, "needs passwordFromEnv or passwordFile (basic auth)")
	case c.BearerTokenFromEnv != "" && c.BearerTokenFile != "":
		errs = append(errs, fmt.Errorf("%s: bearerTokenFromEnv and bearerTokenFile are both set: choose one", field))
	case c.BearerTokenFromEnv != "":
		v, ok := lookupEnv(c.BearerTokenFromEnv)
		if !ok || v == "" {
			bad("bearerTokenFromEnv", c.BearerTokenFromEnv, "environment variable is not set")
		}
		c.bearerToken = strings.TrimSpace(v)
	case c.BearerTokenFile != "":
		b, err := readFile(c.BearerTokenFile)
		switch {
		case err != nil:
			bad("bearerTokenFile", c.BearerTokenFile, fmt.Sprintf("cannot be read: %v", unwrapPath(err)))
		case strings.TrimSpace(string(b)) == "":
			bad("bearerTokenFile", c.BearerTokenFile, "is empty")
		}
	}
	return append(errs, c.TLS.validate(field+".tls", readFile)...)
}

// validate reads the files now, so that a broken Secret mount stops the
// start (or the reload) instead of failing every query.
func (t ClientTLS) validate(field string, readFile func(string) ([]byte, error)) []error {
	var errs []error
	read := func(name, path string) []byte {
		b, err := readFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.%s = %q: cannot be read: %v", field, name, path, unwrapPath(err)))
		}
		return b
	}
	if t.CAFile != "" {
		if pem := read("caFile", t.CAFile); pem != nil && !x509.NewCertPool().AppendCertsFromPEM(pem) {
			errs = append(errs, fmt.Errorf("%s.caFile = %q: holds no PEM certificate", field, t.CAFile))
		}
	}
	switch {
	case t.CertFile == "" && t.KeyFile == "":
	case t.CertFile == "" || t.KeyFile == "":
		errs = append(errs, fmt.Errorf("%s.certFile = %q, %s.keyFile = %q: set both or neither", field, t.CertFile, field, t.KeyFile))
	default:
		cert, key := read("certFile", t.CertFile), read("keyFile", t.KeyFile)
		if cert != nil && key != nil {
			if _, err := tls.X509KeyPair(cert, key); err != nil {
				errs = append(errs, fmt.Errorf("%s.certFile = %q: does not load with keyFile %q: %v", field, t.CertFile, t.KeyFile, err))
			}
		}
	}
	return errs
}

// prometheusOnly names the fields a redis connection must leave unset.
func (c Connection) prometheusOnly() []string {
	var set []string
	if c.Timeout != nil {
		set = append(set, "timeout")
	}
	if c.Username != "" {
		set = append(set, "username")
	}
	if c.BearerTokenFromEnv != "" {
		set = append(set, "bearerTokenFromEnv")
	}
	if c.BearerTokenFile != "" {
		set = append(set, "bearerTokenFile")
	}
	if c.TLS != (ClientTLS{}) {
		set = append(set, "tls")
	}
	return set
}
