package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/flowscaler/flowscaler/scaler"
)

// kedaTLSAuthParams are the parameters KEDA's external scaler reads from a
// TriggerAuthentication (externalScalerMetadata in KEDA v2.21's
// pkg/scalers/external_scaler.go, the fields tagged order=authParams).
var kedaTLSAuthParams = []string{"caCert", "tlsClientCert", "tlsClientKey"}

// exampleObjects decodes every Kubernetes manifest in deploy/examples
// strictly; flowscaler.yaml, a flowscaler config, has no kind and is left
// to the config tests.
func exampleObjects(t *testing.T) map[string][]runtime.Object {
	t.Helper()
	paths, err := filepath.Glob(examplesDir + "/*.yaml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no examples in %s (%v)", examplesDir, err)
	}
	out := map[string][]runtime.Object{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		docs, err := splitYAML(data)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, d := range docs {
			var probe struct {
				Kind string `json:"kind"`
			}
			if err := yaml.Unmarshal(d, &probe); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if probe.Kind == "" {
				continue
			}
			obj, err := decodeStrict(manifest{source: filepath.Base(p), doc: d})
			if err != nil {
				t.Errorf("%v", err)
				continue
			}
			out[filepath.Base(p)] = append(out[filepath.Base(p)], obj)
		}
	}
	return out
}

func TestExamples(t *testing.T) {
	examples := exampleObjects(t)
	var all []runtime.Object
	for _, objs := range examples {
		all = append(all, objs...)
	}
	auths := map[string]*kedav1alpha1.TriggerAuthentication{}
	for _, ta := range allOf[*kedav1alpha1.TriggerAuthentication](all) {
		auths[ta.Namespace+"/"+ta.Name] = ta
	}
	scaledObjects := allOf[*kedav1alpha1.ScaledObject](all)
	if len(scaledObjects) == 0 {
		t.Fatal("no ScaledObject among the examples")
	}
	// The examples are meant to work with the chart as installed by the
	// README: its default config (connection local, the three profiles) and
	// its Service names.
	cfg := loadRenderedConfig(t, loadChart(t), nil)
	addServiceBusConnections(t, cfg)
	addresses := []string{
		fmt.Sprintf("%s.%s.svc.cluster.local:6000", releaseName, releaseNamespace),
		fmt.Sprintf("%s-headless.%s.svc.cluster.local:6000", releaseName, releaseNamespace),
	}
	for _, so := range scaledObjects {
		t.Run(so.Namespace+"/"+so.Name, func(t *testing.T) {
			// KEDA's admission webhook runs these on every ScaledObject.
			if err := kedav1alpha1.CheckReplicaCountBoundsAreValid(so); err != nil {
				t.Errorf("KEDA: %v", err)
			}
			if err := kedav1alpha1.ValidateTriggers(so.Spec.Triggers); err != nil {
				t.Errorf("KEDA: %v", err)
			}
			if so.Spec.Fallback == nil {
				t.Error("no fallback: when flowscaler answers Unavailable the target keeps whatever it had")
			} else if err := kedav1alpha1.CheckFallbackValid(so); err != nil {
				t.Errorf("KEDA: %v", err)
			}
			if fb := so.Spec.Fallback; fb != nil && !slices.Contains([]string{"",
				kedav1alpha1.FallbackBehaviorStatic, kedav1alpha1.FallbackBehaviorCurrentReplicas,
				kedav1alpha1.FallbackBehaviorCurrentReplicasIfHigher, kedav1alpha1.FallbackBehaviorCurrentReplicasIfLower,
			}, fb.Behavior) {
				t.Errorf("fallback.behavior = %q: not one KEDA accepts without scaling modifiers", fb.Behavior)
			}
			adv := so.Spec.Advanced
			if adv == nil || adv.HorizontalPodAutoscalerConfig == nil || adv.HorizontalPodAutoscalerConfig.Behavior == nil ||
				adv.HorizontalPodAutoscalerConfig.Behavior.ScaleDown == nil {
				t.Error("no HPA scaleDown behavior: the HPA's default 300s window would stack on flowscaler's own cooldown")
			} else if w := adv.HorizontalPodAutoscalerConfig.Behavior.ScaleDown.StabilizationWindowSeconds; w == nil || *w > 60 {
				t.Errorf("scaleDown.stabilizationWindowSeconds = %v, want at most 60: flowscaler holds scale-down itself", w)
			}
			for i, trig := range so.Spec.Triggers {
				if trig.Type != "external" && trig.Type != "external-push" {
					t.Errorf("trigger %d: type %q is not flowscaler's", i, trig.Type)
					continue
				}
				if !slices.Contains(addresses, trig.Metadata["scalerAddress"]) {
					t.Errorf("trigger %d: scalerAddress %q is none of the chart's Services %v", i, trig.Metadata["scalerAddress"], addresses)
				}
				// flowscaler's own parser, against the chart's own config.
				obj, err := scaler.ParseObject(cfg, so.Namespace, so.Name, trig.Metadata)
				if err != nil {
					t.Errorf("trigger %d: flowscaler refuses the metadata: %v", i, err)
					continue
				}
				if so.Spec.MaxReplicaCount == nil || int(*so.Spec.MaxReplicaCount) < obj.Params.MaxReplicas {
					t.Errorf("trigger %d: maxReplicaCount %v is below flowscaler's maxReplicas %d: the HPA would cut the target", i, so.Spec.MaxReplicaCount, obj.Params.MaxReplicas)
				}
				if trig.AuthenticationRef == nil {
					continue
				}
				kind := trig.AuthenticationRef.Kind
				if kind != "" && kind != "TriggerAuthentication" {
					t.Errorf("trigger %d: authenticationRef kind %q: the examples carry TriggerAuthentications only", i, kind)
					continue
				}
				ta := auths[so.Namespace+"/"+trig.AuthenticationRef.Name]
				if ta == nil {
					t.Errorf("trigger %d: authenticationRef %q names no TriggerAuthentication in namespace %s", i, trig.AuthenticationRef.Name, so.Namespace)
				}
			}
		})
	}
	for key, ta := range auths {
		t.Run(key, func(t *testing.T) {
			params := map[string]bool{}
			for _, ref := range ta.Spec.SecretTargetRef {
				if !slices.Contains(kedaTLSAuthParams, ref.Parameter) {
					t.Errorf("parameter %q: KEDA's external scaler reads only %v", ref.Parameter, kedaTLSAuthParams)
				}
				if ref.Name == "" || ref.Key == "" {
					t.Errorf("parameter %q: secret name %q, key %q: both are needed", ref.Parameter, ref.Name, ref.Key)
				}
				params[ref.Parameter] = true
			}
			if !params["caCert"] {
				t.Error("no caCert: KEDA would verify flowscaler against the system roots")
			}
			if params["tlsClientCert"] != params["tlsClientKey"] {
				t.Error("tlsClientCert and tlsClientKey come together")
			}
		})
	}
	for _, c := range allOf[*certificate](all) {
		for _, err := range checkCertificate(c) {
			t.Errorf("Certificate %s: %v", c.Name, err)
		}
		if !slices.Contains(c.Spec.Usages, "client auth") {
			t.Errorf("Certificate %s: usages %v lack client auth", c.Name, c.Spec.Usages)
		}
	}
}

