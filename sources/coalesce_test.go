package sources

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowscaler/flowscaler/sources/redistest"
)

// countingReader counts the reads that reach the Reader it wraps.
type countingReader struct {
	next Reader
	n    atomic.Int64
}

func (c *countingReader) Read(ctx context.Context, q Query) (Reading, error) {
	c.n.Add(1)
	return c.next.Read(ctx, q)
}

// gatedReader holds every read until release is closed, and hands the
// context each read got to entered.
type gatedReader struct {
	next    Reader
	entered chan context.Context
	release chan struct{}
}

func newGatedReader(next Reader) *gatedReader {
	return &gatedReader{next: next, entered: make(chan context.Context, 100), release: make(chan struct{})}
}

func (g *gatedReader) Read(ctx context.Context, q Query) (Reading, error) {
	g.entered <- ctx
	<-g.release
	return g.next.Read(ctx, q)
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// coalesceFixture is a real Redis with lists "a" (3 items) and "b" (1 item)
// behind a counting reader.
func coalesceFixture(t testing.TB) (*countingReader, Query, Query) {
	t.Helper()
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := testCtx(t)
	check(t, c.RPush(ctx, "a", 1, 2, 3).Err())
	check(t, c.RPush(ctx, "b", 1).Err())
	r := newTestRedis(t, srv.URL(), RedisOptions{})
	return &countingReader{next: r},
		Query{Kind: RedisList, Connection: testConn, Name: "a"},
		Query{Kind: RedisList, Connection: testConn, Name: "b"}
}

func TestCoalesceConcurrentReadsShareOne(t *testing.T) {
	counter, qa, _ := coalesceFixture(t)
	gate := newGatedReader(counter)
	clock := &fakeClock{now: time.Unix(1000, 0)}
	r := Coalesce(gate, Cache{TTL: time.Minute}, clock.Now)
	ctx := testCtx(t)

	const callers = 32
	var started, done sync.WaitGroup
	started.Add(callers)
	errs := make(chan error, callers)
	for range callers {
		done.Go(func() {
			started.Done()
			rd, err := r.Read(ctx, qa)
			if err == nil && rd.Depth != 3 {
				err = errors.New("wrong depth")
			}
			errs <- err
		})
	}
	started.Wait()
	<-gate.entered // the shared read is under way
	close(gate.release)
	done.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	// Whether a caller joined the flight or came after it and hit the
	// cache, the broker is read once.
	if n := counter.n.Load(); n != 1 {
		t.Errorf("%d underlying reads for %d concurrent callers, want 1", n, callers)
	}
}

func TestCoalesceDistinctQueriesNotMerged(t *testing.T) {
	counter, qa, qb := coalesceFixture(t)
	r := Coalesce(counter, Cache{TTL: time.Minute}, (&fakeClock{}).Now)
	ctx := testCtx(t)

	var wg sync.WaitGroup
	var da, db float64
	var ea, eb error
	wg.Go(func() {
		rd, err := r.Read(ctx, qa)
		da, ea = rd.Depth, err
	})
	wg.Go(func() {
		rd, err := r.Read(ctx, qb)
		db, eb = rd.Depth, err
	})
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatal(ea, eb)
	}
	if da != 3 || db != 1 {
		t.Errorf("depths a=%v b=%v, want 3 and 1", da, db)
	}
	if n := counter.n.Load(); n != 2 {
		t.Errorf("%d underlying reads, want 2", n)
	}
}

func TestCoalesceCacheExpiry(t *testing.T) {
	counter, qa, _ := coalesceFixture(t)
	clock := &fakeClock{now: time.Unix(1000, 0)}
	const ttl = 5 * time.Second
	r := Coalesce(counter, Cache{TTL: ttl}, clock.Now)
	ctx := testCtx(t)

	read := func(wantReads int64) Reading {
		t.Helper()
		rd, err := r.Read(ctx, qa)
		if err != nil {
			t.Fatal(err)
		}
		if n := counter.n.Load(); n != wantReads {
			t.Fatalf("at +%v: %d underlying reads, want %d", clock.Now().Sub(time.Unix(1000, 0)), n, wantReads)
		}
		return rd
	}
	first := read(1)
	if again := read(1); !again.At.Equal(first.At) {
		t.Errorf("cached reading At = %v, want the original %v", again.At, first.At)
	}
	clock.Advance(ttl - time.Nanosecond)
	read(1)
	clock.Advance(time.Nanosecond)
	read(2)
}

