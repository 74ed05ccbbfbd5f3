package sources

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

var _ InstantQuerier = (*PrometheusQuerier)(nil)

// PromQL is one instant query on one named Prometheus connection. It is
// comparable: ScaledObjects that ask the same question share one query.
type PromQL struct {
	Connection string // name of a prometheus connection in flowscaler's config
	Expr       string // the PromQL expression, already rendered
}

// String is the human form used in errors, e.g. `prometheus monitoring: sum(up)`.
func (q PromQL) String() string { return "prometheus " + q.Connection + ": " + q.Expr }

// Sample is the answer to one instant query: how many series it returned
// and, when exactly one, its value. A successful HTTP answer is a Sample
// even when it is empty; Single says whether it is usable.
type Sample struct {
	// At is when the query was answered (the querier's clock).
	At time.Time
	// Series is the number of series returned; a scalar counts as one.
	Series int
	// Value is the single series' value; NaN unless Series == 1.
	Value float64
	// Labels lists up to three returned series' label sets, for errors
	// that must say which series were too many.
	Labels []string
}

var (
	// ErrNoSeries: the query matched nothing. Usually a selector that names
	// no consumer, or consumers that have not exported the metric yet.
	ErrNoSeries = errors.New("returned no series")
	// ErrSeveralSeries: the query must be aggregated down to one value.
	ErrSeveralSeries = errors.New("returned several series")
	// ErrNotANumber: NaN, typically 0 ÷ 0 in a ratio of rates while nothing
	// was processed in the window.
	ErrNotANumber = errors.New("returned NaN")
	// ErrOutOfRange: ±Inf, or negative where only >= 0 makes sense.
	ErrOutOfRange = errors.New("returned a value out of range")
	// ErrWrongType: a range vector or string; config and metadata
	// validation refuse such queries, so this means Prometheus disagrees
	// with the parser flowscaler was built with.
	ErrWrongType = errors.New("returned neither an instant vector nor a scalar")
)

// Single is the one value of s, or why there is none: ErrNoSeries,
// ErrSeveralSeries (naming some of them) or ErrNotANumber. It is never a
// silent 0.
func (s Sample) Single() (float64, error) {
	switch {
	case s.Series == 0:
		return math.NaN(), ErrNoSeries
	case s.Series > 1:
		more := ""
		if s.Series > len(s.Labels) {
			more = ", …"
		}
		return math.NaN(), fmt.Errorf("%w: %d (%s%s), want exactly one: aggregate it (sum) or narrow the selector",
			ErrSeveralSeries, s.Series, strings.Join(s.Labels, ", "), more)
	case math.IsNaN(s.Value):
		return math.NaN(), ErrNotANumber
	}
	return s.Value, nil
}

// InstantQuerier evaluates one PromQL expression at the current time.
// Transport and API failures are errors; any answer Prometheus gives,
// empty or not, is a Sample.
type InstantQuerier interface {
	Instant(ctx context.Context, q PromQL) (Sample, error)
}

// PrometheusConnection is one named Prometheus server from flowscaler's
// config. It is a comparable value: SetConnections keeps an existing client
// exactly when the new PrometheusConnection equals the old one.
type PrometheusConnection struct {
	// URL is the server's base URL, http:// or https://, with any path
	// prefix the server is served under.
	URL string
	// Timeout bounds one query; 0 leaves only the caller's deadline.
	Timeout time.Duration
	// BearerToken is sent as "Authorization: Bearer …".
	BearerToken string
	// BearerTokenFile is read on every query, so that a rotated token (a
	// projected service-account token) is used without a reload.
	BearerTokenFile string
	// Username and Password are sent as HTTP basic auth when Username is set.
	Username string
	Password string
	TLS      PrometheusTLS
}

// PrometheusTLS names the PEM files and settings of an https connection.
// The files are read when the connection is (re)built.
type PrometheusTLS struct {
	CAFile             string
	CertFile           string
	KeyFile            string
	ServerName         string
	InsecureSkipVerify bool
}

