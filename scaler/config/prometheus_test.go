package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// pemPair is a throwaway self-signed certificate and its key.
func pemPair(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"}, NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k})
}

func fileMap(m map[string][]byte) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		if b, ok := m[name]; ok {
			return b, nil
		}
		return noFiles(name)
	}
}

func TestPrometheusConnection(t *testing.T) {
	cert, key := pemPair(t)
	files := fileMap(map[string][]byte{"/tls/ca.pem": cert, "/tls/cert.pem": cert, "/tls/key.pem": key, "/token": []byte("t0ken\n"), "/pw": []byte("pw-from-file\n")})
	y := `
connections:
  bearer-env:
    type: prometheus
    url: https://prometheus.monitoring:9090/prom
    timeout: 1500ms
    bearerTokenFromEnv: PROM_TOKEN
    tls: {caFile: /tls/ca.pem, certFile: /tls/cert.pem, keyFile: /tls/key.pem, serverName: prometheus.example}
  bearer-file:
    type: prometheus
    url: http://prometheus:9090
    bearerTokenFile: /token
  basic:
    type: prometheus
    url: http://prometheus:9090
    username: flowscaler
    passwordFile: /pw
`
	c, err := Parse([]byte(y), env(map[string]string{"PROM_TOKEN": "from-env"}), files)
	if err != nil {
		t.Fatal(err)
	}
	be := c.Connections["bearer-env"]
	if be.BearerToken() != "from-env" || be.Timeout == nil || time.Duration(*be.Timeout) != 1500*time.Millisecond {
		t.Errorf("bearer-env: token %q timeout %v; want from-env, 1.5s", be.BearerToken(), be.Timeout)
	}
	if diff := cmp.Diff(ClientTLS{CAFile: "/tls/ca.pem", CertFile: "/tls/cert.pem", KeyFile: "/tls/key.pem", ServerName: "prometheus.example"}, be.TLS); diff != "" {
		t.Errorf("tls (-want +got):\n%s", diff)
	}
	if bf := c.Connections["bearer-file"]; bf.BearerToken() != "" || bf.BearerTokenFile != "/token" {
		t.Errorf("bearer-file: token %q file %q; the file is read per query, not at load", bf.BearerToken(), bf.BearerTokenFile)
	}
	if b := c.Connections["basic"]; b.Username != "flowscaler" || b.Password() != "pw-from-file" {
		t.Errorf("basic: %q / %q", b.Username, b.Password())
	}
	for name, conn := range c.Connections {
		if s := conn.String(); strings.Contains(s, "from-env") || strings.Contains(s, "pw-from-file") {
			t.Errorf("%s: String() leaks a secret: %s", name, s)
		}
	}
}

func TestPrometheusConnectionErrors(t *testing.T) {
	cert, _ := pemPair(t)
	files := fileMap(map[string][]byte{"/empty": []byte("\n"), "/not-pem": []byte("hello"), "/cert.pem": cert})
	tests := []struct {
		name string
		conn string
		want []string
	}{
		{name: "scheme", conn: `{type: prometheus, url: "redis://h:1"}`, want: []string{`connections.p.url = "redis://h:1": scheme must be http or https`}},
		{name: "no url", conn: `{type: prometheus}`, want: []string{`connections.p.url = "": must be an http:// or https:// URL`}},
		{name: "no host", conn: `{type: prometheus, url: "http:///api"}`, want: []string{`connections.p.url = "http:///api": must name a host, as in http://prometheus:9090`}},
		{name: "credentials in the url", conn: `{type: prometheus, url: "http://u:planted@h:9090"}`, want: []string{`connections.p.url = "http://u:xxxxx@h:9090": must not carry credentials`}},
		{name: "tls over http", conn: `{type: prometheus, url: "http://h:9090", tls: {insecureSkipVerify: true}}`, want: []string{`connections.p.url = "http://h:9090": is http:// but tls is set: use https://`}},
		{name: "zero timeout", conn: `{type: prometheus, url: "http://h", timeout: 0s}`, want: []string{`connections.p.timeout = "0s": must be > 0`}},
		{name: "timeout beyond readTimeout", conn: `{type: prometheus, url: "http://h", timeout: 5s}`, want: []string{`connections.p.timeout = "5s": must be <= server.readTimeout (2s)`}},
		{name: "basic and bearer", conn: `{type: prometheus, url: "http://h", username: u, passwordFile: /pw, bearerTokenFile: /t}`, want: []string{"connections.p: basic auth (username, password…) and a bearer token (bearerToken…) are both set: choose one"}},
		{name: "password without username", conn: `{type: prometheus, url: "http://h", passwordFromEnv: PW}`, want: []string{`connections.p.username = "": required with passwordFromEnv or passwordFile (basic auth)`}},
		{name: "username without password", conn: `{type: prometheus, url: "http://h", username: u}`, want: []string{`connections.p.username = "u": needs passwordFromEnv or passwordFile (basic auth)`}},
		{name: "two bearer sources", conn: `{type: prometheus, url: "http://h", bearerTokenFromEnv: T, bearerTokenFile: /t}`, want: []string{"connections.p: bearerTokenFromEnv and bearerTokenFile are both set: choose one"}},
		{name: "unset token variable", conn: `{type: prometheus, url: "http://h", bearerTokenFromEnv: NOPE}`, want: []string{`connections.p.bearerTokenFromEnv = "NOPE": environment variable is not set`}},
		{name: "missing token file", conn: `{type: prometheus, url: "http://h", bearerTokenFile: /nope}`, want: []string{`connections.p.bearerTokenFile = "/nope": cannot be read: file does not exist`}},
		{name: "empty token file", conn: `{type: prometheus, url: "http://h", bearerTokenFile: /empty}`, want: []string{`connections.p.bearerTokenFile = "/empty": is empty`}},
		{name: "ca not pem", conn: `{type: prometheus, url: "https://h", tls: {caFile: /not-pem}}`, want: []string{`connections.p.tls.caFile = "/not-pem": holds no PEM certificate`}},
		{name: "cert without key", conn: `{type: prometheus, url: "https://h", tls: {certFile: /cert.pem}}`, want: []string{`connections.p.tls.certFile = "/cert.pem", connections.p.tls.keyFile = "": set both or neither`}},
		{name: "key does not match", conn: `{type: prometheus, url: "https://h", tls: {certFile: /cert.pem, keyFile: /not-pem}}`, want: []string{`connections.p.tls.certFile = "/cert.pem": does not load with keyFile "/not-pem"`}},
		{name: "prometheus fields on redis", conn: `{type: redis, url: "redis://h:1", bearerTokenFile: /t, timeout: 1s}`, want: []string{
			"connections.p.timeout: only prometheus connections take it",
			"connections.p.bearerTokenFile: only prometheus connections take it",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte("connections:\n  p: "+tt.conn+"\n"), env(nil), files)
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "planted") {
				t.Errorf("error leaks a secret: %v", err)
			}
		})
	}
}

