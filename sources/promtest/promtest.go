// Package promtest runs a real Prometheus for tests, and an exporter that
// publishes the seed consumers' metrics for it to scrape.
//
// Tests read consumer metrics from the real server rather than from canned
// answers because what matters is what PromQL makes of real scrapes: rate
// extrapolation, histogram_quantile, series that appear late or never.
//
// The package speaks Prometheus's HTTP API by hand (net/http and JSON) so
// that it works with whichever client_golang version a module pins.
package promtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/flowscaler/flowscaler/sources/proctest"
)

// Target is one endpoint Prometheus scrapes.
type Target struct {
	// Job is the job label; default "target-N".
	Job string
	// URL is the metrics endpoint, e.g. http://127.0.0.1:41234/metrics.
	URL string
	// Labels are added to every series of the target, as Kubernetes
	// relabelling adds service or pod labels.
	Labels map[string]string
}

// Options configure a Prometheus.
type Options struct {
	// ScrapeInterval is also the rule evaluation interval; default 1s.
	ScrapeInterval time.Duration
	Targets        []Target
	// TLSCertFile and TLSKeyFile, when set, serve the API over https only.
	TLSCertFile string
	TLSKeyFile  string
	// BasicAuthUser and BasicAuthPassword, when set, protect the API.
	BasicAuthUser     string
	BasicAuthPassword string
}

// Server is a prometheus child process listening on 127.0.0.1.
type Server struct {
	// Addr is host:port. It stays the same across Stop and Start.
	Addr string

	t      testing.TB
	bin    string
	dir    string
	opts   Options
	client *http.Client

	proc proctest.Slot
}

const startTimeout = 30 * time.Second

// Start runs prometheus on a free loopback port with its TSDB and config in
// t.TempDir(), waits until /-/ready answers 200, and kills it (by PID) when
// the test ends.
//
// Without prometheus on PATH the test is skipped, or fails when CI=true so
// that CI cannot pass by skipping everything.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		const msg = "prometheus is not on PATH; run test/deps.sh to install it"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if o.ScrapeInterval <= 0 {
		o.ScrapeInterval = time.Second
	}
	dir := t.TempDir()
	s := &Server{t: t, bin: bin, dir: dir, opts: o, client: &http.Client{Timeout: 5 * time.Second}}
	if o.TLSCertFile != "" {
		// The helper's own client checks readiness and polls values; the
		// code under test verifies the certificate.
		s.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	}
	if err := s.writeConfig(); err != nil {
		t.Fatalf("promtest: %v", err)
	}
	// The port is free when probed but another process can take it before
	// prometheus binds it, so a failed start is retried on a new port.
	var errs []error
	for range 5 {
		port, err := proctest.FreePort()
		if err != nil {
			t.Fatalf("promtest: finding a free port: %v", err)
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err := s.start(); err != nil {
			errs = append(errs, err)
			continue
		}
		t.Cleanup(s.proc.Kill)
		return s
	}
	t.Fatalf("promtest: starting prometheus: %v", errors.Join(errs...))
	return nil
}

// URL is the base URL of the API.
func (s *Server) URL() string {
	scheme := "http"
	if s.opts.TLSCertFile != "" {
		scheme = "https"
	}
	return scheme + "://" + s.Addr
}

// Stop kills the server and waits for it to exit. Stopping a stopped
// server does nothing.
func (s *Server) Stop() {
	s.t.Helper()
	s.proc.Kill()
}

// Start runs the server again on the same port and TSDB, for outage and
// recovery tests, and waits until it is ready.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("promtest: restarting prometheus: %v", err)
	}
}

func (s *Server) writeConfig() error {
	interval := model(s.opts.ScrapeInterval)
	var b strings.Builder
	fmt.Fprintf(&b, "global:\n  scrape_interval: %s\n  scrape_timeout: %s\n  evaluation_interval: %s\nscrape_configs:\n", interval, interval, interval)
	for i, tg := range s.opts.Targets {
		u, err := url.Parse(tg.URL)
		if err != nil || u.Host == "" {
			return fmt.Errorf("target %d: URL %q: must be like http://127.0.0.1:1234/metrics", i, tg.URL)
		}
		job := tg.Job
		if job == "" {
			job = fmt.Sprintf("target-%d", i)
		}
		path := u.Path
		if path == "" {
			path = "/metrics"
		}
		fmt.Fprintf(&b, "  - job_name: %s\n    scheme: %s\n    metrics_path: %s\n    static_configs:\n      - targets: [%s]\n",
			quote(job), u.Scheme, quote(path), quote(u.Host))
		if len(tg.Labels) > 0 {
			b.WriteString("        labels:\n")
			for k, v := range tg.Labels {
				fmt.Fprintf(&b, "          %s: %s\n", k, quote(v))
			}
		}
	}
	if err := os.WriteFile(filepath.Join(s.dir, "prometheus.yml"), []byte(b.String()), 0o600); err != nil {
		return err
	}
	var web strings.Builder
	if s.opts.TLSCertFile != "" {
		fmt.Fprintf(&web, "tls_server_config:\n  cert_file: %s\n  key_file: %s\n", quote(s.opts.TLSCertFile), quote(s.opts.TLSKeyFile))
	}
	if s.opts.BasicAuthUser != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(s.opts.BasicAuthPassword), bcrypt.MinCost)
		if err != nil {
			return err
		}
		fmt.Fprintf(&web, "basic_auth_users:\n  %s: %s\n", quote(s.opts.BasicAuthUser), quote(string(hash)))
	}
	return os.WriteFile(filepath.Join(s.dir, "web.yml"), []byte(web.String()), 0o600)
}

