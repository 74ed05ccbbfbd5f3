package scaler

import (
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/flowscaler/flowscaler/policy"
	"github.com/flowscaler/flowscaler/scaler/config"
	"github.com/flowscaler/flowscaler/sources"
)

// serviceBusKeys are the metadata keys of the Service Bus sources.
var serviceBusKeys = map[string]bool{"queue": true, "topic": true, "subscription": true, "entityPattern": true, "aggregation": true}

// maxEntityPattern bounds an entityPattern; RE2 keeps matching linear, but
// a pattern this long is a mistake.
const maxEntityPattern = 256

// parseServiceBusQuery fills q for source servicebus-queue
// (queue, or entityPattern over queue names) or servicebus-subscription
// (topic with subscription, or entityPattern over its subscriptions'
// names); aggregation (sum, max, avg; default sum) combines the matches.
func parseServiceBusQuery(md map[string]string, q *sources.Query) []error {
	var errs []error
	bad := func(key, rule string) { errs = append(errs, fmt.Errorf("%s = %q: %s", key, md[key], rule)) }
	pattern, hasPattern := md["entityPattern"]
	one := "queue"
	if q.Kind == sources.ServiceBusSubscription {
		one = "subscription"
		if q.Name = md["topic"]; q.Name == "" {
			bad("topic", "required when source is "+string(q.Kind))
		}
		if _, ok := md["queue"]; ok {
			bad("queue", "not used by source "+string(q.Kind)+": give topic and subscription")
		}
	} else {
		for _, k := range []string{"topic", "subscription"} {
			if _, ok := md[k]; ok {
				bad(k, "not used by source "+string(q.Kind)+": give queue")
			}
		}
	}
	_, hasOne := md[one]
	switch {
	case hasPattern && hasOne:
		bad("entityPattern", fmt.Sprintf("give %s or entityPattern, not both", one))
	case hasPattern:
		switch _, err := regexp.Compile("^(?:" + pattern + ")$"); {
		case pattern == "":
			bad("entityPattern", "must be a regular expression over "+one+" names, as in orders-.*")
		case len(pattern) > maxEntityPattern:
			bad("entityPattern", fmt.Sprintf("must be at most %d characters", maxEntityPattern))
		case err != nil:
			bad("entityPattern", "must be a regular expression (RE2 syntax): "+strings.TrimPrefix(err.Error(), "error parsing regexp: "))
		}
		q.Pattern = pattern
		q.Aggregation = sources.AggregateSum
		if a, ok := md["aggregation"]; ok {
			switch a {
			case sources.AggregateSum, sources.AggregateMax, sources.AggregateAvg:
				q.Aggregation = a
			default:
				bad("aggregation", "must be sum, max or avg")
			}
		}
	default:
		if q.Kind == sources.ServiceBusSubscription {
			q.Group = md["subscription"]
		} else {
			q.Name = md["queue"]
		}
		if md[one] == "" {
			errs = append(errs, fmt.Errorf("%s = %q: required when source is %s (or entityPattern to match several)", one, md[one], q.Kind))
		}
		if _, ok := md["aggregation"]; ok {
			bad("aggregation", "only with entityPattern")
		}
	}
	return errs
}

// forbidServiceBusKeys refuses the Service Bus keys on other sources.
func forbidServiceBusKeys(md map[string]string, kind sources.Kind) []error {
	if kind != sources.RedisList && kind != sources.RedisStream && kind != sources.Prometheus {
		return nil // Service Bus itself, or an unknown source already refused
	}
	var errs []error
	for _, k := range sortedKeys(md) {
		if serviceBusKeys[k] {
			errs = append(errs, fmt.Errorf("%s = %q: not used by source %s", k, md[k], kind))
		}
	}
	return errs
}

// deadLetterMemory remembers an object's dead-letter and active counts
// over the rate window, to measure the dead letters' growth.
type deadLetterMemory struct {
	samples []deadLetterSample
}

type deadLetterSample struct {
	at           time.Time
	dead, active float64
}

