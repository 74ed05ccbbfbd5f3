package deploy

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const fullValues = "testdata/full-values.yaml"

// valueSets are the two renderings every chart test looks at: what `helm
// install` does without values, and every option switched on.
var valueSets = []struct {
	name   string
	values string
}{
	{"defaults", ""},
	{"full options", fullValues},
}

func kindsOf(objs []runtime.Object) []string {
	var kinds []string
	for _, o := range objs {
		gvk := o.GetObjectKind().GroupVersionKind()
		name := ""
		if m, err := metaOf(o); err == nil {
			name = m.GetName()
		}
		kinds = append(kinds, gvk.Kind+"/"+name)
	}
	slices.Sort(kinds)
	return kinds
}

func metaOf(o runtime.Object) (metav1.Object, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", o)
	}
	return m, nil
}

func TestChartRendersOnlyKnownFields(t *testing.T) {
	ch := loadChart(t)
	tests := []struct {
		name   string
		values string
		want   []string
	}{
		{"defaults", "", []string{
			"ConfigMap/flowscaler", "Deployment/flowscaler", "NetworkPolicy/flowscaler",
			"PodDisruptionBudget/flowscaler", "Service/flowscaler", "ServiceAccount/flowscaler",
		}},
		{"full options", fullValues, []string{
			"Certificate/flowscaler", "ConfigMap/flowscaler", "ConfigMap/flowscaler-dashboards",
			"Deployment/flowscaler", "NetworkPolicy/flowscaler", "PodDisruptionBudget/flowscaler",
			"PrometheusRule/flowscaler", "Service/flowscaler", "Service/flowscaler-headless",
			"ServiceAccount/flowscaler-scaler", "ServiceMonitor/flowscaler",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := objects(t, ch, readValues(t, tt.values))
			if diff := cmp.Diff(tt.want, kindsOf(objs)); diff != "" {
				t.Errorf("rendered objects (-want +got):\n%s", diff)
			}
			for _, o := range objs {
				m, err := metaOf(o)
				if err != nil {
					t.Fatal(err)
				}
				if _, isDashboard := o.(*corev1.ConfigMap); isDashboard && strings.HasSuffix(m.GetName(), "-dashboards") {
					continue // lives where Grafana looks for it
				}
				if m.GetNamespace() != releaseNamespace {
					t.Errorf("%s: namespace = %q, want the release namespace %q", m.GetName(), m.GetNamespace(), releaseNamespace)
				}
			}
			for _, c := range all[*certificate](objs) {
				for _, err := range checkCertificate(c) {
					t.Errorf("Certificate %s: %v", c.Name, err)
				}
			}
		})
	}
}

// container returns the flowscaler container of the rendered Deployment.
func container(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "flowscaler" {
			return c
		}
	}
	t.Fatalf("Deployment %s has no container named flowscaler", d.Name)
	return corev1.Container{}
}

