package explain

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	flowscalerv1 "github.com/flowscaler/flowscaler/proto/flowscaler/v1"
)

// Usage is the command line of `flowscaler explain`.
const Usage = "flowscaler explain NAMESPACE/NAME | --all [--addr 127.0.0.1:6000] [--json] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]"

// Options are the command's arguments and where it writes.
type Options struct {
	Args   []string
	Stdout io.Writer
	Stderr io.Writer
}

// Run asks the flowscaler at --addr and prints its answer. An unknown
// object, an unreachable flowscaler or bad flags are errors.
func Run(ctx context.Context, o Options) error {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(o.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(o.Stderr, "Usage:\n  %s\n\nFlags:\n", Usage)
		fs.PrintDefaults()
	}
	addr := fs.String("addr", "127.0.0.1:6000", "flowscaler's gRPC address")
	all := fs.Bool("all", false, "explain every ScaledObject this flowscaler instance has decided for")
	asJSON := fs.Bool("json", false, "print the API's ExplainResponse as JSON")
	caFile := fs.String("tls-ca", "", "PEM CA bundle that signed flowscaler's certificate; dials TLS")
	certFile := fs.String("tls-cert", "", "PEM client certificate for mutual TLS (with --tls-key); dials TLS")
	keyFile := fs.String("tls-key", "", "PEM key of --tls-cert")
	serverName := fs.String("tls-server-name", "", "name to verify in flowscaler's certificate (default: the host of --addr)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	// Flags may follow the object: parse what is left after each positional argument.
	var positional []string
	args := o.Args
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}

	req := &flowscalerv1.ExplainRequest{All: *all}
	switch {
	case *all && len(positional) > 0:
		return fmt.Errorf("%s and --all: give one\nusage: %s", positional[0], Usage)
	case !*all && len(positional) == 0:
		return fmt.Errorf("which ScaledObject? give NAMESPACE/NAME or --all\nusage: %s", Usage)
	case len(positional) > 1:
		return fmt.Errorf("%q: one ScaledObject at a time (or --all)\nusage: %s", strings.Join(positional, " "), Usage)
	case !*all:
		ns, name, ok := strings.Cut(positional[0], "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return fmt.Errorf("object = %q: must be NAMESPACE/NAME, e.g. shop/order-processor", positional[0])
		}
		req.Namespace, req.Name = ns, name
	}
	if *timeout <= 0 {
		return fmt.Errorf("--timeout = %v: must be > 0", *timeout)
	}
	creds, err := transportCredentials(*addr, *caFile, *certFile, *keyFile, *serverName)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("--addr = %q: %w", *addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	resp, err := flowscalerv1.NewDecisionServiceClient(conn).Explain(ctx, req)
	if err != nil {
		return callError(*addr, err)
	}
	if *asJSON {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(resp)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(o.Stdout, string(b))
		return err
	}
	return Format(o.Stdout, resp)
}

// transportCredentials is plaintext without TLS flags, else TLS verifying
// flowscaler's certificate against --tls-ca (the system's roots without it)
// and presenting --tls-cert for mutual TLS.
func transportCredentials(addr, caFile, certFile, keyFile, serverName string) (credentials.TransportCredentials, error) {
	if caFile == "" && certFile == "" && keyFile == "" && serverName == "" {
		return insecure.NewCredentials(), nil
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("--tls-cert = %q, --tls-key = %q: give both or neither", certFile, keyFile)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("--addr = %q: must be HOST:PORT", addr)
		}
		cfg.ServerName = host
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca = %q: %w", caFile, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca = %q: no PEM certificate in it", caFile)
		}
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert = %q, --tls-key = %q: %w", certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

// callError says what failed in the words of the likely fix.
func callError(addr string, err error) error {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.NotFound, codes.InvalidArgument:
		return errors.New(st.Message())
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("flowscaler at %s did not answer: %s (is it running there; does it serve TLS, needing --tls-ca?)", addr, st.Message())
	case codes.Unimplemented:
		return fmt.Errorf("flowscaler at %s does not serve explain: %s (an older version?)", addr, st.Message())
	}
	return fmt.Errorf("flowscaler at %s: %s: %s", addr, st.Code(), st.Message())
}