// TestExampleTLSSecretsMatch: the TriggerAuthentication reads the Secret the
// example Certificate writes, with the keys cert-manager writes into it.
func TestExampleTLSSecretsMatch(t *testing.T) {
	var all []runtime.Object
	for _, objs := range exampleObjects(t) {
		all = append(all, objs...)
	}
	issued := map[string]bool{}
	for _, c := range allOf[*certificate](all) {
		issued[c.Namespace+"/"+c.Spec.SecretName] = true
	}
	tas := allOf[*kedav1alpha1.TriggerAuthentication](all)
	if len(tas) == 0 {
		t.Fatal("no TriggerAuthentication among the examples")
	}
	for _, ta := range tas {
		for _, ref := range ta.Spec.SecretTargetRef {
			if !issued[ta.Namespace+"/"+ref.Name] {
				t.Errorf("%s: parameter %s reads Secret %s, which no example Certificate issues", ta.Name, ref.Parameter, ref.Name)
			}
			if !slices.Contains([]string{"ca.crt", "tls.crt", "tls.key"}, ref.Key) {
				t.Errorf("%s: parameter %s reads key %q, which cert-manager does not write", ta.Name, ref.Parameter, ref.Key)
			}
		}
	}
}

func allOf[T runtime.Object](objs []runtime.Object) []T { return all[T](objs) }
