package sbtest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"
)

// Counts are an entity's runtime counts as the management API reports them.
type Counts struct {
	Active, DeadLetter, Scheduled, Transfer, TransferDeadLetter int32
}

// ManagementOptions configure the management (ATOM) fake.
type ManagementOptions struct {
	// Fixtures is the directory of the XML templates (sources/testdata/servicebus).
	Fixtures string
	// KeyName and Key: requests must carry a SharedAccessSignature signed
	// with them. BearerToken: or "Bearer <token>" (Azure AD).
	KeyName, Key, BearerToken string
}

// Management is a TLS server answering the Service Bus management API's
// GETs of queues and subscriptions with ATOM entries rendered from the
// fixtures. It is faithful to the documented wire format the SDK parses,
// not to the service's behaviour.
type Management struct {
	// Host is 127.0.0.1:PORT, the endpoint of a connection string (sb://Host).
	Host string
	// CAFile is the server certificate as PEM, for processes that trust it
	// through SSL_CERT_FILE.
	CAFile string

	srv  *httptest.Server
	opts ManagementOptions
	tmpl *template.Template

	mu        sync.Mutex
	queues    map[string]Counts
	subs      map[string]Counts // "topic/sub"
	malformed map[string]bool   // paths answered with a malformed entry
	throttle  int               // answer this many more requests with 429
	retryAt   string            // Retry-After of throttled answers
	requests  map[string]int    // path -> requests served
	authFails int
}

// StartManagement starts the fake on a free loopback port; it stops when
// the test ends.
func StartManagement(t testing.TB, o ManagementOptions) *Management {
	t.Helper()
	tmpl, err := template.ParseGlob(filepath.Join(o.Fixtures, "*.xml"))
	if err != nil {
		t.Fatalf("sbtest: fixtures: %v", err)
	}
	m := &Management{
		opts: o, tmpl: tmpl,
		queues: map[string]Counts{}, subs: map[string]Counts{},
		malformed: map[string]bool{}, requests: map[string]int{},
	}
	m.srv = httptest.NewUnstartedServer(http.HandlerFunc(m.serve))
	m.srv.StartTLS()
	t.Cleanup(m.srv.Close)
	m.Host = m.srv.Listener.Addr().String()
	m.CAFile = filepath.Join(t.TempDir(), "management-ca.pem")
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.srv.Certificate().Raw})
	if err := os.WriteFile(m.CAFile, cert, 0o600); err != nil {
		t.Fatal(err)
	}
	return m
}

// Stop closes the fake's listener and connections now, as a broker outage
// does; the test's end closes it otherwise.
func (m *Management) Stop() { m.srv.Close() }

// Client is an HTTP client that trusts the fake's certificate.
func (m *Management) Client() *http.Client { return m.srv.Client() }

// TLSConfig trusts the fake's certificate.
func (m *Management) TLSConfig() *tls.Config {
	return m.srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
}

// ConnectionString is a SAS connection string for the fake's host, signed
// with the options' key; extra is appended as is (";UseDevelopmentEmulator=true").
func (m *Management) ConnectionString(extra string) string {
	return fmt.Sprintf("Endpoint=sb://%s/;SharedAccessKeyName=%s;SharedAccessKey=%s%s", m.Host, m.opts.KeyName, m.opts.Key, extra)
}

// SetQueue creates or updates a queue.
func (m *Management) SetQueue(name string, c Counts) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.queues[name] = c
}

// SetSubscription creates or updates a topic subscription.
func (m *Management) SetSubscription(topic, sub string, c Counts) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.subs[topic+"/"+sub] = c
}

// Delete removes a queue ("orders") or a subscription ("events/billing").
func (m *Management) Delete(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.queues, name)
	delete(m.subs, name)
}

// Malform answers the subscription with an entry whose CountDetails lack
// ActiveMessageCount.
func (m *Management) Malform(topic, sub string, on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.malformed[topic+"/"+sub] = on
}

// Throttle answers the next n requests with 429 and Retry-After.
func (m *Management) Throttle(n int, retryAfter time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.throttle = n
	m.retryAt = strconv.Itoa(int(retryAfter.Seconds()))
}

// Requests is how many GETs of path ("/orders", "/events/Subscriptions/billing",
// "/$Resources/Queues") were served.
func (m *Management) Requests(path string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests[path]
}

// AuthFailures is how many requests carried no valid credential.
func (m *Management) AuthFailures() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.authFails
}