// A caller that needs fresh data (a push stream) bounds the cache age for
// itself only; other callers keep the full TTL.
func TestCoalesceMaxAge(t *testing.T) {
	counter, qa, _ := coalesceFixture(t)
	clock := &fakeClock{now: time.Unix(1000, 0)}
	r := Coalesce(counter, Cache{TTL: 5 * time.Second}, clock.Now)
	ctx := testCtx(t)
	fresh := WithMaxAge(ctx, 250*time.Millisecond)
	reads := func(c context.Context, want int64) {
		t.Helper()
		if _, err := r.Read(c, qa); err != nil {
			t.Fatal(err)
		}
		if n := counter.n.Load(); n != want {
			t.Fatalf("%d underlying reads, want %d", n, want)
		}
	}
	reads(ctx, 1)
	clock.Advance(200 * time.Millisecond)
	reads(fresh, 1) // 200ms old: fresh enough
	clock.Advance(100 * time.Millisecond)
	reads(fresh, 2) // 300ms old: read again
	clock.Advance(time.Second)
	reads(ctx, 2) // the plain caller still uses the 5s TTL
}

func TestCoalesceErrorsNotCached(t *testing.T) {
	counter, _, _ := coalesceFixture(t)
	r := Coalesce(counter, Cache{TTL: time.Minute}, (&fakeClock{}).Now)
	q := Query{Kind: RedisList, Connection: "nope", Name: "a"}
	for i := range 3 {
		if _, err := r.Read(testCtx(t), q); !errors.Is(err, ErrUnknownConnection) {
			t.Fatalf("read %d: %v, want ErrUnknownConnection", i, err)
		}
	}
	if n := counter.n.Load(); n != 3 {
		t.Errorf("%d underlying reads for 3 failing reads, want 3", n)
	}
}

func TestCoalesceCancelledCallerDoesNotBreakOthers(t *testing.T) {
	counter, qa, _ := coalesceFixture(t)
	gate := newGatedReader(counter)
	r := Coalesce(gate, Cache{TTL: time.Minute}, (&fakeClock{}).Now)

	deadline := time.Now().Add(time.Minute)
	ctxA, cancelA := context.WithDeadline(context.Background(), deadline)
	defer cancelA()
	resA := make(chan error, 1)
	go func() {
		_, err := r.Read(ctxA, qa)
		resA <- err
	}()
	shared := <-gate.entered

	if dl, ok := shared.Deadline(); !ok || !dl.Equal(deadline) {
		t.Errorf("shared read deadline = %v (set %v), want the first caller's %v", dl, ok, deadline)
	}

	cancelA()
	// A returns while the shared read is still held at the gate.
	if err := <-resA; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller got %v, want context.Canceled", err)
	}
	if err := shared.Err(); err != nil {
		t.Errorf("shared read's context ended with its first caller: %v", err)
	}

	resB := make(chan error, 1)
	go func() {
		rd, err := r.Read(testCtx(t), qa)
		if err == nil && rd.Depth != 3 {
			err = errors.New("wrong depth")
		}
		resB <- err
	}()
	close(gate.release)
	if err := <-resB; err != nil {
		t.Errorf("other caller: %v", err)
	}
	if n := counter.n.Load(); n != 1 {
		t.Errorf("%d underlying reads, want 1", n)
	}
}

// stallFirstReader makes its first read wait for its context to end, as a
// broker would that hangs past the first caller's deadline.
type stallFirstReader struct {
	next    Reader
	entered chan struct{}
	calls   atomic.Int64
}

func (s *stallFirstReader) Read(ctx context.Context, q Query) (Reading, error) {
	if s.calls.Add(1) == 1 {
		close(s.entered)
		<-ctx.Done()
		return Reading{}, ctx.Err()
	}
	return s.next.Read(ctx, q)
}

func TestCoalesceShortDeadlineDoesNotFailLaterCallers(t *testing.T) {
	counter, qa, _ := coalesceFixture(t)
	stall := &stallFirstReader{next: counter, entered: make(chan struct{})}
	r := Coalesce(stall, Cache{TTL: time.Minute}, (&fakeClock{}).Now)

	ctxA, cancelA := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelA()
	resA := make(chan error, 1)
	go func() {
		_, err := r.Read(ctxA, qa)
		resA <- err
	}()
	<-stall.entered

	// B may join A's doomed read or start after it; either way it must not
	// inherit A's deadline.
	rd, err := r.Read(testCtx(t), qa)
	if err != nil {
		t.Fatalf("later caller: %v", err)
	}
	if rd.Depth != 3 {
		t.Errorf("Depth = %v, want 3", rd.Depth)
	}
	if err := <-resA; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("first caller: %v, want context.DeadlineExceeded", err)
	}
}