func TestDeploymentIsHardened(t *testing.T) {
	ch := loadChart(t)
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			d := only[*appsv1.Deployment](t, objects(t, ch, readValues(t, vs.values)))
			pod := d.Spec.Template.Spec
			c := container(t, d)
			sc := c.SecurityContext
			if sc == nil {
				t.Fatal("container has no securityContext")
			}
			psc := pod.SecurityContext
			checks := []struct {
				what string
				ok   bool
			}{
				{"runAsNonRoot", sc.RunAsNonRoot != nil && *sc.RunAsNonRoot && psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot},
				{"runAsUser is not root", psc != nil && psc.RunAsUser != nil && *psc.RunAsUser != 0},
				{"readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem},
				{"allowPrivilegeEscalation false", sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation},
				{"capabilities drop ALL", sc.Capabilities != nil && slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) && len(sc.Capabilities.Add) == 0},
				{"seccomp RuntimeDefault", sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault},
				{"cpu and memory requested", !c.Resources.Requests.Cpu().IsZero() && !c.Resources.Requests.Memory().IsZero()},
				{"memory limited", !c.Resources.Limits.Memory().IsZero()},
				{"no service account token", pod.AutomountServiceAccountToken != nil && !*pod.AutomountServiceAccountToken},
				{"at least 2 replicas", d.Spec.Replicas != nil && *d.Spec.Replicas >= 2},
				{"spread over a topology", len(pod.TopologySpreadConstraints) > 0},
				{"serves the mounted config", slices.Contains(c.Args, "--config=/etc/flowscaler/flowscaler.yaml") && c.Args[0] == "serve"},
			}
			for _, ck := range checks {
				if !ck.ok {
					t.Errorf("%s: not so", ck.what)
				}
			}
			podLabels := labels.Set(d.Spec.Template.Labels)
			for i, tsc := range pod.TopologySpreadConstraints {
				sel, err := metav1.LabelSelectorAsSelector(tsc.LabelSelector)
				if err != nil || !sel.Matches(podLabels) {
					t.Errorf("topologySpreadConstraints[%d] does not select the pods (%v)", i, err)
				}
			}
			var ports []string
			for _, p := range c.Ports {
				ports = append(ports, fmt.Sprintf("%s/%d", p.Name, p.ContainerPort))
			}
			vals := renderedValues(t, ch, vs.values)
			wantPorts := []string{fmt.Sprintf("grpc/%v", vals["ports"].(map[string]any)["grpc"]), fmt.Sprintf("http/%v", vals["ports"].(map[string]any)["http"])}
			if diff := cmp.Diff(wantPorts, ports); diff != "" {
				t.Errorf("container ports (-want +got):\n%s", diff)
			}
			if l := c.LivenessProbe; l == nil || l.HTTPGet == nil || l.HTTPGet.Path != "/healthz" || l.HTTPGet.Port != intstr.FromString("http") {
				t.Errorf("livenessProbe = %+v, want GET /healthz on port http", l)
			}
		})
	}
}