func TestDefaultQueriesRender(t *testing.T) {
	q := DefaultQueries()
	got, err := RenderQuery(q.ProcessingMean, `service="order-processor"`, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := `sum(rate(messaging_processing_duration_milliseconds_sum{ service="order-processor" }[2m])) / sum(rate(messaging_processing_duration_milliseconds_count{ service="order-processor" }[2m]))`
	if got != want {
		t.Errorf("processingMean rendered:\n got %s\nwant %s", got, want)
	}
	if q.Unit() != time.Millisecond {
		t.Errorf("Unit() = %v, want 1ms: the seed's histogram is in milliseconds", q.Unit())
	}
	for _, nt := range q.Templates() {
		if nt.Template == "" {
			continue
		}
		if _, err := RenderQuery(nt.Template, `service="x", namespace=~"shop|billing"`, 90*time.Second); err != nil {
			t.Errorf("%s: %v", nt.Name, err)
		}
	}
}

func TestQueriesErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "does not parse",
			yaml: `queries: {processingMean: "sum(rate(x{ {{.Selector}} }[{{.Window}}])"}`,
			want: []string{`queries.processingMean = "sum(rate(x{ {{.Selector}} }[{{.Window}}])": does not parse as PromQL: 1:37: parse error: unclosed left parenthesis (rendered as "sum(rate(x{ service=\"example\" }[2m])")`},
		},
		{
			name: "range vector",
			yaml: `queries: {consumptionRate: "x{ {{.Selector}} }[{{.Window}}]"}`,
			want: []string{`queries.consumptionRate = "x{ {{.Selector}} }[{{.Window}}]": must evaluate to an instant vector or a scalar, not a range vector`},
		},
		{
			name: "bad template",
			yaml: `queries: {failureRate: "sum(x{ {{.Selector }[1m])"}`,
			want: []string{`queries.failureRate = "sum(x{ {{.Selector }[1m])": is not a valid template:`},
		},
		{
			name: "unknown field",
			yaml: `queries: {readyPods: "sum(up{ {{.Service}} })"}`,
			want: []string{`queries.readyPods = "sum(up{ {{.Service}} })": is not a valid template:`, "can't evaluate field Service", "it can use {{.Selector}} and {{.Window}}"},
		},
		{
			name: "window, unit, ttl",
			yaml: `queries: {window: 500ms, processingUnit: sec, cacheTTL: 0s}`,
			want: []string{`queries.window = "500ms": must be >= 1s`, `queries.processingUnit = "sec": must be one of s, ms, us`, `queries.cacheTTL = "0s": must be > 0`},
		},
		{
			name: "unknown key",
			yaml: `queries: {processingP99: "x"}`,
			want: []string{"field processingP99 not found"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml+"\n"), env(nil), noFiles)
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

func TestQueriesPartialOverride(t *testing.T) {
	c, err := Parse([]byte("queries:\n  processingUnit: s\n  readyPods: 'sum(kube_deployment_status_replicas_ready{ {{.Selector}} })'\n  failureRate: ''\n"), env(nil), noFiles)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultQueries()
	want.ProcessingUnit = "s"
	want.ReadyPods = "sum(kube_deployment_status_replicas_ready{ {{.Selector}} })"
	want.FailureRate = ""
	if diff := cmp.Diff(want, c.Queries); diff != "" {
		t.Errorf("queries (-want +got):\n%s", diff)
	}
}

func TestCanonicalSelector(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: `service="order-processor"`, want: `service="order-processor"`},
		{in: ` service = "order-processor" ,namespace=~"shop|billing" `, want: `service="order-processor", namespace=~"shop|billing"`},
		{in: `service!="a",pod!~"x.*"`, want: `service!="a", pod!~"x.*"`},
		{in: `service="a"} or vector(1) or up{x="y"`, wantErr: `must be PromQL label matchers like service="order-processor": `},
		{in: `service=order-processor`, wantErr: `must be PromQL label matchers like service="order-processor": `},
		{in: `__name__="up"`, wantErr: "must not match the metric name: the query templates choose the metrics"},
	}
	for _, tc := range tests {
		got, err := CanonicalSelector(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("CanonicalSelector(%q) = %q, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("CanonicalSelector(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