func (m *Management) serve(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[r.URL.Path]++
	if r.Method != http.MethodGet {
		http.Error(w, "the fake serves GET only", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		http.Error(w, "api-version is required", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/atom+xml;type=entry;charset=utf-8")
	if !m.authorized(r) {
		m.authFails++
		w.WriteHeader(http.StatusUnauthorized)
		m.render(w, "error-unauthorized.xml", nil)
		return
	}
	if m.throttle > 0 {
		m.throttle--
		w.Header().Set("Retry-After", m.retryAt)
		w.WriteHeader(http.StatusTooManyRequests)
		m.render(w, "error-throttled.xml", nil)
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) == 2 && parts[0] == "$Resources" && strings.EqualFold(parts[1], "Queues"):
		m.feed(w, r, "Queues", m.queueEntries())
	case len(parts) == 1:
		c, ok := m.queues[parts[0]]
		if !ok {
			m.render(w, "empty-feed.xml", nil)
			return
		}
		m.render(w, "queue-entry.xml", m.entry(parts[0], "", c))
	case len(parts) == 2 && parts[1] == "Subscriptions":
		m.feed(w, r, "Subscriptions", m.subEntries(parts[0]))
	case len(parts) == 3 && parts[1] == "Subscriptions":
		key := parts[0] + "/" + parts[2]
		c, ok := m.subs[key]
		switch {
		case !ok:
			m.render(w, "empty-feed.xml", nil)
		case m.malformed[key]:
			m.render(w, "subscription-entry-malformed.xml", m.entry(parts[2], parts[0], c))
		default:
			m.render(w, "subscription-entry.xml", m.entry(parts[2], parts[0], c))
		}
	default:
		m.render(w, "empty-feed.xml", nil)
	}
}

type entryData struct {
	Host, Name, Topic string
	Counts
	Total       int64
	SizeInBytes int64
}

func (m *Management) entry(name, topic string, c Counts) entryData {
	total := int64(c.Active) + int64(c.DeadLetter) + int64(c.Scheduled) + int64(c.Transfer) + int64(c.TransferDeadLetter)
	return entryData{Host: m.Host, Name: name, Topic: topic, Counts: c, Total: total, SizeInBytes: 512 * total}
}

type namedEntry struct {
	name string
	tmpl string
	data entryData
}

func (m *Management) queueEntries() []namedEntry {
	var out []namedEntry
	for name, c := range m.queues {
		out = append(out, namedEntry{name: name, tmpl: "queue-entry.xml", data: m.entry(name, "", c)})
	}
	return out
}

func (m *Management) subEntries(topic string) []namedEntry {
	var out []namedEntry
	for key, c := range m.subs {
		t, sub, _ := strings.Cut(key, "/")
		if t != topic {
			continue
		}
		tmpl := "subscription-entry.xml"
		if m.malformed[key] {
			tmpl = "subscription-entry-malformed.xml"
		}
		out = append(out, namedEntry{name: sub, tmpl: tmpl, data: m.entry(sub, topic, c)})
	}
	return out
}

// feed answers a list with $skip and $top as the service pages it.
func (m *Management) feed(w http.ResponseWriter, r *http.Request, title string, entries []namedEntry) {
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	skip, _ := strconv.Atoi(r.URL.Query().Get("$skip"))
	top, err := strconv.Atoi(r.URL.Query().Get("$top"))
	if err != nil || top <= 0 {
		top = 100
	}
	if skip > len(entries) {
		skip = len(entries)
	}
	entries = entries[skip:min(skip+top, len(entries))]
	var body bytes.Buffer
	for _, e := range entries {
		if err := m.tmpl.ExecuteTemplate(&body, e.tmpl, e.data); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	m.render(w, "feed.xml", struct {
		Host, Title, Path, Entries string
	}{m.Host, title, strings.Trim(r.URL.Path, "/"), body.String()})
}

func (m *Management) render(w http.ResponseWriter, name string, data any) {
	if data == nil {
		data = struct{ Host string }{m.Host}
	}
	if err := m.tmpl.ExecuteTemplate(w, name, data); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// authorized checks the Authorization header as the service does: a
// SharedAccessSignature for the request URL signed with the key, or the
// Azure AD token.
func (m *Management) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	// The SDK sends an Azure AD token without the "Bearer " prefix; the
	// service takes either form.
	if m.opts.BearerToken != "" && (h == "Bearer "+m.opts.BearerToken || h == m.opts.BearerToken) {
		return true
	}
	sas, ok := strings.CutPrefix(h, "SharedAccessSignature ")
	if !ok || m.opts.Key == "" {
		return false
	}
	// The signed string is the sr field as written in the token (the
	// lower-cased, query-escaped resource URI), a newline and se.
	raw := map[string]string{}
	for _, kv := range strings.Split(sas, "&") {
		k, v, _ := strings.Cut(kv, "=")
		raw[k] = v
	}
	sr, err := url.QueryUnescape(raw["sr"])
	if err != nil || raw["skn"] != m.opts.KeyName {
		return false
	}
	se, err := strconv.ParseInt(raw["se"], 10, 64)
	if err != nil || time.Unix(se, 0).Before(time.Now()) {
		return false
	}
	// The token is for the request's resource.
	if !strings.HasPrefix(sr, strings.ToLower("https://"+m.Host+"/")) {
		return false
	}
	sig, err := url.QueryUnescape(raw["sig"])
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(m.opts.Key))
	mac.Write([]byte(raw["sr"] + "\n" + raw["se"]))
	return hmac.Equal([]byte(base64.StdEncoding.EncodeToString(mac.Sum(nil))), []byte(sig))
}
