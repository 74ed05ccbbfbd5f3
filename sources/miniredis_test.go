package sources

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// The demo runs on miniredis, whose XINFO GROUPS always reports lag as the
// stream's length and entries-read as nil. This pins down that the reader
// then counts the backlog itself and reports the true lag.
func TestMiniredisFallbackGivesTrueLag(t *testing.T) {
	m := miniredis.RunT(t)
	// A fixed server clock makes ages exact.
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m.SetTime(now)
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = c.Close() })

	base := now.Add(-time.Minute).UnixMilli()
	id := func(i int) string { return strconv.FormatInt(base+int64(i)*1000, 10) + "-0" }
	for i := range 5 {
		check(t, c.XAdd(ctx, &redis.XAddArgs{Stream: "orders", ID: id(i), Values: []string{"n", strconv.Itoa(i)}}).Err())
	}
	check(t, c.XGroupCreate(ctx, "orders", "workers", "0").Err())
	check(t, c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "c1", Streams: []string{"orders", ">"}, Count: 2}).Err())

	// The premise: miniredis' own lag is wrong here.
	raw, err := c.Do(ctx, "XINFO", "GROUPS", "orders").Result()
	check(t, err)
	g, found, err := findGroupRaw(raw, "workers")
	if err != nil || !found {
		t.Fatalf("XINFO GROUPS: found=%v err=%v", found, err)
	}
	if g["lag"] != int64(5) || g["entries-read"] != nil {
		t.Fatalf("miniredis reports lag=%v entries-read=%v; this test assumes 5 and nil", g["lag"], g["entries-read"])
	}

	r := newTestRedis(t, "redis://"+m.Addr(), RedisOptions{})
	got, err := r.Read(ctx, Query{Kind: RedisStream, Connection: testConn, Name: "orders", Group: "workers"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Depth != 3 || got.DepthCapped {
		t.Errorf("Depth = %v (capped %v), want the true lag 3", got.Depth, got.DepthCapped)
	}
	if got.InFlight != 2 {
		t.Errorf("InFlight = %v, want 2", got.InFlight)
	}
	// Entry 2 is the first undelivered one: 58 s old on the server's clock.
	if want := now.Sub(time.UnixMilli(base + 2000)); got.OldestAge != want {
		t.Errorf("OldestAge = %v, want %v", got.OldestAge, want)
	}
	if got.MaxDeliveries != 1 {
		t.Errorf("MaxDeliveries = %v, want 1", got.MaxDeliveries)
	}
	if got.OldestPendingIdle < 0 {
		t.Errorf("OldestPendingIdle = %v, want >= 0 with entries pending", got.OldestPendingIdle)
	}
}
