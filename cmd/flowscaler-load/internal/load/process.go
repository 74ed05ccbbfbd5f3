package load

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/flowscaler/flowscaler/sources/proctest"
)

// Process is a child process the tool started: the daemon or redis-server.
type Process struct {
	PID    int
	Addr   string // redis-server's address, or the daemon's gRPC address
	HTTP   string // the daemon's HTTP address; "" for redis-server
	cmd    *exec.Cmd
	exited chan struct{}
}

// Stop kills the process by its PID and waits for it.
func (p *Process) Stop() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

const startTimeout = 15 * time.Second

// StartRedis runs redis-server from PATH on a free loopback port, without
// persistence, its files in dir.
func StartRedis(dir string) (*Process, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server is not on PATH: install it (test/deps.sh does) or pass --redis-addr")
	}
	port, err := proctest.FreePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return start(exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir),
		filepath.Join(dir, "redis.log"), addr, "", func() error { return pingRedis(addr) })
}

// DaemonOptions start `flowscaler serve`.
type DaemonOptions struct {
	// Bin is the flowscaler binary.
	Bin string
	// CPUs, when set, pins the daemon with taskset (e.g. "0": one core).
	CPUs   string
	Config string // YAML
	Dir    string // for the config file and the log
	// Env is added to the tool's own environment (KEY=VALUE; a later entry
	// wins), e.g. GOGC=200 for the daemon alone.
	Env []string
}

// StartDaemon runs `flowscaler serve` on free loopback ports and waits
// until /readyz answers.
func StartDaemon(o DaemonOptions) (*Process, error) {
	cfgPath := filepath.Join(o.Dir, "flowscaler.yaml")
	if err := os.WriteFile(cfgPath, []byte(o.Config), 0o600); err != nil {
		return nil, err
	}
	gport, err := proctest.FreePort()
	if err != nil {
		return nil, err
	}
	hport, err := proctest.FreePort()
	if err != nil {
		return nil, err
	}
	grpcAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(gport))
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(hport))
	args := []string{o.Bin, "serve", "--config", cfgPath, "--grpc-addr", grpcAddr, "--http-addr", httpAddr, "--log-level", "warn"}
	if o.CPUs != "" {
		taskset, err := exec.LookPath("taskset")
		if err != nil {
			return nil, fmt.Errorf("cpus = %q: taskset is not on PATH (util-linux): install it or pass --cpus \"\"", o.CPUs)
		}
		// taskset execs the daemon, so the PID is the daemon's.
		args = append([]string{taskset, "-c", o.CPUs}, args...)
	}
	ready := func() error {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), o.Env...)
	return start(cmd, filepath.Join(o.Dir, "flowscaler.log"), grpcAddr, httpAddr, ready)
}

func start(cmd *exec.Cmd, logPath, addr, httpAddr string, ready func() error) (*Process, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{PID: cmd.Process.Pid, Addr: addr, HTTP: httpAddr, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited during start-up; log:\n%s", cmd.Path, proctest.Tail(logPath))
		default:
		}
		err := ready()
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("%s was not ready within %s (%v); log:\n%s", cmd.Path, startTimeout, err, proctest.Tail(logPath))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pingRedis(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING reply %q", line)
	}
	return nil
}
