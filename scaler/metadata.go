package scaler

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/flowscaler/flowscaler/policy"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

// Object is one trigger of one ScaledObject, parsed and resolved against the
// config: what to read and how to decide.
type Object struct {
	Namespace  string
	Name       string
	MetricName string
	Query      sources.Query
	// Metrics are the consumer metrics read next to Query; nil for none.
	Metrics *sources.MetricsQuery
	Profile string
	Params  policy.Params
	// ID tells apart two objects with the same name but different metadata
	// (two triggers, or an edited ScaledObject): each keeps its own state.
	ID string
}

// Limits on what a caller may send; KEDA's own metadata is far below them.
const (
	maxMetadataKeys  = 64
	maxMetadataValue = 1024
	maxMetricName    = 100
)

// kedaKeys are keys KEDA itself puts into the external trigger's metadata.
var kedaKeys = map[string]bool{"scalerAddress": true, "enableTLS": true, "unsafeSsl": true}

// overrideKeys maps a metadata key to the parser that writes it into a Profile.
var overrideKeys = map[string]func(*config.Profile, string) error{
	"minReplicas":       intKey(func(p *config.Profile, v int) { p.MinReplicas = &v }),
	"maxReplicas":       intKey(func(p *config.Profile, v int) { p.MaxReplicas = &v }),
	"concurrency":       intKey(func(p *config.Profile, v int) { p.Concurrency = &v }),
	"prefetch":          intKey(func(p *config.Profile, v int) { p.Prefetch = &v }),
	"targetAge":         durKey(func(p *config.Profile, v config.Duration) { p.TargetAge = &v }),
	"processingTime":    durKey(func(p *config.Profile, v config.Duration) { p.ProcessingTime = &v }),
	"scaleDownCooldown": durKey(func(p *config.Profile, v config.Duration) { p.ScaleDownCooldown = &v }),
	"rateWindow":        durKey(func(p *config.Profile, v config.Duration) { p.RateWindow = &v }),
	"targetUtilization": floatKey(func(p *config.Profile, v float64) { p.TargetUtilization = &v }),
	"activationDepth":   floatKey(func(p *config.Profile, v float64) { p.ActivationDepth = &v }),
	"mode":              strKey(func(p *config.Profile, v string) { p.Mode = &v }),
	"messageCount":      floatKey(func(p *config.Profile, v float64) { p.MessageCount = &v }),
	"kind":              strKey(func(p *config.Profile, v string) { p.Kind = &v }),
	"panicWindow":       durKey(func(p *config.Profile, v config.Duration) { p.PanicWindow = &v }),
	"scaleUpFactor":     floatKey(func(p *config.Profile, v float64) { p.ScaleUpFactor = &v }),
	"scaleUpPods":       intKey(func(p *config.Profile, v int) { p.ScaleUpPods = &v }),
	"scaleUpPeriod":     durKey(func(p *config.Profile, v config.Duration) { p.ScaleUpPeriod = &v }),
	"stallDeliveries":   intKey(func(p *config.Profile, v int) { p.StallDeliveries = &v }),
	"maxFailureRate":    floatKey(func(p *config.Profile, v float64) { p.MaxFailureRate = &v }),
	"deadLetterAfter":   intKey(func(p *config.Profile, v int) { p.DeadLetterAfter = &v }),
	"lockDuration":      durKey(func(p *config.Profile, v config.Duration) { p.LockDuration = &v }),
	"podStartup":        durKey(func(p *config.Profile, v config.Duration) { p.PodStartup = &v }),
}

// strKey sets a string key; its rule is checked by Profile.Validate.
func strKey(set func(*config.Profile, string)) func(*config.Profile, string) error {
	return func(p *config.Profile, s string) error {
		set(p, s)
		return nil
	}
}

// sourceKeys are the keys that say what to read.
var sourceKeys = map[string]bool{"source": true, "connection": true, "list": true, "stream": true, "group": true, "policy": true}

