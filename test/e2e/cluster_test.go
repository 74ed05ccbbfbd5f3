package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

// Where the binaries come from: build.sh puts them in the cache, run.sh
// passes the paths on.
type binaries struct {
	etcd, apiserver, controllerManager, kedaOperator, kedaAdapter, flowscaler, redis, prometheus string
	kedaCRDs                                                                                     string
}

func binariesFromEnv(t *testing.T) binaries {
	t.Helper()
	env := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			t.Fatalf("%s is not set: run the end-to-end test with `make e2e` (test/e2e/run.sh), which builds the components and sets it", name)
		}
		if _, err := os.Stat(v); err != nil {
			t.Fatalf("%s = %q: %v", name, v, err)
		}
		return v
	}
	return binaries{
		etcd:              env("E2E_ETCD"),
		apiserver:         env("E2E_KUBE_APISERVER"),
		controllerManager: env("E2E_KUBE_CONTROLLER_MANAGER"),
		kedaOperator:      env("E2E_KEDA_OPERATOR"),
		kedaAdapter:       env("E2E_KEDA_ADAPTER"),
		kedaCRDs:          env("E2E_KEDA_CRDS"),
		flowscaler:        env("E2E_FLOWSCALER"),
		redis:             env("E2E_REDIS_SERVER"),
		prometheus:        env("E2E_PROMETHEUS"),
	}
}

// cluster is the control plane, KEDA, flowscaler and the sources of one run.
type cluster struct {
	bin    binaries
	dir    string // certificates, configs and data
	logDir string // one log per component

	kubeconfig string
	kube       kubernetes.Interface
	dyn        dynamic.Interface

	redisAddr      string
	redis          *proc
	prometheusAddr string
	exporter       *exporter
	flowscalerGRPC string
	flowscalerHTTP string

	mu    sync.Mutex
	procs []*proc
}

func (c *cluster) track(p *proc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs = append(c.procs, p)
}

// The names KEDA's manifests give its services: certificates and the
// APIService refer to them.
const (
	kedaNamespace  = "keda"
	metricsService = "keda-metrics-apiserver"
	testNamespace  = "e2e"
)

var (
	scaledObjects = schema.GroupVersionResource{Group: "keda.sh", Version: "v1alpha1", Resource: "scaledobjects"}
	apiServices   = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}
	crds          = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// startCluster brings everything up in dependency order; each component
