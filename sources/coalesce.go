package sources

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

var _ Reader = (*coalesced)(nil)

// Coalesce wraps r so that concurrent reads of the same Query share one
// underlying read, and a successful reading is reused for ttl (by now, which
// defaults to time.Now). KEDA polls every ScaledObject separately and
// several can watch the same queue; without this each poll would hit the
// broker. Errors are not cached, so a failing broker is retried on the next
// poll. A ttl <= 0 only merges concurrent reads.
//
// A caller whose ctx ends returns ctx.Err() at once while the shared read
// goes on for the others. The shared read runs with the deadline of the
// caller that started it but not its cancellation, so one caller giving up
// does not fail everyone, and the read stays bounded as long as that
// caller had a deadline (Reader implementations need one).
func Coalesce(r Reader, ttl time.Duration, now func() time.Time) Reader {
	if now == nil {
		now = time.Now
	}
	return &coalesced{next: r, ttl: ttl, now: now, cache: map[Query]cached{}}
}

type coalesced struct {
	next  Reader
	ttl   time.Duration
	now   func() time.Time
	group singleflight.Group

	mu    sync.Mutex
	cache map[Query]cached
}

type cached struct {
	reading Reading
	at      time.Time
}

// flightResult is what a shared read returns to every waiter.
type flightResult struct {
	reading Reading
	// expired is set when the shared read failed because the deadline it
	// inherited from its first caller passed: a waiter with a later
	// deadline may try again rather than inherit someone else's timeout.
	expired bool
}

func (c *coalesced) Read(ctx context.Context, q Query) (Reading, error) {
	if err := ctx.Err(); err != nil {
		return Reading{}, err
	}
	if rd, ok := c.lookup(q); ok {
		return rd, nil
	}
	// One retry at most: enough for a waiter that joined a read started by a
	// caller with a nearly spent deadline, without looping on a slow broker.
	for attempt := 0; ; attempt++ {
		ch := c.group.DoChan(flightKey(q), func() (any, error) {
			return c.shared(ctx, q)
		})
		select {
		case <-ctx.Done():
			return Reading{}, ctx.Err()
		case res := <-ch:
			fr, _ := res.Val.(flightResult)
			if res.Err != nil && fr.expired && attempt == 0 && ctx.Err() == nil {
				continue
			}
			return fr.reading, res.Err
		}
	}
}

// shared is the underlying read run once for all waiters of a flight.
func (c *coalesced) shared(callerCtx context.Context, q Query) (any, error) {
	// A read that finished just before this flight started has already
	// filled the cache.
	if rd, ok := c.lookup(q); ok {
		return flightResult{reading: rd}, nil
	}
	ctx := context.WithoutCancel(callerCtx)
	if dl, ok := callerCtx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	rd, err := c.next.Read(ctx, q)
	if err != nil {
		return flightResult{expired: errors.Is(ctx.Err(), context.DeadlineExceeded)}, err
	}
	c.store(q, rd)
	return flightResult{reading: rd}, nil
}

func (c *coalesced) lookup(q Query) (Reading, bool) {
	if c.ttl <= 0 {
		return Reading{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cache[q]
	if !ok || c.now().Sub(e.at) >= c.ttl {
		return Reading{}, false
	}
	return e.reading, true
}

func (c *coalesced) store(q Query, rd Reading) {
	if c.ttl <= 0 {
		return
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	// Sweep on write so queries that are no longer polled (a deleted
	// ScaledObject) do not stay in memory; the map is as small as the
	// number of watched queues, so a full pass is cheap.
	for k, e := range c.cache {
		if now.Sub(e.at) >= c.ttl {
			delete(c.cache, k)
		}
	}
	c.cache[q] = cached{reading: rd, at: now}
}

// flightKey encodes a Query without collisions: each field is
// length-prefixed, so no choice of separators inside names can make two
// different Queries share a key.
func flightKey(q Query) string {
	var b []byte
	for _, f := range [...]string{string(q.Kind), q.Connection, q.Name, q.Group} {
		b = strconv.AppendInt(b, int64(len(f)), 10)
		b = append(b, ':')
		b = append(b, f...)
	}
	return string(b)
}
