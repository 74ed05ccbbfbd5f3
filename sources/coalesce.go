package sources

import (
	"context"
	"errors"
	"math"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

var _ Reader = (*coalesced)(nil)

// Cache is how long shared results are reused.
type Cache struct {
	// TTL is how long a successful result answers every caller without a
	// read. <= 0 only merges concurrent reads.
	TTL time.Duration
	// Grace is how long past TTL a result still answers callers while one
	// read in the background replaces it (stale-while-revalidate): while
	// the source is healthy, callers never wait on it. A failed read of the
	// key ends the grace until a read succeeds, so failures reach callers
	// as they would without it. Callers that ask for a maxAge
	// (WithMaxAge) get no grace past it. <= 0: none.
	Grace time.Duration
}

// Coalesce wraps r so that concurrent reads of the same Query share one
// underlying read, and a successful reading is reused as c says (by now,
// which defaults to time.Now). KEDA polls every ScaledObject separately and
// several can watch the same queue; without this each poll would hit the
// broker. Errors are not cached, so a failing broker is retried on the next
// poll.
//
// A caller whose ctx ends returns ctx.Err() at once while the shared read
// goes on for the others. The shared read runs with the deadline of the
// caller that started it but not its cancellation, so one caller giving up
// does not fail everyone, and the read stays bounded as long as that
// caller had a deadline (Reader implementations need one). A caller that
// joined a read it did not start and that read failed tries once more on
// its own: that read began before it asked, possibly while the broker was
// still down, and errors are not shared any more than they are cached.
//
// A read started in the grace runs in the background with the deadline of
// the caller that started it, and the reading it returns keeps the time it
// was taken (Reading.At), so how old an answer is stays known to callers.
func Coalesce(r Reader, c Cache, now func() time.Time) Reader {
	return &coalesced{shared: newShared(r.Read, flightKey, c, now)}
}

type coalesced struct {
	shared *shared[Query, Reading]
}

func (c *coalesced) Read(ctx context.Context, q Query) (Reading, error) {
	return c.shared.do(ctx, q)
}

// shared runs one read per key for all concurrent callers and caches
// successful results for ttl: the rules of Coalesce, for any comparable key.
type shared[K comparable, V any] struct {
	read  func(context.Context, K) (V, error)
	key   func(K) string // collision-free: singleflight keys are strings
	ttl   time.Duration
	grace time.Duration // >= 0
	now   func() time.Time
	group singleflight.Group

	mu    sync.Mutex
	cache map[K]cached[V]
}

type cached[V any] struct {
	value V
	at    time.Time
	// refreshing is set while a read started in the grace runs, so that
	// one read replaces the value however many callers it answers meanwhile.
	refreshing bool
	// failed is set when a read of the key failed after this value was
	// stored: the grace is over until a read succeeds.
	failed bool
}

// verdict is what a cached entry allows a caller.
type verdict int

const (
	cacheMiss         verdict = iota // read and wait
	cacheFresh                       // answer from the cache
	cacheGraceRefresh                // answer from the cache and start the read that replaces it
	cacheGrace                       // answer from the cache; the read that replaces it runs
)

// flightResult is what a shared read returns to every waiter.
type flightResult[V any] struct {
	value V
	// expired is set when the shared read failed because the deadline it
	// inherited from its first caller passed: a waiter with a later
	// deadline may try again rather than inherit someone else's timeout.
	expired bool
	// deadline is the deadline the shared read ran with.
	deadline time.Time
	// starter identifies the caller that started the read.
	starter *int
}

func newShared[K comparable, V any](read func(context.Context, K) (V, error), key func(K) string, c Cache, now func() time.Time) *shared[K, V] {
	if now == nil {
		now = time.Now
	}
	return &shared[K, V]{read: read, key: key, ttl: c.TTL, grace: max(c.Grace, 0), now: now, cache: map[K]cached[V]{}}
}

func (s *shared[K, V]) do(ctx context.Context, k K) (V, error) {
	var zero V
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	switch v, vd := s.serve(k, maxAgeOf(ctx)); vd {
	case cacheFresh, cacheGrace:
		return v, nil
	case cacheGraceRefresh:
		// The result is not waited for: flight stores it or ends the grace.
		s.group.DoChan(s.key(k), func() (any, error) {
			return s.flight(ctx, k, nil)
		})
		return v, nil
	}
	// One retry at most: enough for a waiter that joined a failed read
	// started by another caller (one with a nearly spent deadline, or one
	// that has left), without looping on a slow broker.
	me := new(int)
	for attempt := 0; ; attempt++ {
		ch := s.group.DoChan(s.key(k), func() (any, error) {
			return s.flight(ctx, k, me)
		})
		select {
		case <-ctx.Done():
			return zero, ctx.Err()
		case res := <-ch:
			fr, _ := res.Val.(flightResult[V])
			if res.Err != nil && attempt == 0 && ctx.Err() == nil && fr.starter != me &&
				(!fr.expired || laterDeadline(ctx, fr.deadline)) {
				continue
			}
			return fr.value, res.Err
		}
	}
}

// flight is the underlying read run once for all waiters of a flight.
func (s *shared[K, V]) flight(callerCtx context.Context, k K, starter *int) (any, error) {
	// A read that finished just before this flight started has already
	// filled the cache.
	if v, ok := s.lookup(k, maxAgeOf(callerCtx)); ok {
		return flightResult[V]{value: v, starter: starter}, nil
	}
	ctx := context.WithoutCancel(callerCtx)
	dl, hasDeadline := callerCtx.Deadline()
	if hasDeadline {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	v, err := s.read(ctx, k)
	if err != nil {
		s.fail(k)
		return flightResult[V]{expired: errors.Is(ctx.Err(), context.DeadlineExceeded), deadline: dl, starter: starter}, err
	}
	s.store(k, v)
	return flightResult[V]{value: v, starter: starter}, nil
}

// laterDeadline reports whether ctx may outlive a read that expired at dl:
// it has no deadline, or a later one. The caller that started the read has
// the same deadline and must not retry, even when the read's timer fires
// before its own.
func laterDeadline(ctx context.Context, dl time.Time) bool {
	own, ok := ctx.Deadline()
	return !ok || own.After(dl)
}

// serve tells what the cache holds for a caller that accepts results up to
// maxAge old: a value younger than the TTL is fresh; one in the grace
// (younger than TTL + grace, and than maxAge) answers too unless a read of
// the key failed since, and the first caller to find it so starts the read
// that replaces it.
func (s *shared[K, V]) serve(k K, maxAge time.Duration) (V, verdict) {
	var zero V
	ttl := min(s.ttl, maxAge)
	if ttl <= 0 {
		return zero, cacheMiss
	}
	graceEnd := min(s.ttl+s.grace, maxAge)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.cache[k]
	if !ok {
		return zero, cacheMiss
	}
	switch age := s.now().Sub(e.at); {
	case age < ttl:
		return e.value, cacheFresh
	case age >= graceEnd || e.failed:
		return zero, cacheMiss
	case e.refreshing:
		return e.value, cacheGrace
	}
	e.refreshing = true
	s.cache[k] = e
	return e.value, cacheGraceRefresh
}

// fail ends the grace of k's cached value, if any: the next caller reads
// and sees whether the source still fails.
func (s *shared[K, V]) fail(k K) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.cache[k]; ok {
		e.failed, e.refreshing = true, false
		s.cache[k] = e
	}
}

// lookup returns a cached value younger than both the TTL and maxAge.
func (s *shared[K, V]) lookup(k K, maxAge time.Duration) (V, bool) {
	var zero V
	ttl := min(s.ttl, maxAge)
	if ttl <= 0 {
		return zero, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.cache[k]
	if !ok || s.now().Sub(e.at) >= ttl {
		return zero, false
	}
	return e.value, true
}

func (s *shared[K, V]) store(k K, v V) {
	if s.ttl <= 0 {
		return
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	// Sweep on write so keys that are no longer polled (a deleted
	// ScaledObject) do not stay in memory; the map is as small as the
	// number of watched queues, so a full pass is cheap.
	for key, e := range s.cache {
		if now.Sub(e.at) >= s.ttl+s.grace {
			delete(s.cache, key)
		}
	}
	s.cache[k] = cached[V]{value: v, at: now}
}

// flightKey encodes a Query without collisions: each field is
// length-prefixed, so no choice of separators inside names can make two
// different Queries share a key.
func flightKey(q Query) string {
	return lengthPrefixed(string(q.Kind), q.Connection, q.Name, q.Group, q.Pattern, q.Aggregation)
}

func lengthPrefixed(fields ...string) string {
	var b []byte
	for _, f := range fields {
		b = strconv.AppendInt(b, int64(len(f)), 10)
		b = append(b, ':')
		b = append(b, f...)
	}
	return string(b)
}

type maxAgeKey struct{}

// WithMaxAge asks the shared readers for a result no older than d, whatever
// their cache TTL: a caller that must see a change quickly (a push stream
// checking activity) still shares in-flight reads but not stale ones.
func WithMaxAge(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, maxAgeKey{}, d)
}

func maxAgeOf(ctx context.Context) time.Duration {
	if d, ok := ctx.Value(maxAgeKey{}).(time.Duration); ok {
		return d
	}
	return time.Duration(math.MaxInt64)
}
