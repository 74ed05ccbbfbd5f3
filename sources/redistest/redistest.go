// Package redistest runs a real redis-server for tests.
//
// Tests of sources run against the real server rather than a fake because
// the fakes differ exactly where flowscaler is careful: stream lag,
// entries-read and nil replies.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/sources/proctest"
)

// Server is a redis-server child process listening on 127.0.0.1.
type Server struct {
	// Addr is host:port. It stays the same across Stop and Start.
	Addr string
	// Password is what clients must AUTH with; "" when the server asks none.
	Password string

	t    testing.TB
	bin  string
	port int
	dir  string

	proc proctest.Slot
}

const startTimeout = 10 * time.Second

// Start runs redis-server on a free loopback port with persistence off and
// its files in t.TempDir(), waits until it answers PING, and kills it when
// the test ends.
//
// Without redis-server on PATH the test is skipped, or fails when CI=true so
// that CI cannot pass by skipping everything.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, "")
}

// StartWithPassword is Start with requirepass: a client that does not AUTH
// with password is refused (NOAUTH), and one that gives another is refused
// with WRONGPASS.
func StartWithPassword(t testing.TB, password string) *Server {
	t.Helper()
	return start(t, password)
}

func start(t testing.TB, password string) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		const msg = "redis-server is not on PATH; run test/deps.sh to install it"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	// The port is free when probed but another process can take it before
	// redis binds it, so a failed start is retried on a new port.
	var errs []error
	for range 5 {
		port, err := proctest.FreePort()
		if err != nil {
			t.Fatalf("redistest: finding a free port: %v", err)
		}
		s := &Server{
			Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			Password: password,
			t:        t,
			bin:      bin,
			port:     port,
			dir:      dir,
		}
		if err := s.start(); err != nil {
			errs = append(errs, err)
			continue
		}
		t.Cleanup(s.proc.Kill)
		return s
	}
	t.Fatalf("redistest: starting redis-server: %v", errors.Join(errs...))
	return nil
}

// URL is the server's go-redis URL.
func (s *Server) URL() string { return "redis://" + s.Addr }

// Stop kills the server and waits for it to exit. Data is lost: the server
// runs without persistence. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.t.Helper()
	s.proc.Kill()
}

// Start runs the server again on the same port, for outage and recovery
// tests, and waits until it answers PING. It fails the test if the server
// is already running or cannot start.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restarting redis-server: %v", err)
	}
}

// Client returns a go-redis client for the server, closed when t ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, Password: s.Password})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *Server) start() error {
	return s.proc.Run(func() (*proctest.Process, error) {
		args := []string{
			"--port", strconv.Itoa(s.port),
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "no",
			"--daemonize", "no",
			"--dir", s.dir,
		}
		if s.Password != "" {
			args = append(args, "--requirepass", s.Password)
		}
		proc, err := proctest.Start(s.bin, args, filepath.Join(s.dir, "redis.log"), func() error { return ping(s.Addr, s.Password) }, startTimeout)
		if err != nil {
			return nil, fmt.Errorf("redis-server on %s: %w", s.Addr, err)
		}
		return proc, nil
	})
}

// ping speaks RESP by hand so that readiness does not depend on the client
// library under test. With a password it sends AUTH first, as a RESP array
// so that any byte of the password is sent as is.
func ping(addr, password string) error {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
	r := bufio.NewReader(conn)
	if password != "" {
		if _, err := fmt.Fprintf(conn, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(password), password); err != nil {
			return err
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if line != "+OK\r\n" {
			return fmt.Errorf("unexpected AUTH reply %q", line)
		}
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("unexpected PING reply %q", line)
	}
	return nil
}