func (s *Server) start() error {
	return s.proc.Run(func() (*proctest.Process, error) {
		proc, err := proctest.Start(s.bin, []string{
			"--config.file=" + filepath.Join(s.dir, "prometheus.yml"),
			"--web.config.file=" + filepath.Join(s.dir, "web.yml"),
			"--storage.tsdb.path=" + filepath.Join(s.dir, "data"),
			"--web.listen-address=" + s.Addr,
			"--log.level=warn",
		}, filepath.Join(s.dir, "prometheus.log"), s.ready, startTimeout)
		if err != nil {
			return nil, fmt.Errorf("prometheus on %s: %w", s.Addr, err)
		}
		return proc, nil
	})
}

func (s *Server) ready() error {
	req, err := http.NewRequest(http.MethodGet, s.URL()+"/-/ready", nil)
	if err != nil {
		return err
	}
	s.auth(req)
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/-/ready: %s", resp.Status)
	}
	return nil
}

func (s *Server) auth(req *http.Request) {
	if s.opts.BasicAuthUser != "" {
		req.SetBasicAuth(s.opts.BasicAuthUser, s.opts.BasicAuthPassword)
	}
}

// Result is an instant query's answer: the number of series and, when
// there is exactly one (or a scalar), its value.
type Result struct {
	Series int
	Value  float64 // NaN unless Series == 1
}

// Query evaluates expr now.
func (s *Server) Query(ctx context.Context, expr string) (Result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/api/v1/query?query="+url.QueryEscape(expr), nil)
	if err != nil {
		return Result{}, err
	}
	s.auth(req)
	resp, err := s.client.Do(req)
	if err != nil {
		return Result{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return Result{}, err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return Result{}, fmt.Errorf("%s: %v: %s", resp.Status, err, bytes.TrimSpace(body))
	}
	if r.Status != "success" {
		return Result{}, fmt.Errorf("%s: %s", resp.Status, r.Error)
	}
	switch r.Data.ResultType {
	case "scalar":
		var v [2]json.RawMessage
		if err := json.Unmarshal(r.Data.Result, &v); err != nil {
			return Result{}, err
		}
		f, err := parseValue(v[1])
		return Result{Series: 1, Value: f}, err
	case "vector":
		var vec []struct {
			Value [2]json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(r.Data.Result, &vec); err != nil {
			return Result{}, err
		}
		res := Result{Series: len(vec), Value: math.NaN()}
		if len(vec) == 1 {
			res.Value, err = parseValue(vec[0].Value[1])
		}
		return res, err
	}
	return Result{}, fmt.Errorf("result type %q: want vector or scalar", r.Data.ResultType)
}

func parseValue(raw json.RawMessage) (float64, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, err
	}
	return strconv.ParseFloat(s, 64)
}

// WaitFor polls expr until it returns exactly one value for which ok is
// true, and returns that value. It fails the test after timeout, showing
// the last answer: scrapes and rate windows take real time, and a bounded
// poll is the only honest way to wait for them.
func (s *Server) WaitFor(t testing.TB, expr string, timeout time.Duration, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := s.Query(ctx, expr)
		cancel()
		switch {
		case err != nil:
			last = "error: " + err.Error()
		case r.Series != 1:
			last = fmt.Sprintf("%d series", r.Series)
		case ok(r.Value):
			return r.Value
		default:
			last = fmt.Sprintf("value %v", r.Value)
		}
		if time.Now().After(deadline) {
			t.Fatalf("promtest: %s did not reach the expected value within %s; last answer: %s", expr, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Near is a WaitFor condition: within a relative 1e-9 of want, which
// absorbs float rounding in ratios of rates and nothing else.
func Near(want float64) func(float64) bool {
	return func(v float64) bool { return math.Abs(v-want) <= 1e-9*math.Max(1, math.Abs(want)) }
}

// model formats a duration the way Prometheus's config wants it (no
// fractions: "1s", "500ms").
func model(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}

func quote(s string) string { return strconv.Quote(s) }
