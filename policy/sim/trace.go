package sim

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Point is the load during one second of a trace.
type Point struct {
	// Rate is the mean arrival rate, messages per second; arrivals in the
	// second are Poisson with this mean. >= 0.
	Rate float64
	// ProcessingTime is the mean processing time of one message. > 0.
	ProcessingTime time.Duration
	// FailureRate is the fraction of deliveries that fail, in [0, 1]. A
	// failed message is delivered again after the lock duration, and
	// dead-lettered after Scenario.DeadLetterAfter deliveries.
	FailureRate float64
}

// Trace is a load to replay, one Point per second.
type Trace struct {
	Name        string
	Description string
	Points      []Point
	// PoisonAt, when >= 0, is the second at which a message that always
	// fails arrives. The queue is then ordered (a FIFO group, a session, a
	// partition): while that message is pending nothing behind it is
	// delivered, until it is dead-lettered.
	PoisonAt int
	// Downstream, when > 0, is the capacity of a dependency every pod calls,
	// in messages per second. When the pods could process D > Downstream
	// messages per second, each message takes (D ÷ Downstream)^1.25 times
	// longer, so total throughput falls as replicas grow past saturation.
	Downstream float64
	// MaxReplicas is the maxReplicaCount this trace is meant to be run with.
	MaxReplicas int
}

// Duration of the trace.
func (t Trace) Duration() time.Duration { return time.Duration(len(t.Points)) * time.Second }

// Validate reports the first problem with a trace.
func (t Trace) Validate() error {
	if len(t.Points) == 0 {
		return fmt.Errorf("trace %q: no points", t.Name)
	}
	for i, p := range t.Points {
		switch {
		case !(p.Rate >= 0) || math.IsInf(p.Rate, 0):
			return fmt.Errorf("trace %q second %d: arrivals_per_second = %v: must be a finite number >= 0", t.Name, i, p.Rate)
		case p.ProcessingTime <= 0:
			return fmt.Errorf("trace %q second %d: processing time %v: must be > 0", t.Name, i, p.ProcessingTime)
		case !(p.FailureRate >= 0 && p.FailureRate <= 1):
			return fmt.Errorf("trace %q second %d: failure_rate = %v: must be between 0 and 1", t.Name, i, p.FailureRate)
		}
	}
	return nil
}

// Work is the processing the trace asks for, in slot-seconds: Σ rate × W.
func (t Trace) Work() float64 {
	w := 0.0
	for _, p := range t.Points {
		w += p.Rate * p.ProcessingTime.Seconds()
	}
	return w
}

// FailureFree reports whether no message of the trace ever fails.
func (t Trace) FailureFree() bool {
	if t.PoisonAt >= 0 {
		return false
	}
	for _, p := range t.Points {
		if p.FailureRate > 0 {
			return false
		}
	}
	return true
}

// build makes a trace of d seconds from a function of the second.
func build(name, desc string, d time.Duration, maxReplicas int, f func(s int) Point) Trace {
	n := int(d / time.Second)
	pts := make([]Point, n)
	for s := range pts {
		pts[s] = f(s)
	}
	return Trace{Name: name, Description: desc, Points: pts, PoisonAt: -1, MaxReplicas: maxReplicas}
}

const ms = time.Millisecond

// builtins are the built-in traces by name. Every one needs about ten pods
// at its base load (80 messages per second of 500 ms each on 4 slots per
// pod), so that whole pods are a small rounding of the work.
var builtins = map[string]func() Trace{
	"steady": func() Trace {
		return build("steady", "80 msg/s of 500 ms work for 4 hours", 4*time.Hour, 100,
			func(int) Point { return Point{Rate: 80, ProcessingTime: 500 * ms} })
	},
	"spike": func() Trace {
		// Black Friday: 100× the base load for 30 minutes, an hour in.
		return build("spike", "8 msg/s, then 800 msg/s (100×) for 30 minutes, 100 ms work", 3*time.Hour, 150,
			func(s int) Point {
				r := 8.0
				if s >= 3600 && s < 5400 {
					r = 800
				}
				return Point{Rate: r, ProcessingTime: 100 * ms}
			})
	},
	"batch": func() Trace {
		// A batch job drops 60,000 messages in the first two minutes of every hour.
		return build("batch", "40 msg/s plus 60,000 messages in 2 minutes at the top of every hour, 500 ms work", 6*time.Hour, 100,
			func(s int) Point {
				r := 40.0
				if s%3600 < 120 {
					r += 500
				}
				return Point{Rate: r, ProcessingTime: 500 * ms}
			})
	},
	"diurnal": func() Trace {
		// A day: 10% of the peak at 04:00, the peak (160 msg/s) at 16:00.
		return build("diurnal", "24 hours between 16 and 160 msg/s, peak at 16:00, 500 ms work", 24*time.Hour, 100,
			func(s int) Point {
				h := float64(s) / 3600
				x := (1 - math.Cos(2*math.Pi*(h-4)/24)) / 2
				return Point{Rate: 16 + 144*x, ProcessingTime: 500 * ms}
			})
	},
	"slow-consumer": func() Trace {
		// A release makes processing three times slower halfway through.
		return build("slow-consumer", "80 msg/s; processing time 250 ms, 750 ms (×3) after 2 hours", 4*time.Hour, 100,
			func(s int) Point {
				w := 250 * ms
				if s >= 7200 {
					w = 750 * ms
				}
				return Point{Rate: 80, ProcessingTime: w}
			})
	},
	"poison": func() Trace {
		t := build("poison", "80 msg/s of 500 ms work on an ordered queue; one message that always fails arrives at 0:30", 90*time.Minute, 100,
			func(int) Point { return Point{Rate: 80, ProcessingTime: 500 * ms} })
		t.PoisonAt = 1800
		return t
	},
	"saturation": func() Trace {
		// A downstream database serves 100 msg/s; arrivals exceed it for 20 minutes.
		return build("saturation", "60 msg/s, 150 msg/s for 20 minutes at 0:30; a downstream dependency saturates at 100 msg/s", 2*time.Hour, 100,
			func(s int) Point {
				r := 60.0
				if s >= 1800 && s < 3000 {
					r = 150
				}
				return Point{Rate: r, ProcessingTime: 500 * ms}
			}).withDownstream(100)
	},
}

func (t Trace) withDownstream(k float64) Trace { t.Downstream = k; return t }

// BuiltinNames lists the built-in traces in a stable order.
func BuiltinNames() []string {
	order := []string{"steady", "spike", "batch", "diurnal", "slow-consumer", "poison", "saturation"}
	if len(order) != len(builtins) {
		names := make([]string, 0, len(builtins))
		for n := range builtins {
			names = append(names, n)
		}
		sort.Strings(names)
		return names
	}
	return order
}

// Builtin returns a built-in trace by name.
func Builtin(name string) (Trace, error) {
	f, ok := builtins[name]
	if !ok {
		return Trace{}, fmt.Errorf("trace = %q: must be one of %s", "builtin:"+name, "builtin:"+strings.Join(BuiltinNames(), ", builtin:"))
	}
	return f(), nil
}