// DeadLetters are the dead-letter inputs of one decision.
type DeadLetters struct {
	// Count is the dead-lettered messages now (NaN when the source does
	// not know); Rate their growth in messages per second over about the
	// rate window (NaN until two readings span a second). A fall (a purged
	// dead-letter queue) restarts the measurement.
	Count float64
	Rate  float64
	// ActiveFlat is set when the active count did not grow over that span.
	ActiveFlat bool
}

// observe records a reading and returns the growth over the window:
//
//	rate = (dead_now − dead_o) ÷ (t_now − t_o)
//
// with o the newest sample at or before now − window (or the oldest kept),
// so that the rate spans about the window.
func (m *deadLetterMemory) observe(r sources.Reading, now time.Time, window time.Duration) DeadLetters {
	out := DeadLetters{Count: r.DeadLetter, Rate: math.NaN()}
	if math.IsNaN(r.DeadLetter) {
		m.samples = nil
		return out
	}
	var kept []deadLetterSample
	for _, s := range m.samples {
		if s.dead > r.DeadLetter || s.at.After(now) {
			kept = nil // purged, or the clock went back: start again
			continue
		}
		kept = append(kept, s)
	}
	// At most one sample per second is kept: a window of a minute holds
	// about 60, however often KEDA asks.
	if n := len(kept); n > 1 && now.Sub(kept[n-1].at) < time.Second {
		kept = kept[:n-1]
	}
	cut := 0
	for i, s := range kept {
		if !s.at.After(now.Add(-window)) {
			cut = i
		}
	}
	m.samples = append(append([]deadLetterSample(nil), kept[cut:]...), deadLetterSample{at: now, dead: r.DeadLetter, active: r.Depth})
	o := m.samples[0]
	if dt := now.Sub(o.at).Seconds(); dt >= 1 {
		out.Rate = (r.DeadLetter - o.dead) / dt
		out.ActiveFlat = r.Depth <= o.active
	}
	return out
}

// apply feeds dead-lettering into the inputs: messages dead-lettered per
// second failed, so when the consumers' metrics give no failure rate the
// dead-letter rate stands in for it (a lower bound: each of them failed
// every delivery before). The policy's failure guard then holds the target
// when failures dominate, as it does for a measured failure rate.
func (d DeadLetters) apply(in *policy.Inputs) {
	if d.Rate > 0 && math.IsNaN(in.FailureRate) {
		in.FailureRate = d.Rate
	}
}

// note is the reason's addition when dead letters grow.
func (d DeadLetters) note() string {
	if !(d.Rate > 0) {
		return ""
	}
	s := fmt.Sprintf("; dead letters growing %s/s (%s dead-lettered)", formatRate(d.Rate), formatCount(d.Count))
	if d.ActiveFlat {
		s += " while the active count is flat: messages are failing, not waiting for consumers"
	}
	return s
}

func formatRate(r float64) string {
	if r >= 10 {
		return fmt.Sprintf("%.0f", r)
	}
	return fmt.Sprintf("%.2g", r)
}

func formatCount(c float64) string { return fmt.Sprintf("%.0f", c) }

// serviceBusConnections are the config's servicebus connections for the reader.
func serviceBusConnections(c *config.Config) map[string]sources.ServiceBusConnection {
	out := map[string]sources.ServiceBusConnection{}
	for name, conn := range c.Connections {
		if conn.Type != "servicebus" {
			continue
		}
		auth := sources.ServiceBusConnectionString
		if conn.Auth == config.ServiceBusAuthAzureAD {
			auth = sources.ServiceBusAzureAD
		}
		out[name] = sources.ServiceBusConnection{
			Auth:             auth,
			ConnectionString: conn.ConnectionString(),
			Namespace:        conn.Namespace,
			AMQPEndpoint:     conn.AMQPEndpoint,
			Emulator:         conn.Emulator,
		}
	}
	return out
}

// knownFloat is v for JSON, nil when unknown (NaN).
func knownFloat(v float64) *float64 {
	if math.IsNaN(v) {
		return nil
	}
	return &v
}
