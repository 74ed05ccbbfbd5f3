package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is one component process this test started; it is only ever killed
// by its own PID.
type proc struct {
	name   string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}

	mu     sync.Mutex
	killed bool
}

// startProc runs bin with its output in <logDir>/<name>.log and polls ready
// every 100 ms. A process that exits or is not ready within timeout fails the
// test with the end of its log. The process is killed when the test ends, and
// also if this test process dies first (Pdeathsig), so that nothing outlives
// the run.
func (c *cluster) startProc(t *testing.T, name, bin string, args, env []string, ready func() error, timeout time.Duration) *proc {
	t.Helper()
	logPath := filepath.Join(c.logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: starting %s: %v", name, bin, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	c.track(p)
	t.Cleanup(p.kill)

	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-p.exited:
			t.Fatalf("%s exited during start-up (%s); log %s ends:\n%s", name, cmd.ProcessState, logPath, tail(logPath, 3000))
		default:
		}
		err := ready()
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			p.kill()
			t.Fatalf("%s was not ready within %s (%v); log %s ends:\n%s", name, timeout, err, logPath, tail(logPath, 3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill sends SIGKILL to the process's own PID and waits for it to exit.
func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.killed {
		return
	}
	p.killed = true
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}

// running is false once the process has exited.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// tail is the last n bytes of a log file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := strings.IndexByte(string(b), '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// freePort is a loopback port nobody listens on right now. Inside the test's
// own network namespace nothing else competes for it.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// dialable is nil once something accepts TCP connections on addr.
func dialable(addr string) func() error {
	return func() error {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	}
}

// errNotYet is a readiness check's "keep waiting".
var errNotYet = errors.New("not yet")

// notYet wraps a readiness detail.
func notYet(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errNotYet, fmt.Sprintf(format, args...))
}
