package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/flowscaler/flowscaler/scaler/config"
)

// addServiceBusConnections adds the connections of
// deploy/examples/flowscaler-servicebus.yaml, loaded with flowscaler's own
// loader, to cfg: the Service Bus examples name them, and an operator adds
// them to the chart's config.
func addServiceBusConnections(t *testing.T, cfg *config.Config) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(examplesDir, "flowscaler-servicebus.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The example's secret comes from the environment; any well-formed
	// connection string stands in for it.
	env := func(name string) (string, bool) {
		if name == "ORDERS_SERVICEBUS_CONNECTION_STRING" {
			return "Endpoint=sb://orders-prod.servicebus.windows.net/;SharedAccessKeyName=flowscaler;SharedAccessKey=ZXhhbXBsZQ==", true
		}
		return "", false
	}
	sb, err := config.Parse(data, env, os.ReadFile)
	if err != nil {
		t.Fatalf("flowscaler refuses flowscaler-servicebus.yaml: %v", err)
	}
	if len(sb.Connections) == 0 {
		t.Fatal("flowscaler-servicebus.yaml has no connections")
	}
	for name, conn := range sb.Connections {
		if _, clash := cfg.Connections[name]; clash {
			t.Fatalf("flowscaler-servicebus.yaml: connection %q is already in the chart's config", name)
		}
		cfg.Connections[name] = conn
	}
}

// Service Bus connections set in the chart's values reach flowscaler's
// loader: the connection string through an environment variable or a
// mounted file from the Secret, Azure AD with its namespace.
func TestServiceBusValuesReachTheConfig(t *testing.T) {
	ch := loadChart(t)
	cfg := loadRenderedConfig(t, ch, valuesFromYAML(t, `
config:
  connections:
    orders-bus:
      type: servicebus
      connectionString: {secretName: orders-bus, secretKey: connectionString}
    billing-bus:
      type: servicebus
      auth: connection-string
      connectionString: {secretName: billing, secretKey: connectionString, from: file}
      amqpEndpoint: amqp-proxy.billing:5671
    events-bus:
      type: servicebus
      auth: azure-ad
      namespace: events-prod.servicebus.windows.net
`))
	type view struct {
		Type, Auth, Namespace, AMQPEndpoint, ConnectionString string
		FromEnv, FromFile                                     bool
	}
	got := map[string]view{}
	for name, c := range cfg.Connections {
		if c.Type != "servicebus" {
			continue
		}
		got[name] = view{
			Type: c.Type, Auth: c.Auth, Namespace: c.Namespace, AMQPEndpoint: c.AMQPEndpoint,
			ConnectionString: c.ConnectionString(),
			FromEnv:          c.ConnectionStringFromEnv != "", FromFile: c.ConnectionStringFile != "",
		}
	}
	want := map[string]view{
		"orders-bus": {Type: "servicebus", ConnectionString: fakeSecret("orders-bus", "connectionString"), FromEnv: true},
		"billing-bus": {Type: "servicebus", Auth: "connection-string", AMQPEndpoint: "amqp-proxy.billing:5671",
			ConnectionString: fakeSecret("billing", "connectionString"), FromFile: true},
		"events-bus": {Type: "servicebus", Auth: "azure-ad", Namespace: "events-prod.servicebus.windows.net"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("servicebus connections reaching flowscaler (-want +got):\n%s", diff)
	}
	if env := cfg.Connections["orders-bus"].ConnectionStringFromEnv; env != "FLOWSCALER_ORDERS_BUS_CONNECTION_STRING" {
		t.Errorf("orders-bus reads its connection string from %q", env)
	}
}

func TestServiceBusValuesRefused(t *testing.T) {
	ch := loadChart(t)
	tests := []struct {
		name, values, want string
	}{
		{"a url", "config: {connections: {bus: {type: servicebus, url: 'redis://x:1', connectionString: {secretName: s}}}}",
			"/config/connections/bus/url"},
		{"a password", "config: {connections: {bus: {type: servicebus, password: {secretName: p}, connectionString: {secretName: s}}}}",
			"/config/connections/bus/password"},
		{"no connection string", "config: {connections: {bus: {type: servicebus}}}",
			"connectionString"},
		{"a connection string without a Secret", "config: {connections: {bus: {type: servicebus, connectionString: {secretName: ''}}}}",
			"/config/connections/bus/connectionString/secretName"},
		{"azure-ad without a namespace", "config: {connections: {bus: {type: servicebus, auth: azure-ad}}}",
			"namespace"},
		{"azure-ad with a connection string", "config: {connections: {bus: {type: servicebus, auth: azure-ad, namespace: a.servicebus.windows.net, connectionString: {secretName: s}}}}",
			"/config/connections/bus/connectionString"},
		{"a namespace with a scheme", "config: {connections: {bus: {type: servicebus, auth: azure-ad, namespace: 'sb://a.servicebus.windows.net'}}}",
			"/config/connections/bus/namespace"},
		{"an unknown auth", "config: {connections: {bus: {type: servicebus, auth: sas}}}",
			"/config/connections/bus/auth"},
		{"an amqpEndpoint without a port", "config: {connections: {bus: {type: servicebus, amqpEndpoint: proxy, connectionString: {secretName: s}}}}",
			"/config/connections/bus/amqpEndpoint"},
		{"servicebus fields on redis", "config: {connections: {local: {type: redis, url: 'redis://r:6379', namespace: a.servicebus.windows.net}}}",
			"/config/connections/local/namespace"},
		{"redis without a url", "config: {connections: {local: {type: redis, url: null}}}",
			"url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := render(ch, valuesFromYAML(t, tt.values))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("render error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// The workload identity wiring README shows: the annotation lands on the
// ServiceAccount the pods run as, the label on the pods, where the Azure
// webhook looks for them.
func TestServiceBusWorkloadIdentityWiring(t *testing.T) {
	ch := loadChart(t)
	objs := objects(t, ch, valuesFromYAML(t, `
serviceAccount: {annotations: {azure.workload.identity/client-id: 00000000-0000-0000-0000-000000000001}}
podLabels: {azure.workload.identity/use: "true"}
config: {connections: {events-bus: {type: servicebus, auth: azure-ad, namespace: events-prod.servicebus.windows.net}}}
`))
	sa := only[*corev1.ServiceAccount](t, objs)
	d := only[*appsv1.Deployment](t, objs)
	if got := sa.Annotations["azure.workload.identity/client-id"]; got != "00000000-0000-0000-0000-000000000001" {
		t.Errorf("ServiceAccount annotation = %q", got)
	}
	if d.Spec.Template.Spec.ServiceAccountName != sa.Name {
		t.Errorf("pods run as %q, not the annotated %q", d.Spec.Template.Spec.ServiceAccountName, sa.Name)
	}
	if got := d.Spec.Template.Labels["azure.workload.identity/use"]; got != "true" {
		t.Errorf("pod label azure.workload.identity/use = %q", got)
	}
}