// renderedValues returns the values the chart sees: its defaults with the
// file's values over them.
func renderedValues(t *testing.T, ch *chart.Chart, path string) map[string]any {
	t.Helper()
	vals, err := chartutil.CoalesceValues(ch, readValues(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return vals
}

func TestReadinessProbe(t *testing.T) {
	ch := loadChart(t)
	tests := []struct {
		name   string
		values string
		want   corev1.ProbeHandler
	}{
		{"plaintext: the gRPC health service of KEDA's service", "", corev1.ProbeHandler{
			GRPC: &corev1.GRPCAction{Port: 6000, Service: ptr("externalscaler.ExternalScaler")},
		}},
		{"forced http", "probes: {readiness: http}", corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")},
		}},
		{"TLS: /readyz, the kubelet's gRPC probe has no TLS", "tls: {enabled: true, existingSecret: flowscaler-tls}", corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := only[*appsv1.Deployment](t, objects(t, ch, valuesFromYAML(t, tt.values)))
			got := container(t, d).ReadinessProbe
			if got == nil {
				t.Fatal("no readinessProbe")
			}
			if diff := cmp.Diff(tt.want, got.ProbeHandler); diff != "" {
				t.Errorf("readinessProbe (-want +got):\n%s", diff)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func valuesFromYAML(t *testing.T, s string) map[string]any {
	t.Helper()
	vals, err := chartutil.ReadValues([]byte(s))
	if err != nil {
		t.Fatalf("values %q: %v", s, err)
	}
	return vals
}

func TestConfigChecksumRollsPods(t *testing.T) {
	ch := loadChart(t)
	checksum := func(values string) (string, bool) {
		d := only[*appsv1.Deployment](t, objects(t, ch, valuesFromYAML(t, values)))
		v, ok := d.Spec.Template.Annotations["checksum/config"]
		return v, ok
	}
	base, ok := checksum("")
	if !ok || len(base) != 64 {
		t.Fatalf("checksum/config = %q, want a sha256", base)
	}
	tests := []struct {
		name     string
		values   string
		wantSame bool
		wantNone bool
	}{
		{"a policy change rolls", "config: {policy: {defaults: {targetAge: 45s}}}", false, false},
		{"a connection change rolls", "config: {connections: {local: {type: redis, url: 'redis://other:6379'}}}", false, false},
		{"a replica change does not touch the config", "replicaCount: 4", true, false},
		{"rollOnChange false leaves reloads to flowscaler", "config: {rollOnChange: false}", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := checksum(tt.values)
			switch {
			case tt.wantNone && ok:
				t.Errorf("checksum/config = %q, want none", got)
			case tt.wantNone:
			case tt.wantSame && got != base:
				t.Errorf("checksum/config changed: %s -> %s", base, got)
			case !tt.wantSame && got == base:
				t.Errorf("checksum/config unchanged (%s)", got)
			}
		})
	}
}

func TestServicesAndPolicies(t *testing.T) {
	ch := loadChart(t)
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			objs := objects(t, ch, readValues(t, vs.values))
			d := only[*appsv1.Deployment](t, objs)
			podLabels := labels.Set(d.Spec.Template.Labels)
			for _, svc := range all[*corev1.Service](objs) {
				if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
					t.Errorf("Service %s selects no flowscaler pod", svc.Name)
				}
				var names []string
				for _, p := range svc.Spec.Ports {
					names = append(names, p.Name+"->"+p.TargetPort.String())
				}
				want := []string{"grpc->grpc", "http->http"}
				if strings.HasSuffix(svc.Name, "-headless") {
					// KEDA resolves every pod; Prometheus must not scrape twice.
					want = []string{"grpc->grpc"}
					if svc.Spec.ClusterIP != corev1.ClusterIPNone {
						t.Errorf("Service %s: clusterIP = %q, want None", svc.Name, svc.Spec.ClusterIP)
					}
				}
				if diff := cmp.Diff(want, names); diff != "" {
					t.Errorf("Service %s ports (-want +got):\n%s", svc.Name, diff)
				}
			}
			pdb := only[*policyv1.PodDisruptionBudget](t, objs)
			if sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err != nil || !sel.Matches(podLabels) {
				t.Errorf("PodDisruptionBudget selects no flowscaler pod (%v)", err)
			}
			np := only[*networkingv1.NetworkPolicy](t, objs)
			if sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err != nil || !sel.Matches(podLabels) {
				t.Errorf("NetworkPolicy does not apply to the flowscaler pods (%v)", err)
			}
			// Each port is open to its own peers only: the gRPC port to KEDA's
			// namespace, the HTTP port to Prometheus.
			byPort := map[string][]networkingv1.NetworkPolicyPeer{}
			for _, rule := range np.Spec.Ingress {
				for _, p := range rule.Ports {
					byPort[p.Port.String()] = append(byPort[p.Port.String()], rule.From...)
				}
			}
			if len(byPort["grpc"]) == 0 || len(byPort["http"]) == 0 {
				t.Fatalf("NetworkPolicy ingress by port = %v, want rules for grpc and http", byPort)
			}
			for _, peer := range byPort["grpc"] {
				if peer.NamespaceSelector == nil || !strings.Contains(peer.NamespaceSelector.String(), "keda") {
					t.Errorf("gRPC port admits %v, want KEDA's namespace only", peer)
				}
			}
			for _, rule := range np.Spec.Ingress {
				if len(rule.From) == 0 {
					t.Errorf("an ingress rule without peers admits everyone: %+v", rule)
				}
				if len(rule.Ports) == 0 {
					t.Errorf("an ingress rule without ports opens every port: %+v", rule)
				}
			}
		})
	}
}

