// Package proctest runs a test's server process on loopback and kills it by PID.
package proctest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Process is one started child process.
type Process struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start runs bin with args, its output appended to logPath, and polls ready
// every 10 ms until it succeeds. A process that exits or is not ready within
// timeout is killed and reported with the end of its log.
func Start(bin string, args []string, logPath string, ready func() error, timeout time.Duration) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor

	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited during start-up; log:\n%s", bin, Tail(logPath))
		default:
		}
		err := ready()
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("%s was not ready within %s (%v); log:\n%s", bin, timeout, err, Tail(logPath))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Kill kills the process by its PID and waits for it to exit.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// FreePort is a loopback port nobody listens on right now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Tail is the end of a log file, for start-up failures.
func Tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const limit = 2000
	if len(b) > limit {
		b = b[len(b)-limit:]
	}
	return string(b)
}

// Slot holds the process of a server that a test stops and starts again on
// the same address; the zero value is an empty slot.
type Slot struct {
	mu   sync.Mutex
	proc *Process // nil while stopped
}

// Run starts a process with start, unless one is already running.
func (s *Slot) Run(start func() (*Process, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New("already running")
	}
	p, err := start()
	if err != nil {
		return err
	}
	s.proc = p
	return nil
}

// Kill kills the running process, if any, and waits for it.
func (s *Slot) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.Kill()
		s.proc = nil
	}
}

// Output collects a process's or logger's output while a test reads it:
// the writer writes from its own goroutines.
type Output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}