// String redacts credentials so that a PrometheusConnection printed with %v
// by mistake leaks nothing.
func (c PrometheusConnection) String() string {
	return fmt.Sprintf("PrometheusConnection{URL: %s, Auth: %s}", redactURL(c.URL), c.authKind())
}

// GoString redacts for %#v too.
func (c PrometheusConnection) GoString() string { return c.String() }

// LogValue implements slog.LogValuer with the same redaction as String.
func (c PrometheusConnection) LogValue() slog.Value {
	return slog.GroupValue(slog.String("url", redactURL(c.URL)), slog.String("auth", c.authKind()))
}

func (c PrometheusConnection) authKind() string {
	switch {
	case c.BearerToken != "":
		return "bearer token"
	case c.BearerTokenFile != "":
		return "bearer token file " + c.BearerTokenFile
	case c.Username != "":
		return "basic"
	}
	return "none"
}

// PrometheusOptions tune a PrometheusQuerier. Zero values select the defaults.
type PrometheusOptions struct {
	// Now stamps Sample.At. Default time.Now.
	Now func() time.Time
	// ReadFile reads bearer token and TLS files. Default os.ReadFile.
	ReadFile func(string) ([]byte, error)
}

// PrometheusQuerier runs instant queries over named Prometheus connections
// with client_golang's v1 API. It is safe for concurrent use; connections
// can be replaced while queries are running.
type PrometheusQuerier struct {
	opts PrometheusOptions

	mu     sync.RWMutex
	conns  map[string]*promConn
	closed bool
}

type promConn struct {
	cfg       PrometheusConnection
	api       v1.API
	transport *http.Transport
	auth      *authRoundTripper
}

// ErrPrometheusClosed is returned after Close.
var ErrPrometheusClosed = errors.New("prometheus querier is closed")

// NewPrometheusQuerier returns a querier with no connections; call SetConnections.
func NewPrometheusQuerier(opts PrometheusOptions) *PrometheusQuerier {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ReadFile == nil {
		opts.ReadFile = os.ReadFile
	}
	return &PrometheusQuerier{opts: opts, conns: map[string]*promConn{}}
}

// SetConnections replaces the set of named connections, for start-up and
// reload alike: unchanged connections keep their client and its pooled
// connections. It is all-or-nothing: if any connection cannot be built
// (bad URL, unreadable TLS file), nothing changes and the error names every
// bad connection.
func (p *PrometheusQuerier) SetConnections(conns map[string]PrometheusConnection) error {
	names := make([]string, 0, len(conns))
	for name := range conns {
		names = append(names, name)
	}
	sort.Strings(names)

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrPrometheusClosed
	}
	next := make(map[string]*promConn, len(conns))
	var errs []error
	for _, name := range names {
		cfg := conns[name]
		if old, ok := p.conns[name]; ok && old.cfg == cfg {
			next[name] = old
			continue
		}
		c, err := p.newConn(cfg)
		if err != nil {
			errs = append(errs, fmt.Errorf("prometheus connection %q: %w", name, err))
			continue
		}
		next[name] = c
	}
	if len(errs) > 0 {
		for name, c := range next {
			if p.conns[name] != c {
				c.transport.CloseIdleConnections()
			}
		}
		return errors.Join(errs...)
	}
	for name, old := range p.conns {
		if next[name] != old {
			old.transport.CloseIdleConnections()
		}
	}
	p.conns = next
	return nil
}

// Close drops every connection. Queries after Close fail with ErrPrometheusClosed.
func (p *PrometheusQuerier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.transport.CloseIdleConnections()
	}
	p.conns = map[string]*promConn{}
	p.closed = true
	return nil
}

