package deploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v3/pkg/chart"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/flowscaler/flowscaler/scaler/config"
)

// mountDir is where the chart mounts the config volume in the pod.
const mountDir = "/etc/flowscaler"

// testPKI is a CA and a server certificate it signed, as PEM.
type testPKI struct {
	caPEM, certPEM, keyPEM []byte
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// Fixed validity far around any plausible test date: the loader checks
	// that the pair parses, not the clock.
	notBefore := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := time.Date(2120, 1, 1, 0, 0, 0, 0, time.UTC)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "flowscaler"},
		DNSNames: []string{"flowscaler.flowscaler.svc"}, NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return testPKI{
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
}

// fakeSecret is the content a test gives key of Secret name. A key named
// connectionString holds a well-formed Service Bus connection string, since
// flowscaler checks its shape, with the marker as its key.
func fakeSecret(name, key string) string {
	marker := "secret:" + name + "/" + key
	if key == "connectionString" {
		return "Endpoint=sb://" + name + ".servicebus.windows.net/;SharedAccessKeyName=flowscaler;SharedAccessKey=" + marker
	}
	return marker
}

// podView is what the flowscaler container sees: its config volume laid out
// in a directory, and its environment.
type podView struct {
	dir    string
	config []byte // flowscaler.yaml with mountDir replaced by dir
	env    map[string]string
}

// materialize lays out the Deployment's projected config volume in a
// temporary directory the way the kubelet would, with the ConfigMap's data,
// certificates for the TLS keys and fake passwords for the other Secret keys,
// and resolves the container's environment the same way. A path the config
// names that the volume does not carry, or an environment variable it names
// that the container does not set, then fails the load.
func materialize(t *testing.T, ch *chart.Chart, vals map[string]any) podView {
	t.Helper()
	objs := objects(t, ch, vals)
	d := only[*appsv1.Deployment](t, objs)
	configMaps := map[string]*corev1.ConfigMap{}
	for _, cm := range all[*corev1.ConfigMap](objs) {
		configMaps[cm.Name] = cm
	}
	pki := newTestPKI(t)
	dir := t.TempDir()
	c := container(t, d)
	var mounted bool
	for _, m := range c.VolumeMounts {
		mounted = mounted || (m.Name == "config" && m.MountPath == mountDir)
	}
	if !mounted {
		t.Fatalf("the config volume is not mounted at %s: %+v", mountDir, c.VolumeMounts)
	}
	for path, from := range projectedFiles(t, d) {
		var content string
		switch name, key, _ := strings.Cut(from, "/"); {
		case strings.HasPrefix(name, "configmap:"):
			cm := configMaps[strings.TrimPrefix(name, "configmap:")]
			if cm == nil {
				t.Fatalf("volume item %s: ConfigMap %s is not rendered", path, name)
			}
			data, ok := cm.Data[key]
			if !ok {
				t.Fatalf("volume item %s: ConfigMap %s has no key %s", path, cm.Name, key)
			}
			content = data
		case key == "tls.crt":
			content = string(pki.certPEM)
		case key == "tls.key":
			content = string(pki.keyPEM)
		case key == "ca.crt":
			content = string(pki.caPEM)
		default:
			content = fakeSecret(name, key) + "\n" // as `kubectl create secret --from-file` often leaves it
		}
		full := filepath.Join(dir, filepath.FromSlash(path))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = fakeSecret(e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
		case e.ValueFrom.ResourceFieldRef != nil:
			env[e.Name] = "536870912"
		default:
			t.Fatalf("env %s: no fake for %+v", e.Name, e.ValueFrom)
		}
	}
	path := filepath.Join(dir, "flowscaler.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the config volume has no flowscaler.yaml: %v", err)
	}
	return podView{dir: dir, config: []byte(strings.ReplaceAll(string(data), mountDir+"/", dir+"/")), env: env}
}

func (p podView) lookupEnv(name string) (string, bool) {
	v, ok := p.env[name]
	return v, ok
}

// loadRenderedConfig parses the chart's flowscaler.yaml with flowscaler's
// own loader, as `flowscaler serve --config` would in the pod.
func loadRenderedConfig(t *testing.T, ch *chart.Chart, vals map[string]any) *config.Config {
	t.Helper()
	pv := materialize(t, ch, vals)
	cfg, err := config.Parse(pv.config, pv.lookupEnv, os.ReadFile)
	if err != nil {
		t.Fatalf("flowscaler refuses the rendered config:\n%v\n--- config:\n%s", err, pv.config)
	}
	return cfg
}

