package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Probe reads what the daemon uses and does.
type Probe struct {
	// PID is the daemon's process, read from /proc; 0 falls back to the
	// daemon's own process_cpu_seconds_total and process_resident_memory_bytes
	// (a daemon on another machine).
	PID int
	// MetricsURL is the daemon's /metrics.
	MetricsURL string
	// Redis, when set, counts the reads Redis itself served (INFO
	// commandstats), a check on the daemon's own count.
	Redis *redis.Client
	HTTP  *http.Client
	// scrapes counts the starts and ends of scrapes: odd while one runs.
	// Calls that overlap a scrape are told apart from the others.
	scrapes *atomic.Int64
}

// Snapshot is the daemon's cumulative counters and current sizes at one moment.
type Snapshot struct {
	At         time.Time
	CPU        time.Duration // user + system time since the daemon started, read before this scrape
	RSS        int64         // resident set, bytes
	Goroutines int
	// Reads are the daemon's reads of Redis streams
	// (flowscaler_source_read_duration_seconds_count): real reads, after
	// the shared read cache.
	Reads float64
	// RedisReads are the XINFO GROUPS commands Redis served: every stream
	// read sends exactly one. -1 without a Redis client.
	RedisReads int64
	// ServerBuckets is the daemon's own GetMetrics latency histogram
	// (flowscaler_grpc_request_duration_seconds): cumulative counts by
	// upper bound in seconds. It times the handler alone, without the
	// transport and the client, so it tells a slow daemon from a slow
	// client or a busy machine.
	ServerBuckets map[float64]float64 `json:"-"`
}

// clockTicks is Linux's USER_HZ, the unit of utime and stime in
// /proc/PID/stat: 100 on every architecture Go supports.
const clockTicks = 100

// Take reads one Snapshot.
func (p Probe) Take(ctx context.Context) (Snapshot, error) {
	s := Snapshot{At: time.Now(), RedisReads: -1}
	var err error
	if p.PID > 0 {
		if s.CPU, err = procCPU(p.PID); err != nil {
			return s, err
		}
		if s.RSS, err = procRSS(p.PID); err != nil {
			return s, err
		}
	}
	// Redis first: the scrape takes long enough at 10,000 objects for
	// hundreds of reads to happen during it.
	if p.Redis != nil {
		if s.RedisReads, err = xinfoGroupsCalls(ctx, p.Redis); err != nil {
			return s, err
		}
	}
	m, err := p.scrape(ctx)
	if err != nil {
		return s, err
	}
	s.Goroutines = int(m["go_goroutines"])
	s.Reads = m[readsSeries]
	s.ServerBuckets = map[float64]float64{}
	for k, v := range m {
		if le, ok := strings.CutPrefix(k, bucketPrefix); ok {
			b, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return s, fmt.Errorf("metrics: bucket le=%q: %w", le, err)
			}
			s.ServerBuckets[b] = v
		}
	}
	if p.PID <= 0 {
		s.CPU = time.Duration(m["process_cpu_seconds_total"] * float64(time.Second))
		s.RSS = int64(m["process_resident_memory_bytes"])
	}
	return s, nil
}

// ScrapeCost is the daemon's CPU time for one /metrics scrape, measured
// while nothing else runs (0 without a PID): scrapes during a run are
// subtracted from the CPU the calls cost at this price.
func (p Probe) ScrapeCost(ctx context.Context) (time.Duration, error) {
	if p.PID <= 0 {
		return 0, nil
	}
	before, err := procCPU(p.PID)
	if err != nil {
		return 0, err
	}
	if _, err := p.scrape(ctx); err != nil {
		return 0, err
	}
	after, err := procCPU(p.PID)
	if err != nil {
		return 0, err
	}
	return after - before, nil
}

// bucketPrefix starts the keys scrape gives the buckets of the daemon's
// GetMetrics latency, followed by the bucket's le.
const bucketPrefix = "GetMetrics le="

// readsSeries is the key scrape gives the sum of stream reads over all connections.
const readsSeries = `flowscaler_source_read_duration_seconds_count{kind="redis-stream"}`

// scrape reads the few series the probe needs from the daemon's /metrics
// text: go_goroutines, the process_* series and, summed over connections,
// the stream reads.
func (p Probe) scrape(ctx context.Context) (map[string]float64, error) {
	if p.scrapes != nil {
		p.scrapes.Add(1)
		defer p.scrapes.Add(1)
	}
	c := p.HTTP
	if c == nil {
		c = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.MetricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", p.MetricsURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping %s: %s", p.MetricsURL, resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var key string
		switch {
		case strings.HasPrefix(line, "go_goroutines "), strings.HasPrefix(line, "process_cpu_seconds_total "),
			strings.HasPrefix(line, "process_resident_memory_bytes "):
			key = line[:strings.IndexByte(line, ' ')]
		case strings.HasPrefix(line, "flowscaler_source_read_duration_seconds_count{") && strings.Contains(line, `kind="redis-stream"`):
			key = readsSeries
		case strings.HasPrefix(line, "flowscaler_grpc_request_duration_seconds_bucket{") && strings.Contains(line, `method="GetMetrics"`):
			_, le, ok := strings.Cut(line, `le="`)
			if !ok {
				continue
			}
			le, _, _ = strings.Cut(le, `"`)
			key = bucketPrefix + le
		default:
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[key] += v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if _, ok := out["go_goroutines"]; !ok {
		return nil, errors.New("metrics: no go_goroutines series")
	}
	return out, nil
}

// procCPU is utime + stime of pid. The fields are counted after the
// command name's closing parenthesis, which may itself contain spaces.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc stat %q: no command name", stat)
	}
	// After ") ": state is field 3, utime field 14 and stime field 15.
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat: %d fields after the command name: want at least 13", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc stat: %w", err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// procRSS is VmRSS of pid, in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return parseStatusRSS(string(b))
}

func parseStatusRSS(status string) (int64, error) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("/proc status VmRSS = %q: want \"N kB\"", strings.TrimSpace(rest))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc status VmRSS: %w", err)
		}
		return kb << 10, nil
	}
	return 0, errors.New("/proc status: no VmRSS line")
}

// xinfoGroupsCalls is how many XINFO GROUPS commands Redis has served.
func xinfoGroupsCalls(ctx context.Context, c *redis.Client) (int64, error) {
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, fmt.Errorf("redis INFO commandstats: %w", err)
	}
	return parseXinfoGroupsCalls(info)
}

func parseXinfoGroupsCalls(info string) (int64, error) {
	for line := range strings.Lines(info) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_xinfo|groups:")
		if !ok {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				return strconv.ParseInt(v, 10, 64)
			}
		}
		return 0, fmt.Errorf("redis INFO commandstats: %q has no calls=", line)
	}
	// Not called yet.
	return 0, nil
}
