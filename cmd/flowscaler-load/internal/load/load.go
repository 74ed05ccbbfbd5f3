package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Options describe one run.
type Options struct {
	// GRPCAddr is the daemon's externalscaler address.
	GRPCAddr string
	Probe    Probe
	// Objects (ScaledObjects) watch Streams distinct streams, Objects ÷
	// Streams each.
	Objects int
	Streams int
	// Interval is KEDA's pollingInterval; Compression divides it into the
	// real time between two polls of one object.
	Interval    time.Duration
	Compression float64
	// Intervals are measured after Warmup intervals, which parse every
	// object and fill the daemon's state.
	Intervals int
	Warmup    int
	// HPA adds a second poller per object at its own phase: the HPA asking
	// KEDA's metrics adapter, which calls the scaler again unless the
	// trigger sets useCachedMetrics.
	HPA bool
	// SampleEvery is how many intervals apart the daemon is sampled (≥ 1).
	SampleEvery int
	// CallTimeout bounds one call, as KEDA's gRPC deadline does.
	CallTimeout time.Duration
	// Seed fixes the pollers' phases.
	Seed uint64
	// Progress, when set, gets one line per sample.
	Progress io.Writer
}

func (o Options) validate() error {
	var errs []error
	if o.GRPCAddr == "" {
		errs = append(errs, errors.New(`addr = "": required`))
	}
	if o.Streams < 1 {
		errs = append(errs, fmt.Errorf("streams = %d: must be at least 1", o.Streams))
	}
	if o.Objects < o.Streams {
		errs = append(errs, fmt.Errorf("objects = %d: must be at least streams (%d)", o.Objects, o.Streams))
	}
	if o.Interval <= 0 {
		errs = append(errs, fmt.Errorf("interval = %q: must be positive", o.Interval))
	}
	if o.Compression < 1 {
		errs = append(errs, fmt.Errorf("compression = %g: must be at least 1", o.Compression))
	}
	if o.Intervals < 1 {
		errs = append(errs, fmt.Errorf("intervals = %d: must be at least 1", o.Intervals))
	}
	if o.Warmup < 0 {
		errs = append(errs, fmt.Errorf("warmup = %d: must not be negative", o.Warmup))
	}
	if o.SampleEvery < 1 {
		errs = append(errs, fmt.Errorf("sample-every = %d: must be at least 1", o.SampleEvery))
	}
	if o.CallTimeout <= 0 {
		errs = append(errs, fmt.Errorf("call-timeout = %q: must be positive", o.CallTimeout))
	}
	return errors.Join(errs...)
}

// RealInterval is the wall-clock time between two polls of one object.
func (o Options) RealInterval() time.Duration {
	return time.Duration(float64(o.Interval) / o.Compression)
}

// Methods are the calls of one poll, in KEDA's order: the scale loop asks
// for the spec, then GetMetricsAndActivity calls GetMetrics and IsActive.
var Methods = []string{"GetMetricSpec", "GetMetrics", "IsActive"}

type counters struct {
	calls  [3]atomic.Int64 // by Methods index, measured intervals only
	errors [3]atomic.Int64
	// late are polls that started more than a tenth of an interval after
	// their slot: the client or the daemon could not keep up.
	late     atomic.Int64
	firstErr atomic.Pointer[string]
}

