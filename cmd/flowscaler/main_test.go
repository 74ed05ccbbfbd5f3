package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/flowscaler/flowscaler/scaler"
	"github.com/flowscaler/flowscaler/scaler/config"
)

// `flowscaler explain` for an object the daemon does not know prints the
// daemon's reason on stderr and exits 1; bad usage exits 1 too.
func TestExplainExitCodes(t *testing.T) {
	cfg, err := config.Parse([]byte("connections:\n  local: {type: redis, url: \"redis://127.0.0.1:1\"}\n"),
		func(string) (string, bool) { return "", false }, nil)
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- scaler.RunDaemon(ctx, scaler.DaemonOptions{Config: cfg, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
			GRPCListener: gl, HTTPListener: hl, OnReady: func(net.Addr, net.Addr) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon exited: %v", err)
	}
	t.Cleanup(func() { cancel(); <-done })

	tests := []struct {
		name       string
		args       []string
		code       int
		wantStdout string
		wantStderr string
	}{
		{"unknown object", []string{"explain", "--addr", gl.Addr().String(), "shop/nope"}, 1, "",
			"flowscaler: shop/nope: no decision on this flowscaler instance: KEDA has not asked it about this ScaledObject since it started"},
		{"no object", []string{"explain", "--addr", gl.Addr().String()}, 1, "", "flowscaler: which ScaledObject? give NAMESPACE/NAME or --all"},
		{"nothing decided yet", []string{"explain", "--addr", gl.Addr().String(), "--all"}, 0,
			"no decisions on this flowscaler instance yet: KEDA has not asked it about any ScaledObject\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			stderrOK := strings.HasPrefix(stderr.String(), tt.wantStderr) && (tt.wantStderr != "" || stderr.Len() == 0)
			if code != tt.code || stdout.String() != tt.wantStdout || !stderrOK {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, stderr starting %q", code, stdout.String(), stderr.String(), tt.code, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}