func intKey(set func(*config.Profile, int)) func(*config.Profile, string) error {
	return func(p *config.Profile, s string) error {
		v, err := config.ParseInt(s)
		if err == nil {
			set(p, v)
		}
		return err
	}
}

func durKey(set func(*config.Profile, config.Duration)) func(*config.Profile, string) error {
	return func(p *config.Profile, s string) error {
		v, err := config.ParseDuration(s)
		if err == nil {
			set(p, config.Duration(v))
		}
		return err
	}
}

func floatKey(set func(*config.Profile, float64)) func(*config.Profile, string) error {
	return func(p *config.Profile, s string) error {
		v, err := config.ParseFloat(s)
		if err == nil {
			set(p, v)
		}
		return err
	}
}

// ParseObject turns a ScaledObject's trigger metadata into an Object. Every
// problem is reported, joined, each as `key = "value": rule`.
func ParseObject(cfg *config.Config, namespace, name string, md map[string]string) (Object, error) {
	obj := Object{Namespace: namespace, Name: name}
	var errs []error
	if namespace == "" || name == "" {
		errs = append(errs, fmt.Errorf("scaledObjectRef: namespace and name must be set (got %q/%q)", namespace, name))
	}
	if len(md) > maxMetadataKeys {
		return obj, fmt.Errorf("metadata: %d keys: must be at most %d", len(md), maxMetadataKeys)
	}
	var over config.Profile
	for _, k := range sortedKeys(md) {
		v := md[k]
		switch {
		case len(v) > maxMetadataValue:
			errs = append(errs, fmt.Errorf("%s: value of %d bytes: must be at most %d", k, len(v), maxMetadataValue))
		case kedaKeys[k] || sourceKeys[k] || prometheusKeys[k] || serviceBusKeys[k]:
		case overrideKeys[k] != nil:
			if err := overrideKeys[k](&over, v); err != nil {
				errs = append(errs, fmt.Errorf("%s = %q: %w", k, v, err))
			}
		default:
			errs = append(errs, fmt.Errorf("%s = %q: unknown key: must be one of %s", k, v, strings.Join(knownKeys(), ", ")))
		}
	}
	q, qerrs := parseQuery(cfg, md)
	obj.Query = q
	errs = append(errs, qerrs...)
	mq, merrs := parseMetrics(cfg, md, q)
	obj.Metrics = mq
	errs = append(errs, merrs...)

	obj.Profile = md["policy"]
	base, err := cfg.Params(obj.Profile)
	if err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, over.Validate("")...)
	obj.Params = over.Apply(base)
	if err == nil {
		errs = append(errs, config.ValidateParams("", obj.Params)...)
	}
	if len(errs) > 0 {
		return obj, errors.Join(errs...)
	}
	obj.MetricName = metricName(namespace, name)
	obj.ID = objectID(namespace, name, md)
	return obj, nil
}