// TestRenderedConfigLoads catches drift between the chart and flowscaler's
// config format: unknown keys, bad values, and secrets the pod cannot reach.
func TestRenderedConfigLoads(t *testing.T) {
	ch := loadChart(t)
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			cfg := loadRenderedConfig(t, ch, readValues(t, vs.values))
			vals := renderedValues(t, ch, vs.values)
			ports := vals["ports"].(map[string]any)
			if want := fmt.Sprintf(":%v", ports["grpc"]); cfg.Server.GRPCAddr != want {
				t.Errorf("server.grpcAddr = %q, want %q", cfg.Server.GRPCAddr, want)
			}
			if want := fmt.Sprintf(":%v", ports["http"]); cfg.Server.HTTPAddr != want {
				t.Errorf("server.httpAddr = %q, want %q", cfg.Server.HTTPAddr, want)
			}
			tls := vals["tls"].(map[string]any)
			if got, want := cfg.Server.TLS.Enabled(), tls["enabled"].(bool); got != want {
				t.Errorf("TLS enabled = %v, want %v", got, want)
			}
			clientAuth := tls["enabled"].(bool) && tls["clientAuth"].(map[string]any)["enabled"].(bool)
			if got := cfg.Server.TLS.ClientCAFile != ""; got != clientAuth {
				t.Errorf("mutual TLS = %v, want %v", got, clientAuth)
			}

			cfgVals := vals["config"].(map[string]any)
			wantPasswords := map[string]string{}
			for name, raw := range cfgVals["connections"].(map[string]any) {
				conn := raw.(map[string]any)
				want := ""
				if pw, ok := conn["password"].(map[string]any); ok && pw["secretName"] != "" {
					want = fakeSecret(pw["secretName"].(string), pw["secretKey"].(string))
				}
				wantPasswords[name] = want
			}
			gotPasswords := map[string]string{}
			for name, conn := range cfg.Connections {
				gotPasswords[name] = conn.Password()
			}
			if diff := cmp.Diff(wantPasswords, gotPasswords); diff != "" {
				t.Errorf("connection passwords reaching flowscaler (-want +got):\n%s", diff)
			}

			if q, ok := cfgVals["queries"].(map[string]any); ok {
				for key, got := range map[string]string{
					"processingUnit": cfg.Queries.ProcessingUnit, "processingMean": cfg.Queries.ProcessingMean,
					"processingP95": cfg.Queries.ProcessingP95, "consumptionRate": cfg.Queries.ConsumptionRate,
					"failureRate": cfg.Queries.FailureRate, "readyPods": cfg.Queries.ReadyPods,
				} {
					if want, set := q[key]; set && want != got {
						t.Errorf("queries.%s = %q, want %q", key, got, want)
					}
				}
			}

			var wantProfiles []string
			for name := range cfgVals["policy"].(map[string]any)["profiles"].(map[string]any) {
				wantProfiles = append(wantProfiles, name)
			}
			slices.Sort(wantProfiles)
			if diff := cmp.Diff(wantProfiles, cfg.ProfileNames()); diff != "" {
				t.Errorf("profiles (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDefaultConfigMatchesBuiltin: with default values the chart configures
// the same policy and timings as flowscaler's built-in configuration, so
// the documentation of one is true of the other.
func TestDefaultConfigMatchesBuiltin(t *testing.T) {
	builtin, err := config.Parse(config.DefaultYAML(), func(string) (string, bool) { return "", false }, os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	chartCfg := loadRenderedConfig(t, loadChart(t), nil)
	if diff := cmp.Diff(builtin.Server, chartCfg.Server); diff != "" {
		t.Errorf("server (-built-in +chart):\n%s", diff)
	}
	if diff := cmp.Diff(builtin.Queries, chartCfg.Queries); diff != "" {
		t.Errorf("queries (-built-in +chart):\n%s", diff)
	}
	// The same connection names, so that ScaledObjects written for one work
	// with the other; their addresses differ (loopback against in-cluster).
	if diff := cmp.Diff(slices.Sorted(maps.Keys(builtin.Connections)), slices.Sorted(maps.Keys(chartCfg.Connections))); diff != "" {
		t.Errorf("connection names (-built-in +chart):\n%s", diff)
	}
	for name, conn := range builtin.Connections {
		if got := chartCfg.Connections[name].Type; got != conn.Type {
			t.Errorf("connection %s: type %q, built-in %q", name, got, conn.Type)
		}
	}
	for _, profile := range append([]string{""}, builtin.ProfileNames()...) {
		want, err := builtin.Params(profile)
		if err != nil {
			t.Fatal(err)
		}
		got, err := chartCfg.Params(profile)
		if err != nil {
			t.Errorf("profile %q: %v", profile, err)
			continue
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("profile %q (-built-in +chart):\n%s", profile, diff)
		}
	}
}
