package keda

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/sources/redistest"
)

// env is one test's world: a real redis-server, a flowscaler process reading
// it, and a client to arrange queues with.
type env struct {
	redis  *redistest.Server
	daemon *daemon
	rdb    *redis.Client
}

// startEnv starts redis-server (skipped without it, unless CI=true) and a
// flowscaler configured for it. Each test gets its own pair, so no test sees
// another's policy state and the outage test can stop its Redis.
func startEnv(t *testing.T, o daemonOptions) *env {
	t.Helper()
	srv := redistest.Start(t)
	o.RedisURL = srv.URL()
	return &env{redis: srv, daemon: startDaemon(t, o), rdb: srv.Client(t)}
}
