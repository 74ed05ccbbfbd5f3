package config

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Authentication modes of a servicebus connection.
const (
	ServiceBusAuthConnectionString = "connection-string"
	ServiceBusAuthAzureAD          = "azure-ad"
)

// ServiceBus are the fields of a servicebus connection:
//
//	auth: connection-string (the default) with connectionStringFromEnv or
//	      connectionStringFile: a SAS connection string, or the development
//	      emulator's (UseDevelopmentEmulator=true, which also needs emulator: true);
//	auth: azure-ad with namespace: azidentity's DefaultAzureCredential chain
//	      (workload identity, managed identity, environment).
//
// amqpEndpoint (host:port) sends the AMQP connection elsewhere than the
// namespace: a TCP proxy, or the emulator's AMQP port.
type ServiceBus struct {
	Auth                    string `yaml:"auth"`
	ConnectionStringFromEnv string `yaml:"connectionStringFromEnv"`
	ConnectionStringFile    string `yaml:"connectionStringFile"`
	Namespace               string `yaml:"namespace"`
	AMQPEndpoint            string `yaml:"amqpEndpoint"`
	Emulator                bool   `yaml:"emulator"`
}

// ConnectionString is a servicebus connection's resolved secret ("" with azure-ad).
func (c Connection) ConnectionString() string { return c.connectionString }

// String never shows the connection string.
func (s ServiceBus) String() string {
	return fmt.Sprintf("servicebus auth=%s namespace=%s", s.auth(), s.Namespace)
}

func (s ServiceBus) auth() string {
	if s.Auth == "" {
		return ServiceBusAuthConnectionString
	}
	return s.Auth
}

// set lists the fields that are set, for refusing them on other types.
func (s ServiceBus) set() []string {
	var out []string
	add := func(name string, on bool) {
		if on {
			out = append(out, name)
		}
	}
	add("auth", s.Auth != "")
	add("connectionStringFromEnv", s.ConnectionStringFromEnv != "")
	add("connectionStringFile", s.ConnectionStringFile != "")
	add("namespace", s.Namespace != "")
	add("amqpEndpoint", s.AMQPEndpoint != "")
	add("emulator", s.Emulator)
	return out
}

// resolveServiceBus validates a servicebus connection and reads its
// connection string. Errors name the field, the value (never the secret:
// only the variable's or file's name) and the rule.
func (c *Connection) resolveServiceBus(field string, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) []error {
	var errs []error
	bad := func(f, value, rule string) { errs = append(errs, fmt.Errorf("%s.%s = %q: %s", field, f, value, rule)) }
	for _, f := range []struct {
		name string
		on   bool
	}{{"url", c.URL != ""}, {"passwordFromEnv", c.PasswordFromEnv != ""}, {"passwordFile", c.PasswordFile != ""}} {
		if f.on {
			errs = append(errs, fmt.Errorf("%s.%s: servicebus connections do not take it: give a connection string or namespace", field, f.name))
		}
	}
	for _, f := range c.prometheusOnly() {
		errs = append(errs, fmt.Errorf("%s.%s: only prometheus connections take it", field, f))
	}
	s := &c.ServiceBus
	if s.AMQPEndpoint != "" {
		host, port, err := net.SplitHostPort(s.AMQPEndpoint)
		if p, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
			bad("amqpEndpoint", s.AMQPEndpoint, "must be host:port, as in 127.0.0.1:5672")
		}
	}
	switch s.auth() {
	case ServiceBusAuthConnectionString:
		if s.Namespace != "" {
			bad("namespace", s.Namespace, "only with auth azure-ad: a connection string names its namespace")
		}
		cs, err := resolveConnectionString(field, s.ConnectionStringFromEnv, s.ConnectionStringFile, lookupEnv, readFile)
		if err != nil {
			errs = append(errs, err)
			break
		}
		c.connectionString = cs
		errs = append(errs, checkConnectionString(field, s, cs)...)
	case ServiceBusAuthAzureAD:
		switch {
		case s.Namespace == "":
			bad("namespace", "", "required with auth azure-ad: the fully qualified namespace, as in orders.servicebus.windows.net")
		case strings.Contains(s.Namespace, "://") || strings.ContainsAny(s.Namespace, "/?#@ "):
			bad("namespace", s.Namespace, "must be a fully qualified namespace, as in orders.servicebus.windows.net (no scheme or path)")
		}
		if s.ConnectionStringFromEnv != "" || s.ConnectionStringFile != "" {
			errs = append(errs, fmt.Errorf("%s: auth azure-ad takes no connection string: remove connectionStringFromEnv/connectionStringFile or use auth connection-string", field))
		}
		if s.Emulator {
			bad("emulator", "true", "the emulator takes a connection string, not azure-ad")
		}
	default:
		bad("auth", s.Auth, "must be connection-string or azure-ad")
	}
	return errs
}

func resolveConnectionString(field, fromEnv, file string, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error)) (string, error) {
	switch {
	case fromEnv == "" && file == "":
		return "", fmt.Errorf("%s: connectionStringFromEnv or connectionStringFile is required with auth connection-string (or use auth azure-ad with namespace)", field)
	case fromEnv != "" && file != "":
		return "", fmt.Errorf("%s: connectionStringFromEnv and connectionStringFile are both set: choose one", field)
	case fromEnv != "":
		v, ok := lookupEnv(fromEnv)
		if !ok || strings.TrimSpace(v) == "" {
			return "", fmt.Errorf("%s.connectionStringFromEnv = %q: environment variable is not set", field, fromEnv)
		}
		return strings.TrimSpace(v), nil
	}
	b, err := readFile(file)
	if err != nil {
		return "", fmt.Errorf("%s.connectionStringFile = %q: cannot be read: %v", field, file, unwrapPath(err))
	}
	return strings.TrimSpace(string(b)), nil
}

// checkConnectionString checks the shape the SDK needs, naming where the
// string came from and never its content.
func checkConnectionString(field string, s *ServiceBus, cs string) []error {
	from := fmt.Sprintf("%s.connectionStringFromEnv = %q", field, s.ConnectionStringFromEnv)
	if s.ConnectionStringFile != "" {
		from = fmt.Sprintf("%s.connectionStringFile = %q", field, s.ConnectionStringFile)
	}
	kv := map[string]string{}
	for _, part := range strings.Split(cs, ";") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return []error{fmt.Errorf("%s: the connection string must be Key=Value pairs separated by ';'", from)}
		}
		kv[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	var errs []error
	u, err := url.Parse(kv["endpoint"])
	if err != nil || u.Scheme != "sb" || u.Host == "" {
		errs = append(errs, fmt.Errorf("%s: the connection string's Endpoint must be sb://<namespace>/", from))
	}
	if kv["sharedaccesssignature"] == "" && (kv["sharedaccesskeyname"] == "" || kv["sharedaccesskey"] == "") {
		errs = append(errs, fmt.Errorf("%s: the connection string needs SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature", from))
	}
	emu, set := kv["usedevelopmentemulator"]
	isEmu, perr := strconv.ParseBool(emu)
	switch {
	case set && perr != nil:
		errs = append(errs, fmt.Errorf("%s: the connection string's UseDevelopmentEmulator must be true or false", from))
	case isEmu && !s.Emulator:
		errs = append(errs, fmt.Errorf("%s: the connection string says UseDevelopmentEmulator=true (AMQP without TLS): set emulator: true to allow it", from))
	case !isEmu && s.Emulator:
		errs = append(errs, fmt.Errorf("%s.emulator = \"true\": the connection string lacks UseDevelopmentEmulator=true", field))
	}
	return errs
}
