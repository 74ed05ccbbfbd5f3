package sources

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/sources/redistest"
)

// A Redis that refuses the credentials: the read fails with Redis's own
// reason (WRONGPASS, NOAUTH) for lists and streams alike — a stream read is
// pipelined, and go-redis leaves a pipeline whose connection could not
// AUTH without replies or errors — and the password is in no error.
func TestRedisRefusedCredentials(t *testing.T) {
	const password = "the-redis-password-Wq4"
	rs := redistest.StartWithPassword(t, password)
	ctx := testCtx(t)
	rdb := rs.Client(t)
	check(t, rdb.XGroupCreateMkStream(ctx, "orders", "workers", "0").Err())
	check(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: "orders", Values: []string{"n", "1"}}).Err())
	check(t, rdb.RPush(ctx, "jobs", "a").Err())

	cases := []struct {
		name    string
		conn    RedisConnection
		wantErr string // "" for a good read
	}{
		{"right password", RedisConnection{URL: rs.URL(), Password: password}, ""},
		{"right password in the URL", RedisConnection{URL: "redis://:" + password + "@" + rs.Addr}, ""},
		{"wrong password", RedisConnection{URL: rs.URL(), Password: "wrong-" + password}, "WRONGPASS invalid username-password pair"},
		{"wrong password in the URL", RedisConnection{URL: "redis://:wrong-" + password + "@" + rs.Addr}, "WRONGPASS invalid username-password pair"},
		{"no password", RedisConnection{URL: rs.URL()}, "NOAUTH Authentication required"},
	}
	queries := []Query{
		{Kind: RedisList, Connection: "c", Name: "jobs"},
		{Kind: RedisStream, Connection: "c", Name: "orders", Group: "workers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRedis(RedisOptions{})
			t.Cleanup(func() { _ = r.Close() })
			check(t, r.SetConnections(map[string]RedisConnection{"c": tc.conn}))
			for _, q := range queries {
				rd, err := r.Read(ctx, q)
				switch {
				case tc.wantErr == "" && err != nil:
					t.Errorf("%s: %v", q, err)
				case tc.wantErr == "" && rd.Depth != 1:
					t.Errorf("%s: depth %v, want 1", q, rd.Depth)
				case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), q.String()+": ")):
					t.Errorf("%s: error %v, want %q after the query", q, err, tc.wantErr)
				case err != nil && strings.Contains(err.Error(), password):
					t.Errorf("%s: error %q holds the password", q, err)
				}
			}
		})
	}
}

// A server (or a proxy before it) that echoes the Authorization header it
// refuses in the body of an HTTP error, which the error keeps as its
// detail, cut at 200 characters: the error says what happened and holds
// none of the credentials, whole or in part.
func TestPrometheusErrorsHoldNoCredentials(t *testing.T) {
	const token, fileToken, user, password = "the-bearer-token-Pz2", "the-file-token-Hs8", "flowscaler", "the-basic-password-Rk5"
	echo := func(code int) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// A long body puts the credential near the detail's 200-character cut.
			http.Error(w, strings.Repeat(".", 150)+" refused Authorization: "+r.Header.Get("Authorization"), code)
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	check(t, os.WriteFile(tokenFile, []byte(fileToken+"\n"), 0o600))
	basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))

	cases := []struct {
		name    string
		code    int
		conn    func(url string) PrometheusConnection
		wantErr string
	}{
		{"bearer token, 401", http.StatusUnauthorized, func(u string) PrometheusConnection { return PrometheusConnection{URL: u, BearerToken: token} }, "client_error: client error: 401"},
		{"bearer token file, 403", http.StatusForbidden, func(u string) PrometheusConnection { return PrometheusConnection{URL: u, BearerTokenFile: tokenFile} }, "client_error: client error: 403"},
		{"basic auth, 401", http.StatusUnauthorized, func(u string) PrometheusConnection {
			return PrometheusConnection{URL: u, Username: user, Password: password}
		}, "client_error: client error: 401"},
		{"bearer token, 503", http.StatusServiceUnavailable, func(u string) PrometheusConnection { return PrometheusConnection{URL: u, BearerToken: token} }, "server_error: server error: 503"},
		{"basic auth, 503", http.StatusServiceUnavailable, func(u string) PrometheusConnection {
			return PrometheusConnection{URL: u, Username: user, Password: password}
		}, "server_error: server error: 503"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := NewPrometheusQuerier(PrometheusOptions{})
			t.Cleanup(func() { _ = q.Close() })
			check(t, q.SetConnections(map[string]PrometheusConnection{"c": tc.conn(echo(tc.code))}))
			_, err := q.Instant(testCtx(t), PromQL{Connection: "c", Expr: "x"})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one with %q", err, tc.wantErr)
			}
			for _, secret := range []string{token, fileToken, password, basic, basic[:20], token[:10], fileToken[:10], password[:10]} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q holds %q", err, secret)
				}
			}
		})
	}
}

// A management endpoint (or a proxy before it) that echoes the
// SharedAccessSignature it refuses: the SDK's error quotes the response
// body, and the read's error keeps the status but neither the token's
// signature nor the key it was signed with.
func TestServiceBusErrorsHoldNoCredentials(t *testing.T) {
	const key = "dGhlLXNlcnZpY2VidXMta2V5LU1xMw=="
	var mu sync.Mutex
	var sent []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		mu.Lock()
		sent = append(sent, h)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprintf(w, "<Error><Code>401</Code><Detail>refused %s (%s)</Detail></Error>", h, url.QueryEscape(h))
	}))
	t.Cleanup(srv.Close)
	r := NewServiceBus(ServiceBusOptions{HTTPClient: srv.Client()})
	t.Cleanup(func() { _ = r.Close() })
	cs := fmt.Sprintf("Endpoint=sb://%s/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=%s", srv.Listener.Addr(), key)
	check(t, r.SetConnections(map[string]ServiceBusConnection{"bus": {Auth: ServiceBusConnectionString, ConnectionString: cs}}))

	_, err := r.Read(testCtx(t), Query{Kind: ServiceBusQueue, Connection: "bus", Name: "orders"})
	if err == nil || !strings.Contains(err.Error(), "RESPONSE 401") || !strings.Contains(err.Error(), "sig="+redacted) {
		t.Fatalf("error %v, want the 401 with the signature hidden", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sent) == 0 {
		t.Fatal("no request reached the server")
	}
	secrets := []string{key, cs}
	for _, h := range sent {
		_, sig, ok := strings.Cut(h, "sig=")
		if !ok {
			t.Fatalf("Authorization %q carries no signature", h)
		}
		sig, _, _ = strings.Cut(sig, "&")
		secrets = append(secrets, sig, url.QueryEscape(sig))
	}
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q holds %q", err, s)
		}
	}
}
