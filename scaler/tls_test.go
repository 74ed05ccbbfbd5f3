package scaler

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/scaler/tlstest"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

func clientTLS(t *testing.T, p *tlstest.CA, certFile, keyFile string) credentials.TransportCredentials {
	t.Helper()
	pool, err := config.LoadCertPool(p.File())
	if err != nil {
		t.Fatal(err)
	}
	c := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(c)
}

// specCall makes one GetMetricSpec call, which needs no source, over creds.
func specCall(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = pb.NewExternalScalerClient(conn).GetMetricSpec(ctx, &pb.ScaledObjectRef{Namespace: "ns", Name: "so",
		ScalerMetadata: map[string]string{"source": "redis-list", "connection": "local", "list": "jobs"}})
	return err
}

func tlsDaemon(t *testing.T, tlsYAML string) string {
	t.Helper()
	rs := redistest.Start(t)
	cfg := strings.Replace(daemonConfig(rs.URL(), "60s"), "server:\n", "server:\n"+tlsYAML, 1)
	path := filepath.Join(t.TempDir(), "flowscaler.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	gl, _ := net.Listen("tcp", "127.0.0.1:0")
	hl, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- RunDaemon(ctx, DaemonOptions{Config: c, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
			GRPCListener: gl, HTTPListener: hl, OnReady: func(net.Addr, net.Addr) { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon exited: %v", err)
	}
	t.Cleanup(func() { cancel(); <-done })
	return gl.Addr().String()
}

func TestTLSRefusesPlaintext(t *testing.T) {
	p := tlstest.NewCA(t, "flowscaler-ca")
	cert, key := p.Issue(t, "server", true)
	addr := tlsDaemon(t, fmt.Sprintf("  tls: {certFile: %q, keyFile: %q}\n", cert, key))
	if err := specCall(t, addr, clientTLS(t, p, "", "")); err != nil {
		t.Fatalf("TLS client: %v", err)
	}
	if err := specCall(t, addr, insecure.NewCredentials()); err == nil {
		t.Fatal("a plaintext client was served by a TLS-only server")
	}
}

func TestMutualTLS(t *testing.T) {
	p := tlstest.NewCA(t, "flowscaler-ca")
	cert, key := p.Issue(t, "server", true)
	addr := tlsDaemon(t, fmt.Sprintf("  tls: {certFile: %q, keyFile: %q, clientCAFile: %q}\n", cert, key, p.File()))
	ccert, ckey := p.Issue(t, "keda", false)
	if err := specCall(t, addr, clientTLS(t, p, ccert, ckey)); err != nil {
		t.Fatalf("client with a certificate: %v", err)
	}
	if err := specCall(t, addr, clientTLS(t, p, "", "")); err == nil {
		t.Fatal("a client without a certificate was served under mutual TLS")
	}
	other := tlstest.NewCA(t, "other-ca")
	ocert, okey := other.Issue(t, "intruder", false)
	if err := specCall(t, addr, clientTLS(t, p, ocert, okey)); err == nil {
		t.Fatal("a client certificate from another CA was accepted")
	}
}

func TestTLSConfigErrorsNameTheField(t *testing.T) {
	dir := t.TempDir()
	_, err := config.Parse([]byte(fmt.Sprintf("server:\n  tls: {certFile: %q, keyFile: %q}\n", filepath.Join(dir, "nope.pem"), filepath.Join(dir, "nope-key.pem"))), os.LookupEnv, os.ReadFile)
	if err == nil || !strings.Contains(err.Error(), `server.tls.certFile = "`) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("got %v", err)
	}
	_, err = config.Parse([]byte("server:\n  tls: {certFile: a.pem}\n"), os.LookupEnv, os.ReadFile)
	if err == nil || !strings.Contains(err.Error(), "set both or neither") {
		t.Fatalf("got %v", err)
	}
}

// A rotated certificate is served without a restart; a broken rotation keeps
// the previous one.
func TestCertificateRotation(t *testing.T) {
	p := tlstest.NewCA(t, "flowscaler-ca")
	cert, key := p.Issue(t, "server", true)
	now := time.Now()
	r, err := newCertReloader(config.TLS{CertFile: cert, KeyFile: key}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r.now = func() time.Time { return now }
	serial := func() int64 {
		c, err := r.configForClient(nil)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.Certificates[0].Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.SerialNumber.Int64()
	}
	first := serial()

	// Rotate: issue a new certificate over the same files, with a new mtime.
	newCert, newKey := p.Issue(t, "server-rotated", true)
	for _, f := range [][2]string{{newCert, cert}, {newKey, key}} {
		if err := os.Rename(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
		later := time.Now().Add(time.Minute)
		_ = os.Chtimes(f[1], later, later)
	}
	if got := serial(); got != first {
		t.Fatalf("reloaded before checkEvery passed: serial %d", got)
	}
	now = now.Add(2 * time.Second)
	rotated := serial()
	if rotated == first {
		t.Fatal("the rotated certificate was not picked up")
	}

	if err := os.WriteFile(cert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Second)
	if got := serial(); got != rotated {
		t.Fatalf("a broken rotation replaced the certificate: serial %d, want %d", got, rotated)
	}
}
