package scaler

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/flowscaler/flowscaler/scaler/config"
)

// certReloader serves the TLS files named in the config and reads them again
// when they change (a rotated Kubernetes Secret), checking at most once per
// checkEvery. A rotation that fails to load keeps the previous certificate
// and is logged: a half-written Secret must not take the scaler down.
type certReloader struct {
	files      config.TLS
	checkEvery time.Duration
	log        *slog.Logger
	now        func() time.Time

	mu      sync.Mutex
	checked time.Time
	stamp   string
	current *tls.Config
}

func newCertReloader(files config.TLS, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{files: files, checkEvery: time.Second, log: log, now: time.Now}
	stamp, err := r.fileStamp()
	if err != nil {
		return nil, err
	}
	cfg, err := r.load()
	if err != nil {
		return nil, err
	}
	r.current, r.stamp, r.checked = cfg, stamp, r.now()
	return r, nil
}

// ServerConfig is the tls.Config to hand to gRPC: every handshake gets the
// current certificate and client CA through GetConfigForClient.
func (r *certReloader) ServerConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: r.configForClient}
}

func (r *certReloader) configForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.checked) < r.checkEvery {
		return r.current, nil
	}
	r.checked = now
	stamp, err := r.fileStamp()
	if err != nil || stamp == r.stamp {
		return r.current, nil
	}
	cfg, err := r.load()
	if err != nil {
		r.log.Error("TLS files changed but cannot be loaded; keeping the previous certificate", "error", err.Error())
		return r.current, nil
	}
	r.current, r.stamp = cfg, stamp
	r.log.Info("TLS certificate reloaded", "certFile", r.files.CertFile)
	return cfg, nil
}

func (r *certReloader) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(r.files.CertFile, r.files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("server.tls.certFile = %q: cannot be loaded with keyFile %q: %w", r.files.CertFile, r.files.KeyFile, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2"}, // gRPC runs over HTTP/2 only
	}
	if r.files.ClientCAFile != "" {
		pool, err := config.LoadCertPool(r.files.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("server.tls.clientCAFile = %q: %w", r.files.ClientCAFile, err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// fileStamp summarises the files' modification times and sizes; a change in
// any of them triggers a reload.
func (r *certReloader) fileStamp() (string, error) {
	var stamp string
	for _, f := range []string{r.files.CertFile, r.files.KeyFile, r.files.ClientCAFile} {
		if f == "" {
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("server.tls: %w", err)
		}
		stamp += fmt.Sprintf("%s:%d:%d;", f, fi.ModTime().UnixNano(), fi.Size())
	}
	return stamp, nil
}