func parseQuery(cfg *config.Config, md map[string]string) (sources.Query, []error) {
	q := sources.Query{Kind: sources.Kind(md["source"]), Connection: md["connection"]}
	var errs []error
	need := func(key string) string {
		v := md[key]
		if v == "" {
			errs = append(errs, fmt.Errorf("%s = \"\": required when source is %s", key, q.Kind))
		}
		return v
	}
	forbid := func(keys ...string) {
		for _, k := range keys {
			if _, ok := md[k]; ok {
				errs = append(errs, fmt.Errorf("%s = %q: not used by source %s", k, md[k], q.Kind))
			}
		}
	}
	var connType string
	switch q.Kind {
	case sources.RedisList:
		q.Name = need("list")
		forbid("stream", "group", "depthQuery")
		connType = "redis"
	case sources.RedisStream:
		q.Name = need("stream")
		q.Group = need("group")
		forbid("list", "depthQuery")
		connType = "redis"
	case sources.Prometheus:
		// The depth of a broker only an exporter can see, as one PromQL value.
		if q.Name = need("depthQuery"); q.Name != "" {
			if err := config.CheckPromQL(q.Name); err != nil {
				errs = append(errs, fmt.Errorf("depthQuery = %q: %w", q.Name, err))
			}
		}
		forbid("list", "stream", "group")
		connType = "prometheus"
	case sources.ServiceBusQueue, sources.ServiceBusSubscription:
		errs = append(errs, parseServiceBusQuery(md, &q)...)
		forbid("list", "stream", "group", "depthQuery")
		connType = "servicebus"
	default:
		errs = append(errs, fmt.Errorf("source = %q: must be one of %s, %s, %s, %s, %s", md["source"], sources.RedisList, sources.RedisStream, sources.Prometheus,
			sources.ServiceBusQueue, sources.ServiceBusSubscription))
	}
	errs = append(errs, forbidServiceBusKeys(md, q.Kind)...)
	conn, ok := cfg.Connections[q.Connection]
	switch {
	case q.Connection == "":
		errs = append(errs, fmt.Errorf("connection = \"\": required: the name of a connection in flowscaler's config (%s)", connectionNames(cfg)))
	case !ok:
		errs = append(errs, fmt.Errorf("connection = %q: must name a connection in flowscaler's config (%s)", q.Connection, connectionNames(cfg)))
	case connType != "" && conn.Type != connType:
		errs = append(errs, fmt.Errorf("connection = %q: is a %s connection: source %s needs a %s connection", q.Connection, conn.Type, q.Kind, connType))
	}
	return q, errs
}

func connectionNames(cfg *config.Config) string {
	names := sortedKeys(cfg.Connections)
	if len(names) == 0 {
		return "none configured"
	}
	return "configured: " + strings.Join(names, ", ")
}

func knownKeys() []string {
	var keys []string
	for k := range sourceKeys {
		keys = append(keys, k)
	}
	for k := range prometheusKeys {
		keys = append(keys, k)
	}
	for k := range serviceBusKeys {
		keys = append(keys, k)
	}
	for k := range overrideKeys {
		keys = append(keys, k)
	}
	for k := range kedaKeys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var metricNameUnsafe = regexp.MustCompile(`[^a-z0-9-]+`)

// metricName derives a stable, HPA-safe metric name from the ScaledObject.
// KEDA prefixes it with the trigger index ("s0-"), which keeps two triggers
// of one object apart. Long names keep a hash of the full name so that two
// long names that share a prefix still differ.
func metricName(namespace, name string) string {
	full := "flowscaler-" + strings.Trim(metricNameUnsafe.ReplaceAllString(strings.ToLower(namespace+"-"+name), "-"), "-")
	if len(full) <= maxMetricName {
		return full
	}
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return full[:maxMetricName-9] + "-" + hex.EncodeToString(sum[:4])
}

// objectID identifies the object with its metadata, so that state is not
// shared between different triggers or across an edit of the ScaledObject.
func objectID(namespace, name string, md map[string]string) string {
	h := sha256.New()
	for _, k := range sortedKeys(md) {
		if kedaKeys[k] {
			continue
		}
		fmt.Fprintf(h, "%s=%s\x00", k, md[k])
	}
	return namespace + "/" + name + "#" + hex.EncodeToString(h.Sum(nil)[:6])
}

// metadataKey is the cache key of one parse: the config generation plus the
// exact request. Parsing is cheap, but KEDA asks for the spec before every
// evaluation of every object.
func metadataKey(namespace, name string, md map[string]string) string {
	var b strings.Builder
	b.WriteString(namespace)
	b.WriteByte(0)
	b.WriteString(name)
	for _, k := range sortedKeys(md) {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(md[k])
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// formatDuration prints a duration rounded for people.
func formatDuration(d time.Duration) string {
	if d < 0 {
		return "unknown"
	}
	return d.Round(time.Millisecond).String()
}