// failFirstReader holds its first read until release is closed and then
// fails it as a dropped connection does; later reads go through.
type failFirstReader struct {
	next    Reader
	entered chan struct{}
	release chan struct{}
	calls   atomic.Int64
}

func (f *failFirstReader) Read(ctx context.Context, q Query) (Reading, error) {
	if f.calls.Add(1) == 1 {
		close(f.entered)
		<-f.release
		return Reading{}, errors.New("read tcp 127.0.0.1:6379: connection reset by peer")
	}
	return f.next.Read(ctx, q)
}

// A caller that joins a read started by a caller who has left, and that
// read fails (it began while the broker was still down), reads once more
// itself rather than inherit the failure: the first poll after an outage
// must get a fresh answer.
func TestCoalesceJoinerDoesNotInheritAFailure(t *testing.T) {
	counter, qa, _ := coalesceFixture(t)
	ff := &failFirstReader{next: counter, entered: make(chan struct{}), release: make(chan struct{})}
	r := Coalesce(ff, Cache{TTL: time.Minute}, (&fakeClock{}).Now)

	ctxA, cancelA := context.WithCancel(testCtx(t))
	resA := make(chan error, 1)
	go func() {
		_, err := r.Read(ctxA, qa)
		resA <- err
	}()
	<-ff.entered
	cancelA()
	if err := <-resA; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v, want context.Canceled", err)
	}

	type result struct {
		rd  Reading
		err error
	}
	resB := make(chan result, 1)
	go func() {
		rd, err := r.Read(testCtx(t), qa)
		resB <- result{rd, err}
	}()
	// B joins the held read unless the scheduler delays it past the
	// release, in which case it reads on its own: either way it must get
	// the list.
	time.Sleep(50 * time.Millisecond)
	close(ff.release)
	got := <-resB
	if got.err != nil {
		t.Fatalf("later caller inherited the failed read: %v", got.err)
	}
	if got.rd.Depth != 3 {
		t.Errorf("Depth = %v, want 3", got.rd.Depth)
	}
	if n := ff.calls.Load(); n != 2 {
		t.Errorf("%d reads, want 2: the failed one and the later caller's own", n)
	}
}