// must answer its readiness check before the next starts, and a component
// that does not fails the test with its log.
func startCluster(t *testing.T, logDir string) *cluster {
	t.Helper()
	c := &cluster{bin: binariesFromEnv(t), dir: t.TempDir(), logDir: logDir}
	t.Cleanup(func() {
		if t.Failed() {
			c.printLogTails()
		}
	})
	begin := time.Now()
	step := func(name string) {
		fmt.Printf("  %5.1fs  %s\n", time.Since(begin).Seconds(), name)
	}

	authority := newCA(t)
	pki := filepath.Join(c.dir, "pki")
	caFile := filepath.Join(pki, "ca.crt")
	writeFile(t, caFile, authority.certPEM)

	// etcd.
	etcdClient := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	etcdPeer := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c.startProc(t, "etcd", c.bin.etcd, []string{
		"--name", "e2e",
		"--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", "http://" + etcdClient,
		"--advertise-client-urls", "http://" + etcdClient,
		"--listen-peer-urls", "http://" + etcdPeer,
		"--initial-advertise-peer-urls", "http://" + etcdPeer,
		"--initial-cluster", "e2e=http://" + etcdPeer,
	}, nil, httpOK(http.DefaultClient, "http://"+etcdClient+"/health"), 30*time.Second)
	step("etcd ready")

	// kube-apiserver, with the aggregation layer's front proxy set up so
	// that KEDA's metrics adapter can authenticate the requests it proxies.
	apiPort := freePort(t)
	apiURL := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	serving := authority.issue(t, "kube-apiserver", nil, []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"})
	servingCert, servingKey := serving.write(t, pki, "apiserver.crt", "apiserver.key")
	proxy := authority.issue(t, "front-proxy-client", nil, nil)
	proxyCert, proxyKey := proxy.write(t, pki, "front-proxy.crt", "front-proxy.key")
	admin := authority.issue(t, "e2e-admin", []string{"system:masters"}, nil)
	saKey := serviceAccountKey(t, pki)
	c.kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	writeFile(t, c.kubeconfig, kubeconfig(apiURL, authority.certPEM, admin))
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	c.kube = kubernetes.NewForConfigOrDie(cfg)
	c.dyn = dynamic.NewForConfigOrDie(cfg)
	adminTLS := tlsClient(t, cfg)
	c.startProc(t, "kube-apiserver", c.bin.apiserver, []string{
		"--etcd-servers", "http://" + etcdClient,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(apiPort),
		"--tls-cert-file", servingCert,
		"--tls-private-key-file", servingKey,
		"--client-ca-file", caFile,
		"--authorization-mode", "AlwaysAllow",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saKey,
		"--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", "10.0.0.0/24",
		// No kubelet, no service accounts: the ReplicaSets' pods only
		// need to exist (they stay Pending).
		"--disable-admission-plugins", "ServiceAccount",
		// The namespace has loopback only, which the "kubernetes"
		// service's endpoints may not use.
		"--endpoint-reconciler-type", "none",
		"--requestheader-client-ca-file", caFile,
		"--requestheader-allowed-names", "front-proxy-client",
		"--requestheader-username-headers", "X-Remote-User",
		"--requestheader-group-headers", "X-Remote-Group",
		"--requestheader-extra-headers-prefix", "X-Remote-Extra-",
		"--proxy-client-cert-file", proxyCert,
		"--proxy-client-key-file", proxyKey,
	}, nil, httpOK(adminTLS, apiURL+"/readyz"), 90*time.Second)
	step("kube-apiserver ready at " + apiURL)

	// kube-controller-manager: Deployments, ReplicaSets, the HPA (synced
	// every 5 s with a short downscale window) and garbage collection.
	kcmPort := freePort(t)
	c.startProc(t, "kube-controller-manager", c.bin.controllerManager, []string{
		"--kubeconfig", c.kubeconfig,
		"--bind-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(kcmPort),
		"--leader-elect=false",
		"--controllers", "deployment-controller,replicaset-controller,horizontal-pod-autoscaler-controller,garbage-collector-controller",
		"--horizontal-pod-autoscaler-sync-period", "5s",
		"--horizontal-pod-autoscaler-downscale-stabilization", "5s",
		"--use-service-account-credentials=false",
	}, nil, dialable(fmt.Sprintf("127.0.0.1:%d", kcmPort)), 60*time.Second)
	step("kube-controller-manager ready")

	ctx := context.Background()
	for _, ns := range []string{kedaNamespace, testNamespace} {
		if _, err := c.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating namespace %s: %v", ns, err)
		}
	}
	c.applyCRDs(t)
	step("KEDA CRDs established")

	// KEDA: one certificate for the operator's metrics service (gRPC, mutual
	// TLS) and the adapter's API, named for both services as in a cluster.
	kedaCerts := filepath.Join(c.dir, "keda-certs")
	writeFile(t, filepath.Join(kedaCerts, "ca.crt"), authority.certPEM)
	keda := authority.issue(t, "keda", []string{"KEDAORG"}, []string{
		"localhost",
		metricsService + "." + kedaNamespace + ".svc", metricsService + "." + kedaNamespace + ".svc.cluster.local",
		"keda-operator." + kedaNamespace + ".svc", "keda-operator." + kedaNamespace + ".svc.cluster.local",
	})
	kedaCert, kedaKey := keda.write(t, kedaCerts, "tls.crt", "tls.key")
	kedaEnv := []string{
		"KUBECONFIG=" + c.kubeconfig,
		"POD_NAMESPACE=" + kedaNamespace,
		"KEDA_CLUSTER_OBJECT_NAMESPACE=" + kedaNamespace,
		"WATCH_NAMESPACE=",
	}
	emptyCADir := filepath.Join(c.dir, "keda-ca")
	if err := os.MkdirAll(emptyCADir, 0o700); err != nil {
		t.Fatal(err)
	}
	metricsServiceAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	probe := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c.startProc(t, "keda-operator", c.bin.kedaOperator, []string{
		"--leader-elect=false",
		"--zap-log-level=info",
		"--zap-encoder=console",
		"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--health-probe-bind-address", probe,
		"--metrics-service-bind-address", metricsServiceAddr,
		"--cert-dir", kedaCerts,
		"--enable-cert-rotation=false",
		"--ca-dir", emptyCADir,
	}, kedaEnv, httpOK(http.DefaultClient, "http://"+probe+"/readyz"), 60*time.Second)
	step("keda-operator ready")

	adapterPort := freePort(t)
	c.startProc(t, "keda-adapter", c.bin.kedaAdapter, []string{
		"--secure-port", strconv.Itoa(adapterPort),
		"--cert-dir", kedaCerts,
		"--tls-cert-file", kedaCert,
		"--tls-private-key-file", kedaKey,
		"--client-ca-file", caFile,
		"--lister-kubeconfig", c.kubeconfig,
		"--authentication-kubeconfig", c.kubeconfig,
		"--authorization-kubeconfig", c.kubeconfig,
		"--metrics-service-address", metricsServiceAddr,
		"--port", strconv.Itoa(freePort(t)),
		"--zap-log-level=info",
		"--zap-encoder=console",
	}, kedaEnv, dialable(fmt.Sprintf("127.0.0.1:%d", adapterPort)), 60*time.Second)
	step("keda-adapter listening")
	c.registerAdapter(t, adapterPort, authority.certPEM)
	waitFor(t, 60*time.Second, "external.metrics.k8s.io/v1beta1 to be served", func() error {
		return c.kube.Discovery().RESTClient().Get().AbsPath("/apis/external.metrics.k8s.io/v1beta1").Do(ctx).Error()
	})
	step("external.metrics.k8s.io available through the aggregator")

	// The sources: Redis, and Prometheus scraping the consumers' exporter.
	c.startRedis(t)
	step("redis-server ready at " + c.redisAddr)
	c.exporter = startExporter(t)
	c.startPrometheus(t)
	step("prometheus ready at " + c.prometheusAddr)

	// flowscaler, with short policy values so that the scenarios take
	// seconds: see flowscalerConfig.
	c.flowscalerGRPC = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c.flowscalerHTTP = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	config := filepath.Join(c.dir, "flowscaler.yaml")
	writeFile(t, config, []byte(flowscalerConfig(c.flowscalerGRPC, c.flowscalerHTTP, c.redisAddr, c.prometheusAddr)))
	c.startProc(t, "flowscaler", c.bin.flowscaler, []string{"serve", "--config", config, "--log-level", "info"}, nil,
		httpOK(http.DefaultClient, "http://"+c.flowscalerHTTP+"/readyz"), 30*time.Second)
	step("flowscaler ready at " + c.flowscalerGRPC)
	return c
}