// TestTLSWiring checks that every file the config names is projected into
// the pod, from the Secrets the values name.
func TestTLSWiring(t *testing.T) {
	ch := loadChart(t)
	objs := objects(t, ch, readValues(t, fullValues))
	d := only[*appsv1.Deployment](t, objs)
	cert := only[*certificate](t, objs)
	svcs := all[*corev1.Service](objs)
	var wantNames []string
	for _, s := range svcs {
		wantNames = append(wantNames, s.Name+"."+s.Namespace+".svc", s.Name+"."+s.Namespace+".svc.cluster.local")
	}
	for _, n := range wantNames {
		if !slices.Contains(cert.Spec.DNSNames, n) {
			t.Errorf("Certificate dnsNames %v lack %q, a name KEDA may dial", cert.Spec.DNSNames, n)
		}
	}
	files := projectedFiles(t, d)
	for path, want := range map[string]string{
		"tls/tls.crt":       cert.Spec.SecretName + "/tls.crt",
		"tls/tls.key":       cert.Spec.SecretName + "/tls.key",
		"tls/client-ca.crt": cert.Spec.SecretName + "/ca.crt",
	} {
		if got := files[path]; got != want {
			t.Errorf("projected %s = %q, want %q", path, got, want)
		}
	}
}

// projectedFiles maps each path in the config volume to "secret/key" or
// "configmap:name/key".
func projectedFiles(t *testing.T, d *appsv1.Deployment) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name != "config" {
			continue
		}
		if v.Projected == nil {
			t.Fatalf("volume config is not projected: %+v", v.VolumeSource)
		}
		for _, src := range v.Projected.Sources {
			switch {
			case src.ConfigMap != nil:
				for _, it := range src.ConfigMap.Items {
					files[it.Path] = "configmap:" + src.ConfigMap.Name + "/" + it.Key
				}
			case src.Secret != nil:
				for _, it := range src.Secret.Items {
					files[it.Path] = src.Secret.Name + "/" + it.Key
				}
			}
		}
	}
	return files
}

// TestSchemaRefusesBadValues: a typo or a bad value fails the install and
// the message names the field.
func TestSchemaRefusesBadValues(t *testing.T) {
	ch := loadChart(t)
	tests := []struct {
		name    string
		values  string
		wantErr []string
	}{
		{"top-level typo", "replicaCont: 3", []string{"replicaCont"}},
		{"typo in a policy key", "config: {policy: {defaults: {targetAgee: 30s}}}", []string{"/config/policy/defaults", "targetAgee"}},
		{"typo in a profile", "config: {policy: {profiles: {io-bound: {concurency: 8}}}}", []string{"/config/policy/profiles/io-bound", "concurency"}},
		{"duration without a unit", "config: {server: {staleAfter: '60'}}", []string{"/config/server/staleAfter"}},
		{"maxReplicas out of range", "config: {policy: {defaults: {maxReplicas: 0}}}", []string{"/config/policy/defaults/maxReplicas"}},
		{"unknown log level", "logLevel: verbose", []string{"/logLevel"}},
		{"unknown connection type", "config: {connections: {local: {type: kafka, url: 'redis://r:6379'}}}", []string{"/config/connections/local/type"}},
		{"typo in a connection", "config: {connections: {local: {type: redis, url: 'redis://r:6379', pasword: {secretName: s}}}}", []string{"pasword"}},
		{"password source", "config: {connections: {local: {type: redis, url: 'redis://r:6379', password: {secretName: s, from: vault}}}}", []string{"/config/connections/local/password/from"}},
		{"connection name", "config: {connections: {Orders_EU: {type: redis, url: 'redis://r:6379'}}}", []string{"Orders_EU"}},
		{"typo in TLS", "tls: {enabeld: true}", []string{"/tls", "enabeld"}},
		{"typo in a network peer", "networkPolicy: {grpcFrom: [{namespaceSelecter: {}}]}", []string{"/networkPolicy/grpcFrom/0", "namespaceSelecter"}},
		{"typo in the security context", "securityContext: {readOnlyRootFileSystem: true}", []string{"readOnlyRootFileSystem"}},
		{"port out of range", "ports: {grpc: 70000}", []string{"/ports/grpc"}},
		{"TLS without a certificate", "tls: {enabled: true}", []string{"tls.enabled = true: set tls.existingSecret or enable tls.certManager"}},
		{"cert-manager without an issuer", "tls: {enabled: true, certManager: {enabled: true}}", []string{`tls.certManager.issuerRef.name = "": must name the Issuer`}},
		{"both certificate sources", "tls: {enabled: true, existingSecret: s, certManager: {enabled: true, issuerRef: {name: ca}}}", []string{`tls.existingSecret = "s", tls.certManager.enabled = true: choose one`}},
		{"gRPC probe with TLS", "tls: {enabled: true, existingSecret: s}\nprobes: {readiness: grpc}", []string{`probes.readiness = "grpc" with tls.enabled = true`}},
		{"mutual TLS without TLS", "tls: {clientAuth: {enabled: true}}", []string{"tls.clientAuth.enabled = true with tls.enabled = false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := render(ch, valuesFromYAML(t, tt.values))
			if err == nil {
				t.Fatalf("values %q rendered without error", tt.values)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not name %q:\n%v", want, err)
				}
			}
		})
	}
}

