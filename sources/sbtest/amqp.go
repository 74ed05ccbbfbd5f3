package sbtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Message is one message of an entity in the AMQP fake.
type Message struct {
	SequenceNumber int64     `json:"sequenceNumber"`
	EnqueuedTime   time.Time `json:"enqueuedTime"`
	// State is "active" (default), "scheduled" or "deferred".
	State                string     `json:"state,omitempty"`
	ScheduledEnqueueTime *time.Time `json:"scheduledEnqueueTime,omitempty"`
	// DeliveryCount is what the SDK reports: deliveries so far.
	DeliveryCount uint32 `json:"deliveryCount,omitempty"`
	Body          string `json:"body,omitempty"`
}

// Entity is a queue ("orders") or subscription ("events/Subscriptions/billing")
// of the AMQP fake.
type Entity struct {
	Messages []Message `json:"messages"`
	// PeekDelay holds every peek answer back this long.
	PeekDelay time.Duration `json:"-"`
	// PeekStatus > 0 answers every peek with it (503 with condition
	// com.microsoft:server-busy is the service's throttling).
	PeekStatus    int    `json:"peekStatus,omitempty"`
	PeekCondition string `json:"peekCondition,omitempty"`
}

// State is everything the AMQP fake answers from.
type State struct {
	// KeyName and Key verify SAS tokens; BearerToken is the accepted jwt.
	KeyName     string `json:"keyName"`
	Key         string `json:"key"`
	BearerToken string `json:"bearerToken,omitempty"`
	// CBSStatus > 0 answers every put-token with it (401: a refused credential).
	CBSStatus int               `json:"cbsStatus,omitempty"`
	Entities  map[string]Entity `json:"entities"`
}

// Request is one request the fake handled, as it logged it.
type Request struct {
	Op       string `json:"op"`
	Entity   string `json:"entity,omitempty"`
	Audience string `json:"audience,omitempty"`
	From     int64  `json:"from,omitempty"`
	Count    int    `json:"count,omitempty"`
	Status   int    `json:"status,omitempty"`
	Error    string `json:"error,omitempty"`
}

// AMQP is a running AMQP fake (test/amqpfake/server.js under Node.js).
type AMQP struct {
	// Host is 127.0.0.1:PORT, plain AMQP (the emulator's transport).
	Host string

	statePath string
	cmd       *exec.Cmd
	exited    chan struct{}

	mu       sync.Mutex
	requests []Request
	stderr   strings.Builder
}

// FakeDir is test/amqpfake in this repository.
func FakeDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "test", "amqpfake")
}

var npmOnce sync.Mutex

// StartAMQP runs the fake with st on a free loopback port, after `npm ci`
// when its node_modules is missing, and stops it (by PID) when the test
// ends. Without node or npm the test is skipped, unless CI=true, where
// that is a failure.
func StartAMQP(t testing.TB, st State) *AMQP {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		missing(t, "node")
	}
	dir := FakeDir()
	ensureModules(t, dir)

	a := &AMQP{statePath: filepath.Join(t.TempDir(), "amqpfake.json"), exited: make(chan struct{})}
	a.Set(t, st)
	a.cmd = exec.Command(node, filepath.Join(dir, "server.js"), "--port", "0", "--host", "127.0.0.1", "--config", a.statePath)
	a.cmd.Dir = dir
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	a.cmd.Stderr = &lockedWriter{mu: &a.mu, b: &a.stderr}
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("sbtest: start amqpfake: %v", err)
	}
	port := make(chan int, 1)
	go a.readLog(stdout, port)
	go func() {
		_ = a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() { a.stop(t) })
	select {
	case p := <-port:
		a.Host = fmt.Sprintf("127.0.0.1:%d", p)
	case <-a.exited:
		t.Fatalf("sbtest: amqpfake exited before listening: %s", a.Stderr())
	case <-time.After(30 * time.Second):
		t.Fatalf("sbtest: amqpfake did not report its port within 30s: %s", a.Stderr())
	}
	return a
}

func missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("sbtest: %s is not installed (test/deps.sh installs it)", what)
	}
	t.Skipf("sbtest: %s is not installed; skipping (CI=true makes this a failure)", what)
}

// ensureModules runs `npm ci` in dir when node_modules is missing, once
// per machine at a time: test binaries of several packages may start
// together.
func ensureModules(t testing.TB, dir string) {
	t.Helper()
	npmOnce.Lock()
	defer npmOnce.Unlock()
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "flowscaler-amqpfake-npm.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "rhea", "package.json")); err == nil {
		return
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		missing(t, "npm")
	}
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sbtest: npm ci in %s: %v\n%s", dir, err, out)
	}
}

// Set replaces the fake's state; the next request sees it.
func (a *AMQP) Set(t testing.TB, st State) {
	t.Helper()
	type entity struct {
		Entity
		PeekDelayMs int64 `json:"peekDelayMs,omitempty"`
	}
	out := struct {
		State
		Entities map[string]entity `json:"entities"`
	}{State: st, Entities: map[string]entity{}}
	for name, e := range st.Entities {
		out.Entities[name] = entity{Entity: e, PeekDelayMs: e.PeekDelay.Milliseconds()}
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	tmp := a.statePath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, a.statePath); err != nil {
		t.Fatal(err)
	}
}

// Requests are the requests handled so far, in order.
func (a *AMQP) Requests() []Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Request(nil), a.requests...)
}

// Peeks counts the peeks of entity handled so far.
func (a *AMQP) Peeks(entity string) int {
	n := 0
	for _, r := range a.Requests() {
		if r.Op == "peek" && r.Entity == entity {
			n++
		}
	}
	return n
}

// Stderr is what the fake wrote to stderr.
func (a *AMQP) Stderr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stderr.String()
}

func (a *AMQP) readLog(stdout interface{ Read([]byte) (int, error) }, port chan<- int) {
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var first struct {
			Port *int `json:"port"`
		}
		line := sc.Bytes()
		if json.Unmarshal(line, &first) == nil && first.Port != nil {
			port <- *first.Port
			continue
		}
		var r Request
		if err := json.Unmarshal(line, &r); err != nil {
			r = Request{Op: "unparsed", Error: string(line)}
		}
		a.mu.Lock()
		a.requests = append(a.requests, r)
		a.mu.Unlock()
	}
}

// Stop stops the fake now, as a broker outage does; the test's end
// stops it otherwise.
func (a *AMQP) Stop(t testing.TB) {
	t.Helper()
	a.stop(t)
}

// stop sends SIGTERM to the fake's PID, and SIGKILL if it is still there
// after 10 s.
func (a *AMQP) stop(t testing.TB) {
	pid := a.cmd.Process.Pid
	select {
	case <-a.exited:
		return
	default:
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("sbtest: amqpfake pid %d ignored SIGTERM; killing it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-a.exited
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
