package load

import (
	"context"
	"fmt"
	"strconv"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/sources"
)

// Connection is the name of the Redis connection in the generated config.
const Connection = "load"

// Group is the consumer group of every stream.
const Group = "workers"

// StreamName is the key of stream i.
func StreamName(i int) string { return fmt.Sprintf("flowscaler-load-%04d", i) }

// Prepare creates streams 0..n-1 afresh, each with the consumer group, a
// backlog of entries and a quarter of them delivered but not acknowledged,
// so that every read sees lag, pending entries and an oldest age.
func Prepare(ctx context.Context, c *redis.Client, streams, backlog int) error {
	delivered := backlog / 4
	for i := range streams {
		key := StreamName(i)
		pipe := c.Pipeline()
		pipe.Del(ctx, key)
		pipe.XGroupCreateMkStream(ctx, key, Group, "0")
		for range backlog {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []string{"n", "1"}})
		}
		if delivered > 0 {
			pipe.XReadGroup(ctx, &redis.XReadGroupArgs{Group: Group, Consumer: "pod-0", Streams: []string{key, ">"}, Count: int64(delivered)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("preparing stream %s: %w", key, err)
		}
	}
	return nil
}

// variants are the per-object metadata mixed over the objects: different
// profiles and overrides on the same stream must still share one read,
// since the read depends on the stream and group alone.
var variants = []map[string]string{
	{},
	{"policy": "io-bound"},
	{"targetAge": "30s", "processingTime": "250ms"},
	{"maxReplicas": "40", "scaleDownCooldown": "5m", "concurrency": "8", "prefetch": "16"},
}

// Objects are the ScaledObject refs KEDA would send: object i watches
// stream i mod streams, so every stream has objects ÷ streams watchers.
func Objects(objects, streams int) []*pb.ScaledObjectRef {
	refs := make([]*pb.ScaledObjectRef, objects)
	for i := range refs {
		md := map[string]string{
			"scalerAddress": "flowscaler.flowscaler.svc.cluster.local:6000",
			"source":        "redis-stream",
			"connection":    Connection,
			"stream":        StreamName(i % streams),
			"group":         Group,
		}
		for k, v := range variants[i%len(variants)] {
			md[k] = v
		}
		refs[i] = &pb.ScaledObjectRef{Namespace: "load-" + strconv.Itoa(i%10), Name: fmt.Sprintf("consumer-%05d", i), ScalerMetadata: md}
	}
	return refs
}

// ConfigYAML is a daemon configuration with one Redis connection and the
// given read cache (server.readCacheTTL and readCacheGrace); the addresses
// are given on the command line or as listeners.
func ConfigYAML(redisURL string, cache sources.Cache) string {
	return fmt.Sprintf(`server:
  readTimeout: 2s
  staleAfter: 60s
  readCacheTTL: %s
  readCacheGrace: %s
connections:
  %s:
    type: redis
    url: %s
policy:
  profiles:
    io-bound:
      concurrency: 32
      prefetch: 64
`, cache.TTL, cache.Grace, Connection, redisURL)
}