// TestLint runs Helm's own linter, as `helm lint` does.
func TestLint(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(vs.name+" are clean", func(t *testing.T) {
			l := lint.All(chartDir, readValues(t, vs.values), releaseNamespace, false)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("helm lint: %v", m)
				}
			}
		})
	}
	t.Run("a typo is an error naming the field", func(t *testing.T) {
		l := lint.All(chartDir, valuesFromYAML(t, "config: {policy: {defaults: {targetAgee: 30s}}}"), releaseNamespace, false)
		if l.HighestSeverity != support.ErrorSev {
			t.Fatalf("helm lint: highest severity %d, want an error; messages: %v", l.HighestSeverity, l.Messages)
		}
		var found bool
		for _, m := range l.Messages {
			found = found || (m.Severity == support.ErrorSev && strings.Contains(m.Err.Error(), "targetAgee"))
		}
		if !found {
			t.Errorf("no lint error names targetAgee: %v", l.Messages)
		}
	})
}

// TestChartCarriesRulesAndDashboards: the chart's files/ are the repository's
// deploy/rules and deploy/dashboards, byte for byte, without the rule tests.
func TestChartCarriesRulesAndDashboards(t *testing.T) {
	ch := loadChart(t)
	inChart := map[string][]byte{}
	for _, f := range ch.Files {
		inChart[f.Name] = f.Data
	}
	want := map[string][]byte{}
	for _, pattern := range []string{rulesDir + "/*.yml", dashboardsDir + "/*.json"} {
		paths, err := filepath.Glob(pattern)
		if err != nil || len(paths) == 0 {
			t.Fatalf("%s: no files (%v)", pattern, err)
		}
		for _, p := range paths {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			want["files/"+filepath.Base(filepath.Dir(p))+"/"+filepath.Base(p)] = data
		}
	}
	got := map[string][]byte{}
	for name, data := range inChart {
		if strings.HasPrefix(name, "files/") {
			got[name] = data
		}
	}
	if diff := cmp.Diff(slices.Sorted(maps.Keys(want)), slices.Sorted(maps.Keys(got))); diff != "" {
		t.Fatalf("chart files (-want +got):\n%s", diff)
	}
	for name, data := range want {
		if string(got[name]) != string(data) {
			t.Errorf("chart %s differs from the repository's copy", name)
		}
	}
}

