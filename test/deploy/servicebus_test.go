package deploy

import (
	"os"
	"path/filepath"
	"testing"

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
