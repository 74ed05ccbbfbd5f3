package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Paths from this module to the parts of the repository it checks.
const (
	repoRoot      = "../.."
	chartDir      = repoRoot + "/deploy/helm/flowscaler"
	rulesDir      = repoRoot + "/deploy/rules"
	dashboardsDir = repoRoot + "/deploy/dashboards"
	examplesDir   = repoRoot + "/deploy/examples"
	runbooksDir   = repoRoot + "/docs/runbooks"
)

const (
	releaseName      = "flowscaler"
	releaseNamespace = "flowscaler"
)

// scheme knows every kind the chart and the examples may produce, so that
// strict decoding can refuse a field the API would not know.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme,
		monitoringv1.AddToScheme, kedav1alpha1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// strictDecoder fails on unknown and duplicate fields, as `kubectl apply
// --validate=strict` does.
var strictDecoder = serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return ch
}

func readValues(t *testing.T, path string) map[string]any {
	t.Helper()
	if path == "" {
		return map[string]any{}
	}
	vals, err := chartutil.ReadValuesFile(path)
	if err != nil {
		t.Fatalf("read values: %v", err)
	}
	return vals
}

// render runs Helm's engine the way `helm install` does: values are
// coalesced with the chart's and checked against values.schema.json first.
func render(ch *chart.Chart, vals map[string]any) (map[string]string, error) {
	opts := chartutil.ReleaseOptions{Name: releaseName, Namespace: releaseNamespace, Revision: 1, IsInstall: true}
	caps := chartutil.DefaultCapabilities.Copy()
	rv, err := chartutil.ToRenderValues(ch, vals, opts, caps)
	if err != nil {
		return nil, err
	}
	return engine.Render(ch, rv)
}

// manifest is one rendered document: the template it came from and its text.
type manifest struct {
	source string
	doc    []byte
}

// splitManifests returns the non-empty documents of every template, in a
// stable order (NOTES.txt and partials excluded).
func splitManifests(t *testing.T, rendered map[string]string) []manifest {
	t.Helper()
	names := make([]string, 0, len(rendered))
	for name := range rendered {
		if strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var out []manifest
	for _, name := range names {
		docs, err := splitYAML([]byte(rendered[name]))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, d := range docs {
			out = append(out, manifest{source: name, doc: d})
		}
	}
	return out
}

func splitYAML(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		d, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if isEmptyYAML(d) {
			continue
		}
		docs = append(docs, d)
	}
}

// isEmptyYAML reports whether a document holds only comments and blanks.
func isEmptyYAML(d []byte) bool {
	for _, line := range strings.Split(string(d), "\n") {
		l := strings.TrimSpace(line)
		if l != "" && l != "---" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// decodeStrict decodes one manifest into its typed API object; unknown
// fields, duplicate fields and unknown kinds are errors. Kinds outside the
// scheme (cert-manager's) are decoded by decodeOther.
func decodeStrict(m manifest) (runtime.Object, error) {
	obj, _, err := strictDecoder.Decode(m.doc, nil, nil)
	if err == nil {
		return obj, nil
	}
	if runtime.IsNotRegisteredError(err) {
		return decodeOther(m)
	}
	return nil, fmt.Errorf("%s: %w", m.source, err)
}

// decodeOther handles the kinds whose Go types are not worth their
// dependencies: a local copy of the fields the chart sets, decoded with
// unknown fields refused.
func decodeOther(m manifest) (runtime.Object, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(m.doc, &meta); err != nil {
		return nil, fmt.Errorf("%s: %w", m.source, err)
	}
	switch meta.APIVersion + "/" + meta.Kind {
	case "cert-manager.io/v1/Certificate":
		var c certificate
		if err := yaml.UnmarshalStrict(m.doc, &c); err != nil {
			return nil, fmt.Errorf("%s: Certificate: %w", m.source, err)
		}
		return &c, nil
	}
	return nil, fmt.Errorf("%s: %s %s: no Go type to check it against", m.source, meta.APIVersion, meta.Kind)
}

// objects renders and strictly decodes; the test fails on any error.
func objects(t *testing.T, ch *chart.Chart, vals map[string]any) []runtime.Object {
	t.Helper()
	rendered, err := render(ch, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	var objs []runtime.Object
	for _, m := range splitManifests(t, rendered) {
		obj, err := decodeStrict(m)
		if err != nil {
			t.Errorf("decode: %v", err)
			continue
		}
		objs = append(objs, obj)
	}
	return objs
}

// only returns the single object of type T, failing unless there is exactly one.
func only[T runtime.Object](t *testing.T, objs []runtime.Object) T {
	t.Helper()
	found := all[T](objs)
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, got %d", zero, len(found))
	}
	return found[0]
}

func all[T runtime.Object](objs []runtime.Object) []T {
	var found []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			found = append(found, v)
		}
	}
	return found
}
