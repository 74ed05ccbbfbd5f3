package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLS names the PEM files of the gRPC server's certificate and, for mutual
// TLS, the CA that client certificates must chain to. The files are read
// again whenever they change, so a rotated Secret needs no restart.
type TLS struct {
	CertFile     string `yaml:"certFile"`
	KeyFile      string `yaml:"keyFile"`
	ClientCAFile string `yaml:"clientCAFile"`
}

// Enabled reports whether gRPC is served over TLS.
func (t TLS) Enabled() bool { return t.CertFile != "" }

// validate checks that the files exist and parse, so a broken Secret mount
// stops the start (or the reload) instead of failing every handshake.
func (t TLS) validate(prefix string) []error {
	var errs []error
	switch {
	case t.CertFile == "" && t.KeyFile == "" && t.ClientCAFile == "":
		return nil
	case t.CertFile == "" || t.KeyFile == "":
		return []error{fmt.Errorf("%scertFile = %q, %skeyFile = %q: set both or neither", prefix, t.CertFile, prefix, t.KeyFile)}
	}
	if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
		errs = append(errs, fmt.Errorf("%scertFile = %q: cannot be loaded with keyFile %q: %v", prefix, t.CertFile, t.KeyFile, unwrapPath(err)))
	}
	if t.ClientCAFile != "" {
		if _, err := LoadCertPool(t.ClientCAFile); err != nil {
			errs = append(errs, fmt.Errorf("%sclientCAFile = %q: %v", prefix, t.ClientCAFile, err))
		}
	}
	return errs
}

// LoadCertPool reads a PEM bundle of CA certificates.
func LoadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot be read: %v", unwrapPath(err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("holds no PEM certificate")
	}
	return pool, nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