// TestPrometheusRuleIsTheRuleFiles: the rendered PrometheusRule holds every
// group of deploy/rules/*.yml, with runbook_url under runbookBaseURL.
func TestPrometheusRuleIsTheRuleFiles(t *testing.T) {
	ch := loadChart(t)
	vals := readValues(t, fullValues)
	base := vals["prometheusRule"].(map[string]any)["runbookBaseURL"].(string)
	var want []monitoringv1.RuleGroup
	files := loadRuleFiles(t)
	// The chart reads the files in Helm's Files.Glob order: sorted by name.
	for _, name := range slices.Sorted(maps.Keys(files)) {
		for _, g := range files[name].Groups {
			for i := range g.Rules {
				if u, ok := g.Rules[i].Annotations["runbook_url"]; ok {
					g.Rules[i].Annotations["runbook_url"] = base + u
				}
			}
			want = append(want, g)
		}
	}
	pr := only[*monitoringv1.PrometheusRule](t, objects(t, ch, vals))
	if diff := cmp.Diff(want, pr.Spec.Groups); diff != "" {
		t.Errorf("PrometheusRule groups (-want +got):\n%s", diff)
	}
	sm := only[*monitoringv1.ServiceMonitor](t, objects(t, ch, vals))
	for _, ep := range sm.Spec.Endpoints {
		if !ep.HonorLabels {
			t.Errorf("ServiceMonitor endpoint %s: honorLabels false renames the series' namespace label to exported_namespace", ep.Port)
		}
	}
}

// TestDashboardConfigMapIsTheDashboard checks the dashboard ConfigMap holds
// deploy/dashboards/*.json unchanged.
func TestDashboardConfigMapIsTheDashboard(t *testing.T) {
	ch := loadChart(t)
	objs := objects(t, ch, readValues(t, fullValues))
	var dash *corev1.ConfigMap
	for _, cm := range all[*corev1.ConfigMap](objs) {
		if strings.HasSuffix(cm.Name, "-dashboards") {
			dash = cm
		}
	}
	if dash == nil {
		t.Fatal("no dashboards ConfigMap")
	}
	if dash.Labels["grafana_dashboard"] != "1" {
		t.Errorf("labels %v lack grafana_dashboard: \"1\"", dash.Labels)
	}
	want, err := os.ReadFile(dashboardsDir + "/flowscaler.json")
	if err != nil {
		t.Fatal(err)
	}
	if got := dash.Data["flowscaler.json"]; strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
		t.Errorf("ConfigMap flowscaler.json differs from deploy/dashboards/flowscaler.json")
	}
}

// ruleFile is the Prometheus rule file format; its groups are the
// Prometheus Operator's RuleGroup, so strict decoding checks every field.
type ruleFile struct {
	Groups []monitoringv1.RuleGroup `json:"groups"`
}

func loadRuleFiles(t *testing.T) map[string]ruleFile {
	t.Helper()
	paths, err := filepath.Glob(rulesDir + "/*.yml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no rule files in %s (%v)", rulesDir, err)
	}
	out := map[string]ruleFile{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var rf ruleFile
		if err := yaml.UnmarshalStrict(data, &rf); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		out[filepath.Base(p)] = rf
	}
	return out
}

func TestImage(t *testing.T) {
	ch := loadChart(t)
	tests := []struct {
		name   string
		values string
		want   string
	}{
		{"defaults: no registry host, the chart's appVersion", "", "flowscaler:" + ch.Metadata.AppVersion},
		{"a tag", "image: {tag: 1.2.3}", "flowscaler:1.2.3"},
		{"a registry", "image: {repository: registry.example/team/flowscaler}", "registry.example/team/flowscaler:" + ch.Metadata.AppVersion},
		{"a digest wins over the tag", "image: {tag: 1.2.3, digest: 'sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'}",
			"flowscaler@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := only[*appsv1.Deployment](t, objects(t, ch, valuesFromYAML(t, tt.values)))
			if got := container(t, d).Image; got != tt.want {
				t.Errorf("image = %q, want %q", got, tt.want)
			}
		})
	}
}