// flowscalerConfig is flowscaler.yaml for the run: a source outage turns
// into Unavailable after staleAfter 10s, and the scale-down cooldown is 10s.
func flowscalerConfig(grpcAddr, httpAddr, redisAddr, promAddr string) string {
	return fmt.Sprintf(`server:
  grpcAddr: %q
  httpAddr: %q
  readTimeout: 2s
  staleAfter: 10s
  readCacheTTL: 500ms
  streamCheckInterval: 500ms
  shutdownTimeout: 5s
connections:
  local:
    type: redis
    url: redis://%s
  prometheus:
    type: prometheus
    url: http://%s
queries:
  window: 10s
  processingUnit: ms
  cacheTTL: 1s
policy:
  defaults:
    minReplicas: 0
    maxReplicas: 20
    targetAge: 10s
    concurrency: 2
    prefetch: 4
    processingTime: 1s
    targetUtilization: 0.8
    scaleDownCooldown: 10s
    activationDepth: 0
    rateWindow: 10s
`, grpcAddr, httpAddr, redisAddr, promAddr)
}

func (c *cluster) startRedis(t *testing.T) {
	t.Helper()
	port := freePort(t)
	c.redisAddr = fmt.Sprintf("127.0.0.1:%d", port)
	c.redis = c.startProc(t, "redis-server", c.bin.redis, []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", c.dir,
	}, nil, dialable(c.redisAddr), 10*time.Second)
}

func (c *cluster) startPrometheus(t *testing.T) {
	t.Helper()
	c.prometheusAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	config := filepath.Join(c.dir, "prometheus.yml")
	writeFile(t, config, fmt.Appendf(nil, `global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: consumers
    static_configs:
      - targets: [%q]
        labels:
          service: e2e-consumer
`, c.exporter.addr))
	c.startProc(t, "prometheus", c.bin.prometheus, []string{
		"--config.file", config,
		"--storage.tsdb.path", filepath.Join(c.dir, "prometheus"),
		"--web.listen-address", c.prometheusAddr,
	}, nil, httpOK(http.DefaultClient, "http://"+c.prometheusAddr+"/-/ready"), 30*time.Second)
}

