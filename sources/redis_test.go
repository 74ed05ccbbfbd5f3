package sources

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/sources/redistest"
)

const testConn = "local"

func newTestRedis(t testing.TB, url string, opts RedisOptions) *Redis {
	t.Helper()
	r := NewRedis(opts)
	if err := r.SetConnections(map[string]RedisConnection{testConn: {URL: url}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func serverTime(t testing.TB, ctx context.Context, c *redis.Client) time.Time {
	t.Helper()
	now, err := c.Time(ctx).Result()
	check(t, err)
	return now
}

func clientOf(t testing.TB, r *Redis, name string) *redis.Client {
	t.Helper()
	c, err := r.client(name)
	check(t, err)
	return c
}

func TestRedisList(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := testCtx(t)
	check(t, c.RPush(ctx, "jobs", "a", "b", "c").Err())
	r := newTestRedis(t, srv.URL(), RedisOptions{Now: func() time.Time { return time.Unix(1234, 0) }})

	for _, tc := range []struct {
		name string
		key  string
		want float64
	}{
		{name: "three items", key: "jobs", want: 3},
		// Redis deletes an emptied list, so a missing list really is empty.
		{name: "missing key is empty", key: "no-such-list", want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Read(ctx, Query{Kind: RedisList, Connection: testConn, Name: tc.key})
			if err != nil {
				t.Fatal(err)
			}
			want := Reading{
				At:                time.Unix(1234, 0),
				Depth:             tc.want,
				OldestAge:         -1,
				OldestPendingIdle: -1,
				ProducedTotal:     math.NaN(),
				ConsumedTotal:     math.NaN(),
				DeadLetter:        math.NaN(),
				Scheduled:         math.NaN(),
			}
			if d := cmp.Diff(want, got, cmpopts.EquateNaNs()); d != "" {
				t.Errorf("reading (-want +got):\n%s", d)
			}
		})
	}
}

func TestRedisQueryErrors(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := testCtx(t)
	check(t, c.Set(ctx, "plain-string", "x", 0).Err())
	r := newTestRedis(t, srv.URL(), RedisOptions{})

	for _, tc := range []struct {
		name     string
		q        Query
		is       error
		contains []string
	}{
		{
			name:     "unknown connection",
			q:        Query{Kind: RedisList, Connection: "nope", Name: "jobs"},
			is:       ErrUnknownConnection,
			contains: []string{`"nope"`, "not configured"},
		},
		{
			name:     "stream without group",
			q:        Query{Kind: RedisStream, Connection: testConn, Name: "s"},
			contains: []string{"group is required"},
		},
		{
			name:     "not a redis kind",
			q:        Query{Kind: "kafka-topic", Connection: testConn, Name: "t"},
			contains: []string{`"kafka-topic"`},
		},
		{
			name:     "list read of a string key",
			q:        Query{Kind: RedisList, Connection: testConn, Name: "plain-string"},
			contains: []string{"LLEN", "WRONGTYPE", "plain-string"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Read(ctx, tc.q)
			if err == nil {
				t.Fatalf("Read = %+v, want an error", got)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			for _, s := range tc.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// streamEnv is what a stream case's setup works with.
type streamEnv struct {
	t    *testing.T
	ctx  context.Context
	c    *redis.Client
	key  string
	base int64 // ms timestamp of entry 0, an hour before the server's clock
}

// id is entry i's ID: one second apart, all in the past.
func (e streamEnv) id(i int) string { return fmt.Sprintf("%d-0", e.ms(i)) }
func (e streamEnv) ms(i int) int64  { return e.base + int64(i)*1000 }

func (e streamEnv) add(from, to int) {
	e.t.Helper()
	for i := from; i <= to; i++ {
		check(e.t, e.c.XAdd(e.ctx, &redis.XAddArgs{Stream: e.key, ID: e.id(i), Values: []string{"n", strconv.Itoa(i)}}).Err())
	}
}

func (e streamEnv) do(args ...any) any {
	e.t.Helper()
	v, err := e.c.Do(e.ctx, args...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		e.t.Fatalf("%v: %v", args, err)
	}
	return v
}

// groupField reads one field of group g from XINFO GROUPS, to check that a
// case really puts Redis in the state it claims to test.
func (e streamEnv) groupField(group, field string) any {
	e.t.Helper()
	g, found, err := findGroupRaw(e.do("XINFO", "GROUPS", e.key), group)
	if err != nil || !found {
		e.t.Fatalf("XINFO GROUPS: found=%v err=%v", found, err)
	}
	return g[field]
}

func findGroupRaw(reply any, name string) (map[string]any, bool, error) {
	groups, _ := reply.([]any)
	for _, raw := range groups {
		m, err := replyMap(raw)
		if err != nil {
			return nil, false, err
		}
		if m["name"] == name {
			return m, true, nil
		}
	}
	return nil, false, nil
}

func TestRedisStream(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)

	const none = -1 // oldest: nothing undelivered
	for _, tc := range []struct {
		name  string
		opts  RedisOptions
		setup func(e streamEnv)
		// want is compared with At, OldestAge and OldestPendingIdle zeroed;
		// those are checked against oldest and pendingIdle.
		want Reading
		// oldest is the index of the first undelivered entry, or none.
		oldest int
		// pendingIdle is the least OldestPendingIdle can be; -1 when nothing
		// is pending. The most is that plus the time the case took.
		pendingIdle time.Duration
	}{
		{
			name: "group at $ is caught up",
			setup: func(e streamEnv) {
				e.add(0, 2)
				e.do("XGROUP", "CREATE", e.key, "g", "$")
			},
			want:        Reading{ProducedTotal: 3, ConsumedTotal: 3},
			oldest:      none,
			pendingIdle: -1,
		},
		{
			name: "group at $ then new entries",
			setup: func(e streamEnv) {
				e.add(0, 2)
				e.do("XGROUP", "CREATE", e.key, "g", "$")
				e.add(3, 4)
			},
			want:        Reading{Depth: 2, ProducedTotal: 5, ConsumedTotal: 3},
			oldest:      3,
			pendingIdle: -1,
		},
		{
			name: "empty stream made by the group",
			setup: func(e streamEnv) {
				e.do("XGROUP", "CREATE", e.key, "g", "$", "MKSTREAM")
			},
			want:        Reading{ProducedTotal: 0, ConsumedTotal: 0},
			oldest:      none,
			pendingIdle: -1,
		},
		{
			name: "group at 0 has read nothing",
			setup: func(e streamEnv) {
				e.add(0, 2)
				e.do("XGROUP", "CREATE", e.key, "g", "0")
			},
			want:        Reading{Depth: 3, ProducedTotal: 3, ConsumedTotal: 0},
			oldest:      0,
			pendingIdle: -1,
		},
		{
			name: "read but not acked",
			setup: func(e streamEnv) {
				e.add(0, 3)
				e.do("XGROUP", "CREATE", e.key, "g", "0")
				e.do("XREADGROUP", "GROUP", "g", "c1", "COUNT", 2, "STREAMS", e.key, ">")
				if e.groupField("g", "lag") == nil || e.groupField("g", "entries-read") == nil {
					e.t.Fatal("precondition: Redis should report lag and entries-read here")
				}
			},
			want:        Reading{Depth: 2, InFlight: 2, MaxDeliveries: 1, ProducedTotal: 4, ConsumedTotal: 2},
			oldest:      2,
			pendingIdle: 0,
		},
		{
			name: "one of two acked",
			setup: func(e streamEnv) {
				e.add(0, 3)
				e.do("XGROUP", "CREATE", e.key, "g", "0")
				e.do("XREADGROUP", "GROUP", "g", "c1", "COUNT", 2, "STREAMS", e.key, ">")
				e.do("XACK", e.key, "g", e.id(0))
			},
			want:        Reading{Depth: 2, InFlight: 1, MaxDeliveries: 1, ProducedTotal: 4, ConsumedTotal: 2},
			oldest:      2,
			pendingIdle: 0,
		},
		{
			name: "all read and acked",
			setup: func(e streamEnv) {
				e.add(0, 2)
				e.do("XGROUP", "CREATE", e.key, "g", "0")
				e.do("XREADGROUP", "GROUP", "g", "c1", "STREAMS", e.key, ">")
				e.do("XACK", e.key, "g", e.id(0), e.id(1), e.id(2))
			},
			want:        Reading{ProducedTotal: 3, ConsumedTotal: 3},
			oldest:      none,
			pendingIdle: -1,
		},
		{
			name: "claimed entry counts a second delivery",
			setup: func(e streamEnv) {
				e.add(0, 2)
				e.do("XGROUP", "CREATE", e.key, "g", "0")
				e.do("XREADGROUP", "GROUP", "g", "c1", "COUNT", 2, "STREAMS", e.key, ">")
				// IDLE sets the entry's idle time, so the reading's idle
				// has a known lower bound.
				e.do("XCLAIM", e.key, "g", "c2", 0, e.id(0), "IDLE", 30000)
			},
			want:        Reading{Depth: 1, InFlight: 2, MaxDeliveries: 2, ProducedTotal: 3, ConsumedTotal: 2},
			oldest:      2,
			pendingIdle: 30 * time.Second,
		},
		{
			name: "deleted undelivered entry makes lag nil",
			setup: func(e streamEnv) {
				e.add(0, 4)
				e.do("XGROUP", "CREATE", e.key, "g", "0")
				e.do("XREADGROUP", "GROUP", "g", "c1", "COUNT", 1, "STREAMS", e.key, ">")
				e.do("XDEL", e.key, e.id(1))
				if lag := e.groupField("g", "lag"); lag != nil {
					e.t.Fatalf("precondition: lag = %v, want nil so the fallback runs", lag)
				}
			},
			// Entries 2, 3 and 4 are waiting; 1 was deleted before delivery.
			want:        Reading{Depth: 3, InFlight: 1, MaxDeliveries: 1, ProducedTotal: 5, ConsumedTotal: 1},
			oldest:      2,
			pendingIdle: 0,
		},
		{
			name: "fallback scan capped by LagScanLimit",
			opts: RedisOptions{LagScanLimit: 3},
			setup: func(e streamEnv) {
				e.add(0, 9)
				e.do("XGROUP", "CREATE", e.key, "g", "0")
				e.do("XREADGROUP", "GROUP", "g", "c1", "COUNT", 1, "STREAMS", e.key, ">")
				e.do("XDEL", e.key, e.id(5))
			},
			// 8 are waiting, the scan stops at 3.
			want:        Reading{Depth: 3, DepthCapped: true, InFlight: 1, MaxDeliveries: 1, ProducedTotal: 10, ConsumedTotal: 1},
			oldest:      1,
			pendingIdle: 0,
		},
		{
			name: "capped scan without entries-read leaves consumed unknown",
			opts: RedisOptions{LagScanLimit: 3},
			setup: func(e streamEnv) {
				e.add(0, 1)
				e.do("XGROUP", "CREATE", e.key, "g", "$")
				e.add(2, 9)
				if er := e.groupField("g", "entries-read"); er != nil {
					e.t.Fatalf("precondition: entries-read = %v, want nil", er)
				}
			},
			want:        Reading{Depth: 3, DepthCapped: true, ProducedTotal: 10, ConsumedTotal: math.NaN()},
			oldest:      2,
			pendingIdle: -1,
		},
		{
			name: "scan that fits under the limit is exact",
			opts: RedisOptions{LagScanLimit: 3},
			setup: func(e streamEnv) {
				e.add(0, 1)
				e.do("XGROUP", "CREATE", e.key, "g", "$")
				e.add(2, 3)
			},
			want:        Reading{Depth: 2, ProducedTotal: 4, ConsumedTotal: 2},
			oldest:      2,
			pendingIdle: -1,
		},
	} {
		// Both protocols: go-redis hands raw replies over as RESP2 arrays or
		// RESP3 maps, and a connection URL may pick either.
		for _, proto := range []string{"2", "3"} {
			t.Run(tc.name+"/resp"+proto, func(t *testing.T) {
				ctx := testCtx(t)
				key := strings.NewReplacer(" ", "-", "$", "dollar").Replace(tc.name) + "-resp" + proto
				start := serverTime(t, ctx, c)
				e := streamEnv{t: t, ctx: ctx, c: c, key: key, base: start.Add(-time.Hour).UnixMilli()}
				tc.setup(e)

				r := newTestRedis(t, srv.URL()+"?protocol="+proto, tc.opts)
				q := Query{Kind: RedisStream, Connection: testConn, Name: key, Group: "g"}
				before := serverTime(t, ctx, c)
				got, err := r.Read(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				after := serverTime(t, ctx, c)

				if tc.oldest == none {
					if got.OldestAge != 0 {
						t.Errorf("OldestAge = %v, want 0 with nothing undelivered", got.OldestAge)
					}
				} else {
					// The reader takes the server's TIME during the read.
					idTime := time.UnixMilli(e.ms(tc.oldest))
					lo, hi := before.Sub(idTime), after.Sub(idTime)
					if got.OldestAge < lo || got.OldestAge > hi {
						t.Errorf("OldestAge = %v, want within [%v, %v]", got.OldestAge, lo, hi)
					}
				}
				if tc.pendingIdle < 0 {
					if got.OldestPendingIdle != -1 {
						t.Errorf("OldestPendingIdle = %v, want -1", got.OldestPendingIdle)
					}
				} else {
					// Redis reports idle in whole ms; pad by one for rounding.
					hi := tc.pendingIdle + after.Sub(start) + time.Millisecond
					if got.OldestPendingIdle < tc.pendingIdle || got.OldestPendingIdle > hi {
						t.Errorf("OldestPendingIdle = %v, want within [%v, %v]", got.OldestPendingIdle, tc.pendingIdle, hi)
					}
				}
				if got.At.IsZero() {
					t.Error("At is zero")
				}
				got.At, got.OldestAge, got.OldestPendingIdle = time.Time{}, 0, 0
				// Redis knows no dead letters or scheduled messages.
				tc.want.DeadLetter, tc.want.Scheduled = math.NaN(), math.NaN()
				if d := cmp.Diff(tc.want, got, cmpopts.EquateNaNs()); d != "" {
					t.Errorf("reading (-want +got):\n%s", d)
				}
			})
		}
	}
}

func TestRedisStreamMissing(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := testCtx(t)
	check(t, c.XGroupCreateMkStream(ctx, "orders", "workers", "$").Err())
	r := newTestRedis(t, srv.URL(), RedisOptions{})

	for _, tc := range []struct {
		name     string
		q        Query
		is       error
		contains []string
	}{
		{
			name:     "missing stream",
			q:        Query{Kind: RedisStream, Connection: testConn, Name: "no-such-stream", Group: "workers"},
			is:       ErrStreamNotFound,
			contains: []string{`"no-such-stream"`, "workers"},
		},
		{
			name:     "missing group",
			q:        Query{Kind: RedisStream, Connection: testConn, Name: "orders", Group: "no-such-group"},
			is:       ErrGroupNotFound,
			contains: []string{`"orders"`, `"no-such-group"`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Read(ctx, tc.q)
			if err == nil {
				t.Fatalf("Read = %+v, want an error (a missing stream or group is not an empty one)", got)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			for _, s := range tc.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %s", err, s)
				}
			}
		})
	}
}

func TestRedisOutageAndRecovery(t *testing.T) {
	srv := redistest.Start(t)
	r := newTestRedis(t, srv.URL(), RedisOptions{})
	q := Query{Kind: RedisList, Connection: testConn, Name: "jobs"}
	read := func() (Reading, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return r.Read(ctx, q)
	}

	if _, err := read(); err != nil {
		t.Fatalf("before the outage: %v", err)
	}

	srv.Stop()
	got, err := read()
	if err == nil {
		t.Fatalf("during the outage Read = %+v, want an error", got)
	}
	if got != (Reading{}) {
		t.Errorf("during the outage Read returned a reading %+v with its error", got)
	}
	t.Logf("outage error: %v", err)
	// A stream read must fail as an outage, not as a missing stream.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.Read(ctx, Query{Kind: RedisStream, Connection: testConn, Name: "s", Group: "g"}); err == nil ||
		errors.Is(err, ErrStreamNotFound) || errors.Is(err, ErrGroupNotFound) {
		t.Errorf("stream read during the outage: %v, want a connection error", err)
	}
	// Enough failed reads to trip go-redis's dial circuit breaker (PoolSize
	// failures), which would otherwise fail reads for up to a second after
	// Redis returns.
	for range 100 {
		if _, err := read(); err == nil {
			t.Fatal("a read succeeded during the outage")
		}
	}

	srv.Start()
	// The restarted server lost its data (no persistence).
	check(t, srv.Client(t).RPush(testCtx(t), "jobs", "a", "b").Err())
	got, err = read()
	if err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if got.Depth != 2 {
		t.Errorf("after recovery Depth = %v, want 2", got.Depth)
	}
}

func TestRedisReadHonoursDeadline(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	r := newTestRedis(t, srv.URL(), RedisOptions{})

	// Freeze the server so the read can only end through its deadline. The
	// pause lifts by itself; nothing else uses this server.
	const pause = 3 * time.Second
	check(t, c.Do(testCtx(t), "CLIENT", "PAUSE", pause.Milliseconds(), "ALL").Err())

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.Read(ctx, Query{Kind: RedisList, Connection: testConn, Name: "jobs"})
	if err == nil {
		t.Fatal("Read on a paused server succeeded")
	}
	// Loose on purpose: only "ended by ctx, not by the pause" matters.
	if elapsed := time.Since(start); elapsed >= pause {
		t.Errorf("Read returned after %v, not at its 100ms deadline: %v", elapsed, err)
	}
}

func TestRedisSetConnections(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testCtx(t)
	r := NewRedis(RedisOptions{})
	t.Cleanup(func() { _ = r.Close() })

	initial := map[string]RedisConnection{
		"keep":   {URL: srv.URL()},
		"change": {URL: srv.URL()},
		"remove": {URL: srv.URL() + "/1"},
	}
	if err := r.SetConnections(initial); err != nil {
		t.Fatal(err)
	}
	before := map[string]*redis.Client{}
	for name := range initial {
		before[name] = clientOf(t, r, name)
		if err := before[name].Ping(ctx).Err(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}

	reload := map[string]RedisConnection{
		"keep":   {URL: srv.URL()},
		"change": {URL: srv.URL() + "/2"},
		"add":    {URL: srv.URL()},
	}
	if err := r.SetConnections(reload); err != nil {
		t.Fatal(err)
	}

	if got := clientOf(t, r, "keep"); got != before["keep"] {
		t.Error("unchanged connection got a new client")
	}
	if st := before["keep"].PoolStats(); st.TotalConns == 0 {
		t.Errorf("unchanged connection lost its pooled connections: %+v", st)
	}
	if err := before["keep"].Ping(ctx).Err(); err != nil {
		t.Errorf("unchanged connection's client: %v", err)
	}
	if got := clientOf(t, r, "change"); got == before["change"] {
		t.Error("changed connection kept its old client")
	}
	for _, name := range []string{"change", "remove"} {
		if err := before[name].Ping(ctx).Err(); !errors.Is(err, redis.ErrClosed) {
			t.Errorf("old client of %q: Ping = %v, want it closed", name, err)
		}
	}
	if _, err := r.client("remove"); !errors.Is(err, ErrUnknownConnection) {
		t.Errorf("removed connection: %v, want ErrUnknownConnection", err)
	}
	if _, err := r.Read(ctx, Query{Kind: RedisList, Connection: "add", Name: "x"}); err != nil {
		t.Errorf("added connection: %v", err)
	}
}

func TestRedisSetConnectionsBadURL(t *testing.T) {
	srv := redistest.Start(t)
	const (
		urlSecret      = "s3cr3t-in-url"
		overrideSecret = "0verride-s3cr3t"
	)
	for _, tc := range []struct {
		name string
		conn RedisConnection
	}{
		{name: "bad port", conn: RedisConnection{URL: "redis://user:" + urlSecret + "@host:notaport/0"}},
		{name: "bad port with override", conn: RedisConnection{URL: "redis://user:" + urlSecret + "@host:notaport/0", Password: overrideSecret}},
		{name: "bad scheme", conn: RedisConnection{URL: "http://user:" + urlSecret + "@host:6379", Password: overrideSecret}},
		{name: "bad database", conn: RedisConnection{URL: "redis://:" + urlSecret + "@host:6379/notadb"}},
		{name: "bad escape", conn: RedisConnection{URL: "redis://user:" + urlSecret + "%zz@host"}},
		{name: "control character", conn: RedisConnection{URL: "redis://user:" + urlSecret + "\n@host"}},
		{name: "unknown option", conn: RedisConnection{URL: "redis://user:" + urlSecret + "@host/?nosuch=" + urlSecret}},
		{name: "empty", conn: RedisConnection{Password: overrideSecret}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRedis(RedisOptions{})
			t.Cleanup(func() { _ = r.Close() })
			if err := r.SetConnections(map[string]RedisConnection{"good": {URL: srv.URL()}}); err != nil {
				t.Fatal(err)
			}
			good := clientOf(t, r, "good")

			err := r.SetConnections(map[string]RedisConnection{
				"good":       {URL: srv.URL()},
				"other-good": {URL: srv.URL()},
				"broken":     tc.conn,
			})
			if err == nil {
				t.Fatal("SetConnections accepted a bad URL")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), `"broken"`) {
				t.Errorf("error %q does not name the connection", err)
			}
			for _, secret := range []string{urlSecret, overrideSecret} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q leaks a password", err)
				}
			}
			// All or nothing: the working set stays.
			if got := clientOf(t, r, "good"); got != good {
				t.Error("failed reload replaced a working client")
			}
			if _, err := r.client("other-good"); !errors.Is(err, ErrUnknownConnection) {
				t.Errorf("failed reload still added a connection: %v", err)
			}
		})
	}
}

func TestRedisWrongPasswordNotLeaked(t *testing.T) {
	srv := redistest.Start(t)
	const secret = "wr0ng-s3cr3t"
	// Redis' default user accepts any password until one is required.
	check(t, srv.Client(t).ConfigSet(testCtx(t), "requirepass", "the-right-one").Err())
	r := NewRedis(RedisOptions{})
	t.Cleanup(func() { _ = r.Close() })
	if err := r.SetConnections(map[string]RedisConnection{testConn: {URL: srv.URL(), Password: secret}}); err != nil {
		t.Fatal(err)
	}
	_, err := r.Read(testCtx(t), Query{Kind: RedisList, Connection: testConn, Name: "jobs"})
	if err == nil {
		t.Fatal("Read with a password the server does not expect succeeded")
	}
	t.Logf("error: %v", err)
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error %q leaks the password", err)
	}
}

func TestRedisConnectionRedacts(t *testing.T) {
	const urlSecret, pwSecret = "url-s3cr3t", "pw-s3cr3t"
	conns := []RedisConnection{
		{URL: "redis://user:" + urlSecret + "@host:6379/0", Password: pwSecret},
		{URL: "redis://user:" + urlSecret + "@host:bad/0", Password: pwSecret},
	}
	for _, c := range conns {
		var logged bytes.Buffer
		slog.New(slog.NewJSONHandler(&logged, nil)).Info("conn", "redis", c)
		out := fmt.Sprintf("%v %+v %s %#v", c, c, c, c) + logged.String()
		for _, s := range []string{urlSecret, pwSecret} {
			if strings.Contains(out, s) {
				t.Errorf("secret %q printed in %s", s, out)
			}
		}
		if !strings.Contains(out, "host") {
			t.Errorf("redacted form lost the host: %s", out)
		}
	}
}

func TestRedisConcurrentReloadAndRead(t *testing.T) {
	srv := redistest.Start(t)
	r := newTestRedis(t, srv.URL(), RedisOptions{})
	ctx := testCtx(t)
	q := Query{Kind: RedisList, Connection: testConn, Name: "jobs"}

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				// Errors are expected while a client is being replaced;
				// this test is for the race detector and for panics.
				_, _ = r.Read(ctx, q)
			}
		})
	}
	for i := range 20 {
		if err := r.SetConnections(map[string]RedisConnection{testConn: {URL: srv.URL() + "/" + strconv.Itoa(i%3)}}); err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
	if _, err := r.Read(ctx, q); err != nil {
		t.Errorf("after reloads: %v", err)
	}
}

func TestRedisClosed(t *testing.T) {
	srv := redistest.Start(t)
	r := NewRedis(RedisOptions{})
	if err := r.SetConnections(map[string]RedisConnection{testConn: {URL: srv.URL()}}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(testCtx(t), Query{Kind: RedisList, Connection: testConn, Name: "x"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
	if err := r.SetConnections(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("SetConnections after Close: %v, want ErrClosed", err)
	}
}