// Run polls the daemon as KEDA would and measures it. Every object has its
// own timer, as KEDA's per-ScaledObject scale loops do: a fixed period and
// a phase drawn at random over the interval, so the polls of the objects of
// one stream are spread over the interval rather than aligned.
func Run(ctx context.Context, o Options) (Report, error) {
	if err := o.validate(); err != nil {
		return Report{}, err
	}
	conn, err := grpc.NewClient(o.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return Report{}, err
	}
	defer conn.Close()
	client := pb.NewExternalScalerClient(conn)

	refs := Objects(o.Objects, o.Streams)
	pollers := len(refs)
	if o.HPA {
		pollers *= 2
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0))
	ri := o.RealInterval()
	phases := make([]time.Duration, pollers)
	for i := range phases {
		phases[i] = time.Duration(rng.Int64N(int64(ri)))
	}

	var hist, quiet Histogram
	var c counters
	var scrapes atomic.Int64
	o.Probe.scrapes = &scrapes
	total := o.Warmup + o.Intervals
	// A little time to start every poller before the first slot.
	start := time.Now().Add(100 * time.Millisecond)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	for i := range pollers {
		ref := refs[i%len(refs)]
		wg.Go(func() { poll(ctx, client, ref, start.Add(phases[i]), ri, total, o, &hist, &quiet, &c) })
	}

	samples, sampleErr := sample(ctx, o, start, &wg)
	if sampleErr != nil {
		cancel()
		wg.Wait()
		return Report{}, sampleErr
	}
	scrapeCost, err := o.Probe.ScrapeCost(ctx)
	if err != nil {
		return Report{}, err
	}
	return newReport(o, samples, scrapeCost, &hist, &quiet, &c), nil
}

// poll is one object's scale loop.
// Its GetMetrics latencies go to hist, and also to quiet when no scrape of
// the probe overlapped the call.
func poll(ctx context.Context, client pb.ExternalScalerClient, ref *pb.ScaledObjectRef, first time.Time, ri time.Duration, total int, o Options, hist, quiet *Histogram, c *counters) {
	timer := time.NewTimer(time.Until(first))
	defer timer.Stop()
	req := &pb.GetMetricsRequest{ScaledObjectRef: ref, MetricName: "s0-" + ref.Name}
	for k := range total {
		slot := first.Add(time.Duration(k) * ri)
		timer.Reset(time.Until(slot))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		measured := k >= o.Warmup
		if measured && time.Since(slot) > ri/10 {
			c.late.Add(1)
		}
		call := func(m int, f func(context.Context) error) {
			cctx, cancel := context.WithTimeout(ctx, o.CallTimeout)
			defer cancel()
			scrapesBefore := o.Probe.scrapes.Load()
			t0 := time.Now()
			err := f(cctx)
			if m == 1 && measured && err == nil {
				d := time.Since(t0)
				hist.Record(d)
				if scrapesBefore%2 == 0 && o.Probe.scrapes.Load() == scrapesBefore {
					quiet.Record(d)
				}
			}
			if !measured {
				return
			}
			c.calls[m].Add(1)
			if err != nil && ctx.Err() == nil {
				c.errors[m].Add(1)
				msg := fmt.Sprintf("%s %s/%s: %v", Methods[m], ref.Namespace, ref.Name, err)
				c.firstErr.CompareAndSwap(nil, &msg)
			}
		}
		call(0, func(ctx context.Context) error { _, err := client.GetMetricSpec(ctx, ref); return err })
		call(1, func(ctx context.Context) error { _, err := client.GetMetrics(ctx, req); return err })
		call(2, func(ctx context.Context) error { _, err := client.IsActive(ctx, ref); return err })
	}
}

// sample takes a snapshot at the start of the first measured interval,
// every SampleEvery intervals after it, and once every poller is done.
func sample(ctx context.Context, o Options, start time.Time, pollers *sync.WaitGroup) ([]Sample, error) {
	done := make(chan struct{})
	go func() { pollers.Wait(); close(done) }()
	ri := o.RealInterval()
	var out []Sample
	take := func(interval int) error {
		s, err := o.Probe.Take(ctx)
		if err != nil {
			return err
		}
		out = append(out, Sample{Interval: interval, Snapshot: s})
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "interval %d/%d: rss %.1f MB, goroutines %d, cpu %.1fs, reads %.0f\n",
				interval, o.Intervals, float64(s.RSS)/(1<<20), s.Goroutines, s.CPU.Seconds(), s.Reads)
		}
		return nil
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for k := 0; k < o.Intervals; k += o.SampleEvery {
		timer.Reset(time.Until(start.Add(time.Duration(o.Warmup+k) * ri)))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
		}
		if err := take(k); err != nil {
			return nil, err
		}
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-done:
	}
	if err := take(o.Intervals); err != nil {
		return nil, err
	}
	return out, nil
}
