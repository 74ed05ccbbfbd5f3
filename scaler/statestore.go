package scaler

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flowscaler/flowscaler/scaler/config"
)

// StateStore keeps each object's encoded state where every replica sees it,
// so that replicas behind one address give the same answer and a restart
// keeps the cooldown. Writes are compare-and-set on a sequence number.
type StateStore interface {
	// Load returns the stored state of an object and its sequence number;
	// seq 0 and nil data when nothing is stored.
	Load(ctx context.Context, id string) (seq uint64, data []byte, err error)
	// Save stores data as sequence seq+1 if the stored sequence is still
	// seq (0: nothing stored), and returns the new sequence. When another
	// writer got there first it stores nothing and returns ErrStateConflict.
	Save(ctx context.Context, id string, seq uint64, data []byte) (uint64, error)
}

// ErrStateConflict means another replica saved the object's state since it
// was loaded.
var ErrStateConflict = errors.New("state changed since it was loaded")

var _ StateStore = (*RedisStateStore)(nil)

// RedisStateStore keeps object state in redis, one hash per object:
// field seq (the sequence number) and field state (the JSON of
// encodeMemory), expiring ttl after the last save.
//
// Concurrency is optimistic: Load is a plain HMGET and Save a Lua
// compare-and-set on seq, one round trip each. A conflict costs the loser
// one more load and a re-run of the pure policy, microseconds. A lock would
// cost a round trip more per decision, and a replica that died holding it
// would stall every other for the lock's TTL; WATCH/MULTI would pin a
// connection from the load to the save.
type RedisStateStore struct {
	client *redis.Client
	prefix string
	ttl    time.Duration
}

// NewRedisStateStore keeps state under prefix+id, each key expiring ttl
// after its last save so that deleted objects do not leak.
func NewRedisStateStore(client *redis.Client, prefix string, ttl time.Duration) *RedisStateStore {
	return &RedisStateStore{client: client, prefix: prefix, ttl: ttl}
}

// Key is the redis key of an object's state.
func (r *RedisStateStore) Key(id string) string { return r.prefix + id }

// Load implements StateStore.
func (r *RedisStateStore) Load(ctx context.Context, id string) (uint64, []byte, error) {
	key := r.Key(id)
	vals, err := r.client.HMGet(ctx, key, "seq", "state").Result()
	if err != nil {
		return 0, nil, fmt.Errorf("state load %s: %w", key, err)
	}
	rawSeq, seqOK := vals[0].(string)
	data, dataOK := vals[1].(string)
	switch {
	case !seqOK && !dataOK:
		return 0, nil, nil
	case !seqOK || !dataOK:
		return 0, nil, fmt.Errorf("state load %s: hash must hold both seq and state fields", key)
	}
	seq, err := strconv.ParseUint(rawSeq, 10, 64)
	if err != nil || seq == 0 {
		return 0, nil, fmt.Errorf("state load %s: seq = %q: must be a whole number >= 1", key, rawSeq)
	}
	return seq, []byte(data), nil
}

// casScript stores ARGV[2] as the next sequence when the stored one is
// still ARGV[1] (a missing key counts as 0), and sets the TTL (ARGV[3], ms).
// It returns the new sequence, or -1 on a conflict. %d keeps a large
// sequence out of Lua's exponent notation.
var casScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'seq')
if not cur then cur = '0' end
if cur ~= ARGV[1] then return -1 end
local nxt = string.format('%d', tonumber(cur) + 1)
redis.call('HSET', KEYS[1], 'seq', nxt, 'state', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tonumber(nxt)
`)

// Save implements StateStore.
func (r *RedisStateStore) Save(ctx context.Context, id string, seq uint64, data []byte) (uint64, error) {
	key := r.Key(id)
	n, err := casScript.Run(ctx, r.client, []string{key}, strconv.FormatUint(seq, 10), data, r.ttl.Milliseconds()).Int64()
	switch {
	case err != nil:
		return 0, fmt.Errorf("state save %s: %w", key, err)
	case n < 0:
		return 0, fmt.Errorf("state save %s at seq %d: %w", key, seq, ErrStateConflict)
	}
	return uint64(n), nil
}

// Close closes the client.
func (r *RedisStateStore) Close() error { return r.client.Close() }

// newStateStore builds the store the config asks for; nil for memory, where
// each object's state lives in the server alone.
func newStateStore(c *config.Config) (*RedisStateStore, error) {
	if !c.State.Shared() {
		return nil, nil
	}
	conn := c.Connections[c.State.Connection]
	client, err := newStateClient(conn.URL, conn.Password())
	if err != nil {
		return nil, fmt.Errorf("state.connection = %q: %w", c.State.Connection, err)
	}
	return NewRedisStateStore(client, c.State.Prefix(), idleObjectTTL), nil
}

// newStateClient is a client for a redis:// or rediss:// URL; password,
// when set, replaces the URL's.
func newStateClient(rawURL, password string) (*redis.Client, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		// url.Error quotes the whole URL, credentials included.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("url %s: %v", config.RedactURL(rawURL), err)
	}
	if password != "" {
		opt.Password = password
	}
	// Deadlines bound every state operation, and an outage must fail fast:
	// the call then decides from this replica's memory instead of waiting
	// out go-redis's retries.
	opt.ContextTimeoutEnabled = true
	opt.MaxRetries = -1
	opt.DialerRetries = 1
	return redis.NewClient(opt), nil
}