// applyCRDs creates KEDA's CRDs from its config/crd/bases and waits until
// each is established.
func (c *cluster) applyCRDs(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	files, err := filepath.Glob(filepath.Join(c.bin.kedaCRDs, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in %s (%v)", c.bin.kedaCRDs, err)
	}
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(b), "\n---") {
			if strings.TrimSpace(doc) == "" || strings.TrimSpace(doc) == "---" {
				continue
			}
			var obj map[string]any
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if obj == nil {
				continue
			}
			u := &unstructured.Unstructured{Object: obj}
			if _, err := c.dyn.Resource(crds).Create(ctx, u, metav1.CreateOptions{}); err != nil {
				t.Fatalf("creating CRD %s from %s: %v", u.GetName(), f, err)
			}
			names = append(names, u.GetName())
		}
	}
	for _, name := range names {
		waitFor(t, 30*time.Second, "CRD "+name+" to be established", func() error {
			u, err := c.dyn.Resource(crds).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if conditionTrue(u, "Established") {
				return nil
			}
			return notYet("not established")
		})
	}
}

// registerAdapter makes the aggregator proxy external.metrics.k8s.io to
// the adapter. The aggregator refuses loopback Endpoints, but an
// ExternalName Service resolves to host:port with the APIService's port,
// and the adapter's certificate carries the Service's DNS name.
func (c *cluster) registerAdapter(t *testing.T, port int, caPEM []byte) {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: metricsService, Namespace: kedaNamespace},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"},
	}
	if _, err := c.kube.CoreV1().Services(kedaNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating service %s: %v", metricsService, err)
	}
	apisvc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1",
		"kind":       "APIService",
		"metadata":   map[string]any{"name": "v1beta1.external.metrics.k8s.io"},
		"spec": map[string]any{
			"group":                "external.metrics.k8s.io",
			"version":              "v1beta1",
			"groupPriorityMinimum": int64(100),
			"versionPriority":      int64(100),
			"caBundle":             base64.StdEncoding.EncodeToString(caPEM),
			"service": map[string]any{
				"namespace": kedaNamespace,
				"name":      metricsService,
				"port":      int64(port),
			},
		},
	}}
	if _, err := c.dyn.Resource(apiServices).Create(ctx, apisvc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating APIService: %v", err)
	}
	waitFor(t, 60*time.Second, "APIService v1beta1.external.metrics.k8s.io to be Available", func() error {
		u, err := c.dyn.Resource(apiServices).Get(ctx, "v1beta1.external.metrics.k8s.io", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if conditionTrue(u, "Available") {
			return nil
		}
		return notYet("%s", conditionMessage(u, "Available"))
	})
}

// printLogTails shows the end of every component's log after a failure; the
// whole logs stay in the log directory.
func (c *cluster) printLogTails() {
	c.mu.Lock()
	procs := append([]*proc(nil), c.procs...)
	c.mu.Unlock()
	for _, p := range procs {
		state := "running"
		if !p.running() {
			state = "exited"
		}
		fmt.Printf("\n----- %s (%s): last lines of %s -----\n%s\n", p.name, state, p.log, tail(p.log, 2500))
	}
}

func kubeconfig(server string, caPEM []byte, client leaf) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, server, b64(caPEM), b64(client.certPEM), b64(client.keyPEM))
}

// tlsClient is an HTTP client with the admin's credentials, for readiness
// checks before client-go has anything to discover.
func tlsClient(t *testing.T, cfg *rest.Config) *http.Client {
	t.Helper()
	tc, err := rest.TLSConfigFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tc == nil {
		tc = &tls.Config{}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
}

// httpOK is a readiness check: GET url answers 200.
func httpOK(client *http.Client, url string) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if resp.StatusCode != http.StatusOK {
			return notYet("GET %s: %s %s", url, resp.Status, strings.TrimSpace(string(body)))
		}
		return nil
	}
}

// waitFor polls check every 200 ms until it returns nil, and fails the test
// with the last error after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// conditionTrue reports whether status.conditions has typ with status True.
func conditionTrue(u *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == typ {
			return m["status"] == "True"
		}
	}
	return false
}

// conditionMessage is the message of condition typ, or "" when absent.
func conditionMessage(u *unstructured.Unstructured, typ string) string {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == typ {
			s, _ := m["message"].(string)
			return s
		}
	}
	return ""
}