func (p *PrometheusQuerier) newConn(cfg PrometheusConnection) (*promConn, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("URL %s: must be an http:// or https:// URL with a host", redactURL(cfg.URL))
	}
	tlsCfg, err := clientTLS(cfg.TLS, p.opts.ReadFile)
	if err != nil {
		return nil, err
	}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   5 * time.Second,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
	auth := &authRoundTripper{next: transport, cfg: cfg, readFile: p.opts.ReadFile}
	client, err := api.NewClient(api.Config{Address: cfg.URL, RoundTripper: auth})
	if err != nil {
		return nil, fmt.Errorf("URL %s: %v", redactURL(cfg.URL), err)
	}
	return &promConn{cfg: cfg, api: v1.NewAPI(client), transport: transport, auth: auth}, nil
}

// clientTLS builds the TLS settings of an https connection; nil means Go's
// defaults (system roots, server name from the URL).
func clientTLS(t PrometheusTLS, readFile func(string) ([]byte, error)) (*tls.Config, error) {
	if t == (PrometheusTLS{}) {
		return nil, nil
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, // an explicit opt-in, for test servers only
	}
	if t.CAFile != "" {
		pem, err := readFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.caFile %q: cannot be read: %v", t.CAFile, pathErr(err))
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.caFile %q: holds no PEM certificate", t.CAFile)
		}
	}
	if t.CertFile != "" || t.KeyFile != "" {
		certPEM, err := readFile(t.CertFile)
		if err != nil {
			return nil, fmt.Errorf("tls.certFile %q: cannot be read: %v", t.CertFile, pathErr(err))
		}
		keyPEM, err := readFile(t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.keyFile %q: cannot be read: %v", t.KeyFile, pathErr(err))
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("tls.certFile %q with tls.keyFile %q: %v", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func pathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// authRoundTripper adds the connection's credentials to every request.
type authRoundTripper struct {
	next     http.RoundTripper
	cfg      PrometheusConnection
	readFile func(string) ([]byte, error)
	// fileToken is the token last read from BearerTokenFile, so that an
	// error can be scrubbed of it.
	fileToken atomic.Pointer[string]
}

// secrets are the credentials the connection sends: the bearer token (a
// file's as last read), or the basic-auth password and its header value.
func (a *authRoundTripper) secrets() []string {
	out := []string{a.cfg.BearerToken, a.cfg.Password}
	if t := a.fileToken.Load(); t != nil {
		out = append(out, *t)
	}
	if a.cfg.Username != "" && a.cfg.Password != "" {
		out = append(out, base64.StdEncoding.EncodeToString([]byte(a.cfg.Username+":"+a.cfg.Password)))
	}
	return out
}

func (a *authRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	token := a.cfg.BearerToken
	if a.cfg.BearerTokenFile != "" {
		b, err := a.readFile(a.cfg.BearerTokenFile)
		if err != nil {
			return nil, credentialError{fmt.Errorf("bearerTokenFile %q: cannot be read: %v", a.cfg.BearerTokenFile, pathErr(err))}
		}
		if token = strings.TrimSpace(string(b)); token == "" {
			return nil, credentialError{fmt.Errorf("bearerTokenFile %q: is empty", a.cfg.BearerTokenFile)}
		}
		a.fileToken.Store(&token)
	}
	if token == "" && a.cfg.Username == "" {
		return a.next.RoundTrip(req)
	}
	// A RoundTripper must not modify the request it was given.
	req = req.Clone(req.Context())
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	} else {
		req.SetBasicAuth(a.cfg.Username, a.cfg.Password)
	}
	return a.next.RoundTrip(req)
}

// credentialError is a request that was never sent because its
// credentials could not be read; it is not an unreachable server.
type credentialError struct{ error }

func (p *PrometheusQuerier) conn(name string) (*promConn, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return nil, ErrPrometheusClosed
	}
	c, ok := p.conns[name]
	if !ok {
		return nil, ErrUnknownConnection
	}
	return c, nil
}

// Instant implements InstantQuerier. Errors start with "prometheus NAME"
// and never carry credentials or the query.
func (p *PrometheusQuerier) Instant(ctx context.Context, q PromQL) (Sample, error) {
	c, err := p.conn(q.Connection)
	if err != nil {
		return Sample{}, fmt.Errorf("prometheus %s: %w", q.Connection, err)
	}
	if c.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	// The zero time lets Prometheus evaluate at its own "now". The
	// server-side timeout parameter is not sent: Prometheus 2.x rejects
	// fractional durations such as "1.5s", and it stops evaluating when the
	// request's context ends anyway.
	val, _, _, err := c.api.Query(ctx, q.Expr, time.Time{})
	if err != nil {
		return Sample{}, queryError(q.Connection, err, c.auth.secrets())
	}
	s, err := sampleOf(val)
	if err != nil {
		return Sample{}, fmt.Errorf("prometheus %s: query %w", q.Connection, err)
	}
	s.At = p.opts.Now()
	return s, nil
}

// maxLabelsShown bounds how many series an ErrSeveralSeries message names.
const maxLabelsShown = 3

func sampleOf(val model.Value) (Sample, error) {
	switch v := val.(type) {
	case model.Vector:
		s := Sample{Series: len(v), Value: math.NaN()}
		if len(v) == 1 {
			s.Value = float64(v[0].Value)
		}
		for i := 0; i < len(v) && i < maxLabelsShown; i++ {
			s.Labels = append(s.Labels, v[i].Metric.String())
		}
		return s, nil
	case *model.Scalar:
		return Sample{Series: 1, Value: float64(v.Value)}, nil
	case nil:
		return Sample{}, fmt.Errorf("%w: got no result", ErrWrongType)
	}
	return Sample{}, fmt.Errorf("%w: got a %s", ErrWrongType, val.Type())
}

// queryError says in a few words why a query got no answer: unreachable,
// timed out, or what Prometheus said. What the server said is scrubbed of
// secrets (before it is shortened, so that no part of one is left): a
// proxy or a careless server may echo the Authorization header it refused.
func queryError(conn string, err error, secrets []string) error {
	var apiErr *v1.Error
	var urlErr *url.Error
	var credErr credentialError
	switch {
	case errors.As(err, &credErr):
		return fmt.Errorf("prometheus %s: %w", conn, credErr.error)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("prometheus %s: no answer in time: %w", conn, context.DeadlineExceeded)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("prometheus %s: %w", conn, context.Canceled)
	case errors.As(err, &apiErr):
		msg := fmt.Sprintf("prometheus %s: %s: %s", conn, apiErr.Type, redactSecrets(apiErr.Msg, secrets))
		if d := strings.TrimSpace(redactSecrets(apiErr.Detail, secrets)); d != "" {
			if len(d) > 200 {
				d = d[:200] + "…"
			}
			msg += " (" + d + ")"
		}
		return errors.New(msg)
	case errors.As(err, &urlErr):
		// The URL is the connection's, which names no credentials; the
		// cause alone is what a person needs.
		return fmt.Errorf("prometheus %s unreachable: %w", conn, urlErr.Err)
	}
	// Any other error may quote the body too, as a JSON decoder's does.
	if msg := redactSecrets(err.Error(), secrets); msg != err.Error() {
		return fmt.Errorf("prometheus %s: %s", conn, msg)
	}
	return fmt.Errorf("prometheus %s: %w", conn, err)
}

// redactSecrets replaces every secret in msg, as is and in the forms a
// server could echo it (URL-escaped, quoted, base64), with xxxxx.
func redactSecrets(msg string, secrets []string) string {
	for _, s := range secrets {
		if s == "" {
			continue
		}
		for _, f := range []string{s, url.QueryEscape(s), url.PathEscape(s), strconv.Quote(s), base64.StdEncoding.EncodeToString([]byte(s))} {
			msg = strings.ReplaceAll(msg, f, redacted)
		}
	}
	return msg
}
