package keda

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers"

	"github.com/flowscaler/flowscaler/scaler/tlstest"
	"github.com/flowscaler/flowscaler/sources/redistest"
)

// kedaTLS is what a user writes for KEDA's external trigger: enableTLS in the
// trigger metadata, and caCert / tlsClientCert / tlsClientKey (PEM text) as
// auth parameters, which KEDA fills from a TriggerAuthentication.
type kedaTLS struct {
	EnableTLS bool
	CA        string // file whose PEM text is caCert; "" for none
	Cert, Key string // files whose PEM text is tlsClientCert / tlsClientKey
}

// newTLSScaler is KEDA's `type: external` trigger with TLS options, built
// through KEDA's own NewExternalScaler and connection pool.
func newTLSScaler(t *testing.T, addr, name string, o kedaTLS) scalers.Scaler {
	t.Helper()
	md := map[string]string{"source": "redis-list", "connection": "local", "list": name, "scalerAddress": addr}
	if o.EnableTLS {
		md["enableTLS"] = "true"
	}
	cfg := scalerConfig(scaledObject(name, "external", md), 0)
	for param, file := range map[string]string{"caCert": o.CA, "tlsClientCert": o.Cert, "tlsClientKey": o.Key} {
		if file == "" {
			continue
		}
		pem, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		cfg.AuthParams[param] = string(pem)
	}
	s, err := scalers.NewExternalScaler(cfg)
	if err != nil {
		t.Fatalf("scalers.NewExternalScaler: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// tlsDaemon runs flowscaler with the documented config plus server.tls.
func tlsDaemon(t *testing.T, tlsYAML string) *daemon {
	t.Helper()
	rs := redistest.Start(t)
	cfg := strings.Replace(configYAML(daemonOptions{RedisURL: rs.URL()}), "server:\n", "server:\n"+tlsYAML, 1)
	return startDaemon(t, daemonOptions{Config: cfg})
}

// call is one GetMetricsAndActivity through KEDA's client: the call that
// fails KEDA's health counter (and so engages its fallback) when it errs.
func call(s scalers.Scaler) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := s.GetMetricsAndActivity(ctx, "s0-flowscaler-"+namespace+"-x")
	return err
}

// TestKEDATLSOptions: KEDA's own TLS options against flowscaler's TLS and
// mutual-TLS modes. Each case is a fresh daemon, so the KEDA connection pool
// cannot carry a handshake from one case into another.
func TestKEDATLSOptions(t *testing.T) {
	ca := tlstest.NewCA(t, "flowscaler-ca")
	cert, key := ca.Issue(t, "flowscaler", true)
	clientCert, clientKey := ca.Issue(t, "keda-operator", false)
	other := tlstest.NewCA(t, "other-ca")
	otherCert, otherKey := other.Issue(t, "intruder", false)

	serverTLS := fmt.Sprintf("  tls: {certFile: %q, keyFile: %q}\n", cert, key)
	serverMTLS := fmt.Sprintf("  tls: {certFile: %q, keyFile: %q, clientCAFile: %q}\n", cert, key, ca.File())

	cases := []struct {
		name    string
		server  string
		keda    kedaTLS
		wantErr string // "" for a served call; else a part of KEDA's error
	}{
		{name: "TLS with enableTLS and caCert", server: serverTLS,
			keda: kedaTLS{EnableTLS: true, CA: ca.File()}},
		{name: "TLS with caCert alone (KEDA turns TLS on for it)", server: serverTLS,
			keda: kedaTLS{CA: ca.File()}},
		{name: "TLS refuses a plaintext KEDA", server: serverTLS,
			keda: kedaTLS{}, wantErr: "Unavailable"},
		{name: "TLS with enableTLS but the system roots only", server: serverTLS,
			keda: kedaTLS{EnableTLS: true}, wantErr: "certificate signed by unknown authority"},
		{name: "mutual TLS with a client certificate from a TriggerAuthentication", server: serverMTLS,
			keda: kedaTLS{EnableTLS: true, CA: ca.File(), Cert: clientCert, Key: clientKey}},
		{name: "mutual TLS refuses KEDA without a client certificate", server: serverMTLS,
			keda: kedaTLS{EnableTLS: true, CA: ca.File()}, wantErr: "Unavailable"},
		{name: "mutual TLS refuses a client certificate from another CA", server: serverMTLS,
			keda: kedaTLS{EnableTLS: true, CA: ca.File(), Cert: otherCert, Key: otherKey}, wantErr: "Unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := tlsDaemon(t, tc.server)
			err := call(newTLSScaler(t, d.GRPCAddr, "jobs", tc.keda))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("GetMetricsAndActivity: %v, want a served call", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("GetMetricsAndActivity served the call, want an error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("GetMetricsAndActivity error = %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestKEDASeesRotatedCertificate: the server certificate is replaced on disk
// by one from a new CA (a CA rotation, the hardest case for clients) and the
// running daemon serves it without a restart: KEDA trusting the new CA gets
// through, a new connection trusting only the old one is refused.
func TestKEDASeesRotatedCertificate(t *testing.T) {
	oldCA := tlstest.NewCA(t, "flowscaler-ca-2026")
	cert, key := oldCA.Issue(t, "flowscaler", true)
	d := tlsDaemon(t, fmt.Sprintf("  tls: {certFile: %q, keyFile: %q}\n", cert, key))

	before := newTLSScaler(t, d.GRPCAddr, "before", kedaTLS{EnableTLS: true, CA: oldCA.File()})
	if err := call(before); err != nil {
		t.Fatalf("before the rotation, KEDA trusting the old CA: %v", err)
	}
	// KEDA pools connections by address and TLS options; closing the only
	// scaler closes the connection, so the check at the end dials anew.
	_ = before.Close(context.Background())

	newCA := tlstest.NewCA(t, "flowscaler-ca-2027")
	newCert, newKey := newCA.Issue(t, "flowscaler", true)
	later := time.Now().Add(time.Minute)
	for _, f := range [][2]string{{newKey, key}, {newCert, cert}} {
		if err := os.Rename(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
		// A new mtime, as a Secret update gives, even on a coarse clock.
		if err := os.Chtimes(f[1], later, later); err != nil {
			t.Fatal(err)
		}
	}

	// The daemon looks at the files at most once a second. Each attempt is
	// a scaler closed right after, so that the next dials a new connection
	// instead of waiting out a failed one's reconnect backoff.
	var err error
	for i := 0; i < 40; i++ {
		s := newTLSScaler(t, d.GRPCAddr, fmt.Sprintf("after-%d", i), kedaTLS{EnableTLS: true, CA: newCA.File()})
		err = call(s)
		_ = s.Close(context.Background())
		if err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after the rotation, KEDA trusting the new CA: %v", err)
	}
	if err := call(newTLSScaler(t, d.GRPCAddr, "stale-trust", kedaTLS{EnableTLS: true, CA: oldCA.File()})); err == nil {
		t.Fatal("after the rotation, a new connection trusting only the old CA was served the old certificate")
	}
}