func TestCoalesceDoneContext(t *testing.T) {
	counter, qa, _ := coalesceFixture(t)
	r := Coalesce(counter, Cache{TTL: time.Minute}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Read(ctx, qa); !errors.Is(err, context.Canceled) {
		t.Errorf("Read with a done context: %v", err)
	}
	if n := counter.n.Load(); n != 0 {
		t.Errorf("%d underlying reads, want 0", n)
	}
}

func TestFlightKeyCollisionFree(t *testing.T) {
	// flightKey lists Query's fields by hand; a new field must be added there.
	if n := reflect.TypeFor[Query]().NumField(); n != 6 {
		t.Fatalf("Query has %d fields; update flightKey and this test", n)
	}
	// Pairs that naive joins ("/", ":" or concatenation) would merge.
	qs := []Query{
		{Kind: RedisList, Connection: "a", Name: "b/c"},
		{Kind: RedisList, Connection: "a/b", Name: "c"},
		{Kind: RedisList, Connection: "a:b", Name: "c"},
		{Kind: RedisList, Connection: "a", Name: "b:c"},
		{Kind: RedisList, Connection: "a", Name: "1:bc"},
		{Kind: RedisList, Connection: "a1", Name: ":bc"},
		{Kind: RedisStream, Connection: "a", Name: "s#g"},
		{Kind: RedisStream, Connection: "a", Name: "s", Group: "g"},
		{Kind: RedisStream, Connection: "a", Name: "s", Group: "#g"},
		{Kind: RedisStream, Connection: "", Name: "as"},
		{Kind: RedisStream, Connection: "as", Name: ""},
		// Service Bus: a pattern is not a name, and aggregations differ.
		{Kind: ServiceBusQueue, Connection: "a", Name: "orders-.*"},
		{Kind: ServiceBusQueue, Connection: "a", Pattern: "orders-.*", Aggregation: AggregateSum},
		{Kind: ServiceBusQueue, Connection: "a", Pattern: "orders-.*", Aggregation: AggregateMax},
		{Kind: ServiceBusSubscription, Connection: "a", Name: "t", Group: "s"},
		{Kind: ServiceBusSubscription, Connection: "a", Name: "t", Pattern: "s"},
	}
	seen := map[string]Query{}
	for _, q := range qs {
		k := flightKey(q)
		if prev, ok := seen[k]; ok {
			t.Errorf("%#v and %#v share key %q", prev, q, k)
		}
		seen[k] = q
	}
}

func BenchmarkCoalescedRead(b *testing.B) {
	srv := redistest.Start(b)
	check(b, srv.Client(b).RPush(context.Background(), "a", 1, 2, 3).Err())
	direct := newTestRedis(b, srv.URL(), RedisOptions{})
	q := Query{Kind: RedisList, Connection: testConn, Name: "a"}

	for _, bc := range []struct {
		name string
		r    Reader
	}{
		{name: "direct", r: direct},
		// ttl 0: only concurrent reads merge, every poll reaches Redis.
		{name: "singleflight", r: Coalesce(direct, Cache{}, nil)},
		{name: "cached", r: Coalesce(direct, Cache{TTL: time.Hour}, nil)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := bc.r.Read(ctx, q); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// holdReader holds each read, while hold is set, until a token arrives on
// pass; it fails every read while fail is set.
type holdReader struct {
	next       Reader
	hold, fail atomic.Bool
	pass       chan struct{}
	reads      atomic.Int64
}

var errInjected = errors.New("injected failure")

func (h *holdReader) Read(ctx context.Context, q Query) (Reading, error) {
	h.reads.Add(1)
	if h.hold.Load() {
		select {
		case <-h.pass:
		case <-ctx.Done():
			return Reading{}, ctx.Err()
		}
	}
	if h.fail.Load() {
		return Reading{}, errInjected
	}
	return h.next.Read(ctx, q)
}

// Past its TTL, a reading answers at once while one read in the background
// replaces it; a failed read ends the grace until a read succeeds, and a
// reading past TTL + grace, or older than a caller's maxAge, is read again
// while the caller waits. Depths tell which reading answered: the list
// grows between steps.
func TestCoalesceGrace(t *testing.T) {
	srv := redistest.Start(t)
	rc := srv.Client(t)
	h := &holdReader{next: newTestRedis(t, srv.URL(), RedisOptions{}), pass: make(chan struct{})}
	clock := &fakeClock{now: time.Unix(1000, 0)}
	const ttl, grace = 5 * time.Second, 2 * time.Second
	r := Coalesce(h, Cache{TTL: ttl, Grace: grace}, clock.Now)
	q := Query{Kind: RedisList, Connection: testConn, Name: "l"}
	ctx := testCtx(t)
	push := func() { check(t, rc.RPush(ctx, "l", "x").Err()) }
	depth := func(c context.Context) (float64, error) {
		rd, err := r.Read(c, q)
		return rd.Depth, err
	}
	wantDepth := func(step string, c context.Context, want float64) {
		t.Helper()
		got, err := depth(c)
		if err != nil || got != want {
			t.Fatalf("%s: depth %v, %v; want %v", step, got, err, want)
		}
	}
	// until reads until the answer is want: a background read is done.
	until := func(step string, want func(float64, error) bool) {
		t.Helper()
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(time.Millisecond) {
			if want(depth(ctx)) {
				return
			}
		}
		t.Fatalf("%s: the background read never landed", step)
	}

	push()
	wantDepth("first read", ctx, 1)
	push()
	clock.Advance(ttl)
	h.hold.Store(true)
	wantDepth("in the grace, the background read held", ctx, 1)
	wantDepth("again in the grace", ctx, 1)
	// A push stream asks for 250ms: no grace, so it waits, and it joins
	// the read already running rather than start another.
	got := make(chan float64, 1)
	go func() {
		d, _ := depth(WithMaxAge(ctx, 250*time.Millisecond))
		got <- d
	}()
	h.pass <- struct{}{}
	if d := <-got; d != 2 {
		t.Fatalf("push stream: depth %v, want 2 (the read it waited for)", d)
	}
	h.hold.Store(false)
	wantDepth("the refreshed reading", ctx, 2)
	if n := h.reads.Load(); n != 2 {
		t.Errorf("%d reads, want 2: the first and the one in the background", n)
	}

	// A failed background read ends the grace: callers see the failure.
	push()
	clock.Advance(ttl)
	h.fail.Store(true)
	wantDepth("in the grace of a failing source", ctx, 2)
	until("failure", func(_ float64, err error) bool { return errors.Is(err, errInjected) })
	if _, err := depth(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("after a failed read, still in the grace: %v, want the failure", err)
	}
	h.fail.Store(false)
	wantDepth("recovered: read at once", ctx, 3)

	// Past TTL + grace the caller waits for a read.
	push()
	clock.Advance(ttl + grace)
	wantDepth("past the grace", ctx, 4)
}
