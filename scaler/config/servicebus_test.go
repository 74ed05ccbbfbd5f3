package config

import (
	"fmt"
	"io/fs"
	"strings"
	"testing"
)

const sbSecret = "c2VjcmV0LWtleS1uZXZlci1wcmludGVk"

var sbConnString = "Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKeyName=scaler;SharedAccessKey=" + sbSecret

func sbConfig(conn string) []byte {
	return []byte("connections:\n  bus:\n    type: servicebus\n" + conn)
}

func TestServiceBusConnections(t *testing.T) {
	files := func(name string) ([]byte, error) {
		switch name {
		case "/secrets/sb":
			return []byte(sbConnString + "\n"), nil
		case "/secrets/emulator":
			return []byte("Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=" + sbSecret + ";UseDevelopmentEmulator=true"), nil
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	vars := env(map[string]string{
		"SB":         sbConnString,
		"SB_EMU":     "Endpoint=sb://127.0.0.1:5300;SharedAccessKeyName=k;SharedAccessKey=" + sbSecret + ";UseDevelopmentEmulator=true",
		"SB_NO_KEY":  "Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKeyName=scaler",
		"SB_BAD_EP":  "Endpoint=https://orders.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=" + sbSecret,
		"SB_GARBAGE": "not a connection string " + sbSecret,
	})
	good := []struct {
		name, conn string
		want       ServiceBus
		secret     string
	}{
		{"env", "    connectionStringFromEnv: SB\n", ServiceBus{ConnectionStringFromEnv: "SB"}, sbConnString},
		{"file", "    connectionStringFile: /secrets/sb\n", ServiceBus{ConnectionStringFile: "/secrets/sb"}, sbConnString},
		{"azure-ad", "    auth: azure-ad\n    namespace: orders.servicebus.windows.net\n", ServiceBus{Auth: "azure-ad", Namespace: "orders.servicebus.windows.net"}, ""},
		{"emulator", "    connectionStringFile: /secrets/emulator\n    emulator: true\n    amqpEndpoint: localhost:5672\n",
			ServiceBus{ConnectionStringFile: "/secrets/emulator", Emulator: true, AMQPEndpoint: "localhost:5672"}, ""},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(sbConfig(tc.conn), vars, files)
			if err != nil {
				t.Fatal(err)
			}
			got := c.Connections["bus"]
			if got.ServiceBus != tc.want {
				t.Errorf("ServiceBus = %+v, want %+v", got.ServiceBus, tc.want)
			}
			if tc.secret != "" && got.ConnectionString() != tc.secret {
				t.Errorf("ConnectionString() = %q, want %q", got.ConnectionString(), tc.secret)
			}
			for _, s := range []string{got.String(), fmt.Sprintf("%v", got), fmt.Sprintf("%+v", got.ServiceBus)} {
				if strings.Contains(s, sbSecret) {
					t.Errorf("%q shows the secret", s)
				}
			}
		})
	}

	bad := []struct {
		name string
		yaml []byte
		want []string
	}{
		{"no-secret", sbConfig("    auth: connection-string\n"),
			[]string{"connections.bus: connectionStringFromEnv or connectionStringFile is required with auth connection-string (or use auth azure-ad with namespace)"}},
		{"both-secrets", sbConfig("    connectionStringFromEnv: SB\n    connectionStringFile: /secrets/sb\n"),
			[]string{"connections.bus: connectionStringFromEnv and connectionStringFile are both set: choose one"}},
		{"env-unset", sbConfig("    connectionStringFromEnv: NOPE\n"),
			[]string{`connections.bus.connectionStringFromEnv = "NOPE": environment variable is not set`}},
		{"file-missing", sbConfig("    connectionStringFile: /nope\n"),
			[]string{`connections.bus.connectionStringFile = "/nope": cannot be read: file does not exist`}},
		{"no-key", sbConfig("    connectionStringFromEnv: SB_NO_KEY\n"),
			[]string{`connections.bus.connectionStringFromEnv = "SB_NO_KEY": the connection string needs SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature`}},
		{"bad-endpoint", sbConfig("    connectionStringFromEnv: SB_BAD_EP\n"),
			[]string{`connections.bus.connectionStringFromEnv = "SB_BAD_EP": the connection string's Endpoint must be sb://<namespace>/`}},
		{"garbage", sbConfig("    connectionStringFromEnv: SB_GARBAGE\n"),
			[]string{`connections.bus.connectionStringFromEnv = "SB_GARBAGE": the connection string must be Key=Value pairs separated by ';'`}},
		{"emulator-undeclared", sbConfig("    connectionStringFromEnv: SB_EMU\n"),
			[]string{`connections.bus.connectionStringFromEnv = "SB_EMU": the connection string says UseDevelopmentEmulator=true (AMQP without TLS): set emulator: true to allow it`}},
		{"emulator-without-flag-in-string", sbConfig("    connectionStringFromEnv: SB\n    emulator: true\n"),
			[]string{`connections.bus.emulator = "true": the connection string lacks UseDevelopmentEmulator=true`}},
		{"azure-ad-no-namespace", sbConfig("    auth: azure-ad\n"),
			[]string{`connections.bus.namespace = "": required with auth azure-ad: the fully qualified namespace, as in orders.servicebus.windows.net`}},
		{"azure-ad-url", sbConfig("    auth: azure-ad\n    namespace: https://orders.servicebus.windows.net/\n"),
			[]string{`connections.bus.namespace = "https://orders.servicebus.windows.net/": must be a fully qualified namespace, as in orders.servicebus.windows.net (no scheme or path)`}},
		{"azure-ad-with-secret", sbConfig("    auth: azure-ad\n    namespace: orders.servicebus.windows.net\n    connectionStringFromEnv: SB\n"),
			[]string{"connections.bus: auth azure-ad takes no connection string"}},
		{"unknown-auth", sbConfig("    auth: password\n"),
			[]string{`connections.bus.auth = "password": must be connection-string or azure-ad`}},
		{"namespace-with-connection-string", sbConfig("    connectionStringFromEnv: SB\n    namespace: other.servicebus.windows.net\n"),
			[]string{`connections.bus.namespace = "other.servicebus.windows.net": only with auth azure-ad: a connection string names its namespace`}},
		{"bad-amqp-endpoint", sbConfig("    connectionStringFromEnv: SB\n    amqpEndpoint: localhost\n"),
			[]string{`connections.bus.amqpEndpoint = "localhost": must be host:port, as in 127.0.0.1:5672`}},
		{"url-on-servicebus", sbConfig("    connectionStringFromEnv: SB\n    url: sb://x\n"),
			[]string{"connections.bus.url: servicebus connections do not take it: give a connection string or namespace"}},
		{"servicebus-field-on-redis", []byte("connections:\n  r:\n    type: redis\n    url: redis://x:6379\n    namespace: orders.servicebus.windows.net\n"),
			[]string{"connections.r.namespace: only servicebus connections take it"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.yaml, vars, files)
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), sbSecret) {
				t.Errorf("error %q shows the secret", err)
			}
		})
	}
}
