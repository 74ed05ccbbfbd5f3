package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

var _ Reader = (*Redis)(nil)

var (
	// ErrUnknownConnection is returned by Read for a Query whose Connection is
	// not configured, so callers can tell a config mistake from an outage.
	ErrUnknownConnection = errors.New("connection is not configured")
	// ErrStreamNotFound is returned for a stream key that does not exist. A
	// missing stream is not reported as an empty backlog: for a group reader it
	// almost always means a typo or a producer that never started, and scaling
	// to zero on it would hide that.
	ErrStreamNotFound = errors.New("stream does not exist")
	// ErrGroupNotFound is returned for a consumer group that does not exist on
	// an existing stream, for the same reason as ErrStreamNotFound.
	ErrGroupNotFound = errors.New("consumer group does not exist")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("redis reader is closed")
)

// RedisConnection is one named Redis endpoint from flowscaler's config.
//
// It is a comparable value: SetConnections keeps an existing client exactly
// when the new RedisConnection equals the old one.
type RedisConnection struct {
	// URL is a go-redis URL: redis://[user[:password]@]host[:port][/db][?opts],
	// rediss:// for TLS, or unix:///path.
	URL string
	// Password, when non-empty, overrides any password in URL. It lets the
	// URL live in a ConfigMap while the password comes from a Secret.
	Password string
}

const redacted = "xxxxx"

// String redacts credentials so that a RedisConnection can be printed or
// logged with %v by mistake without leaking them.
func (c RedisConnection) String() string {
	pw := "unset"
	if c.Password != "" {
		pw = "set"
	}
	return fmt.Sprintf("RedisConnection{URL: %s, Password: %s}", redactURL(c.URL), pw)
}

// GoString redacts for %#v too, which would otherwise print the raw fields.
func (c RedisConnection) GoString() string { return c.String() }

// LogValue implements slog.LogValuer with the same redaction as String.
func (c RedisConnection) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("url", redactURL(c.URL)),
		slog.Bool("password_set", c.Password != ""),
	)
}

// RedisOptions tunes a Redis reader. Zero values select the defaults.
type RedisOptions struct {
	// LagScanLimit bounds the XRANGE used to count a stream group's
	// undelivered entries when Redis cannot report the lag itself. Beyond it
	// Depth is a lower bound and DepthCapped is set. Default 10000.
	LagScanLimit int
	// PendingScan is how many of the oldest pending entries XPENDING examines
	// for idle time and delivery counts. Default 100.
	PendingScan int
	// Now stamps Reading.At. Default time.Now.
	Now func() time.Time
}

const (
	defaultLagScanLimit = 10000
	defaultPendingScan  = 100
)

// Redis reads Redis lists and stream consumer groups over named connections.
// It is safe for concurrent use; connections can be replaced while reads are
// running.
type Redis struct {
	opts RedisOptions

	mu     sync.RWMutex
	conns  map[string]*redisConn
	closed bool
}

type redisConn struct {
	cfg    RedisConnection
	client *redis.Client
}

// NewRedis returns a reader with no connections; call SetConnections.
func NewRedis(opts RedisOptions) *Redis {
	if opts.LagScanLimit <= 0 {
		opts.LagScanLimit = defaultLagScanLimit
	}
	if opts.PendingScan <= 0 {
		opts.PendingScan = defaultPendingScan
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Redis{opts: opts, conns: map[string]*redisConn{}}
}

// SetConnections replaces the set of named connections. It is meant for both
// start-up and config reload: a connection whose settings are unchanged keeps
// its client (and so its pooled connections), new or changed ones get a new
// client, and clients of removed or changed connections are closed.
//
// The update is all-or-nothing: if any URL cannot be parsed, nothing changes
// and the error names every bad connection (never its credentials), so a
// broken reload leaves the previous, working set in place.
func (r *Redis) SetConnections(conns map[string]RedisConnection) error {
	names := make([]string, 0, len(conns))
	for name := range conns {
		names = append(names, name)
	}
	sort.Strings(names) // deterministic error order

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	next := make(map[string]*redisConn, len(conns))
	var created []*redis.Client
	var errs []error
	for _, name := range names {
		cfg := conns[name]
		if old, ok := r.conns[name]; ok && old.cfg == cfg {
			next[name] = old
			continue
		}
		opt, err := redisClientOptions(name, cfg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// NewClient does not dial, so building clients under the lock is cheap.
		c := redis.NewClient(opt)
		created = append(created, c)
		next[name] = &redisConn{cfg: cfg, client: c}
	}
	if len(errs) > 0 {
		r.mu.Unlock()
		for _, c := range created {
			_ = c.Close()
		}
		return errors.Join(errs...)
	}
	var stale []*redis.Client
	for name, old := range r.conns {
		if next[name] != old {
			stale = append(stale, old.client)
		}
	}
	r.conns = next
	r.mu.Unlock()

	// Closed outside the lock: Close waits for the pool, and a read that
	// already holds a stale client simply fails with "client is closed".
	for _, c := range stale {
		_ = c.Close()
	}
	return nil
}

// Close closes every client. Reads after Close fail with ErrClosed.
func (r *Redis) Close() error {
	r.mu.Lock()
	conns := r.conns
	r.conns = map[string]*redisConn{}
	r.closed = true
	r.mu.Unlock()

	var errs []error
	for name, c := range conns {
		if err := c.client.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing redis connection %q: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// client returns the client for a connection name.
func (r *Redis) client(name string) (*redis.Client, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return nil, ErrClosed
	}
	c, ok := r.conns[name]
	if !ok {
		return nil, fmt.Errorf("redis connection %q: %w", name, ErrUnknownConnection)
	}
	return c.client, nil
}

// Read implements Reader. Errors start with the Query (kind, connection,
// key and group) and never carry credentials.
func (r *Redis) Read(ctx context.Context, q Query) (Reading, error) {
	c, err := r.client(q.Connection)
	if err != nil {
		return Reading{}, fmt.Errorf("%s: %w", q, err)
	}
	var rd Reading
	switch q.Kind {
	case RedisList:
		rd, err = r.readList(ctx, c, q)
	case RedisStream:
		if q.Group == "" {
			return Reading{}, fmt.Errorf("%s: a consumer group is required", q)
		}
		rd, err = r.readStream(ctx, c, q)
	default:
		return Reading{}, fmt.Errorf("%s: kind %q is not a redis kind", q, q.Kind)
	}
	if err != nil {
		if isDialError(err) {
			r.renew(q.Connection, c)
		}
		return Reading{}, fmt.Errorf("%s: %w", q, err)
	}
	rd.At = r.opts.Now()
	return rd, nil
}

// isDialError reports whether err is a failure to connect at all.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// renew replaces a connection's client after a dial failure. go-redis trips
// a circuit breaker once a pool has failed to dial PoolSize times and probes
// only once a second, so a poll in the first second after Redis returns
// would still fail; a fresh client (no connections to lose: none could be
// made) makes the first poll after recovery succeed.
func (r *Redis) renew(name string, failed *redis.Client) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.conns[name]
	if r.closed || !ok || c.client != failed {
		return
	}
	opt, err := redisClientOptions(name, c.cfg)
	if err != nil {
		return
	}
	r.conns[name] = &redisConn{cfg: c.cfg, client: redis.NewClient(opt)}
	go failed.Close() // Close waits for in-flight commands of other callers
}

func (r *Redis) readList(ctx context.Context, c *redis.Client, q Query) (Reading, error) {
	// LLEN of a missing key is 0, and that is the truth for a list: Redis
	// deletes a list when its last element is popped, so "missing" and
	// "empty" are the same state.
	n, err := c.LLen(ctx, q.Name).Result()
	if err != nil {
		return Reading{}, fmt.Errorf("LLEN: %w", err)
	}
	return Reading{
		Depth:             float64(n),
		OldestAge:         -1, // lists carry no timestamps
		OldestPendingIdle: -1,
		ProducedTotal:     math.NaN(),
		ConsumedTotal:     math.NaN(),
		DeadLetter:        math.NaN(), // Redis has no dead-letter store
		Scheduled:         math.NaN(),
	}, nil
}

// readStream reads a consumer group in one pipelined round trip, plus one
// XRANGE round trip only when there is an undelivered backlog whose first
// entry (or size) the first round could not tell.
func (r *Redis) readStream(ctx context.Context, c *redis.Client, q Query) (Reading, error) {
	// Do() rather than the typed XInfoGroups/XPending helpers: those turn a
	// nil entries-read or lag into 0, and that nil is what tells us whether
	// Redis' lag can be trusted.
	pipe := c.Pipeline()
	groupsCmd := pipe.Do(ctx, "XINFO", "GROUPS", q.Name)
	streamCmd := pipe.Do(ctx, "XINFO", "STREAM", q.Name)
	pendingCmd := pipe.Do(ctx, "XPENDING", q.Name, q.Group, "-", "+", r.opts.PendingScan)
	timeCmd := pipe.Do(ctx, "TIME")
	// Exec's error is the first failed command's; each command is inspected
	// below so the error names the command that failed. A connection that
	// cannot be set up (AUTH refused: WRONGPASS, NOAUTH) fails before any
	// command is sent, and go-redis leaves the commands with neither a
	// reply nor an error: Exec's error is then theirs.
	_, execErr := pipe.Exec(ctx)
	result := func(cmd *redis.Cmd) (any, error) {
		v, err := cmd.Result()
		if err == nil && v == nil && execErr != nil {
			return nil, execErr
		}
		return v, err
	}

	groupsReply, err := result(groupsCmd)
	if err != nil {
		if isNoSuchKey(err) {
			return Reading{}, fmt.Errorf("stream %q: %w", q.Name, ErrStreamNotFound)
		}
		return Reading{}, fmt.Errorf("XINFO GROUPS: %w", err)
	}
	g, found, err := findGroup(groupsReply, q.Group)
	if err != nil {
		return Reading{}, fmt.Errorf("XINFO GROUPS: %w", err)
	}
	if !found {
		return Reading{}, fmt.Errorf("group %q on stream %q: %w", q.Group, q.Name, ErrGroupNotFound)
	}
	streamReply, err := result(streamCmd)
	if err != nil {
		return Reading{}, fmt.Errorf("XINFO STREAM: %w", err)
	}
	s, err := parseStreamInfo(streamReply)
	if err != nil {
		return Reading{}, fmt.Errorf("XINFO STREAM: %w", err)
	}
	pendingReply, err := result(pendingCmd)
	if err != nil {
		return Reading{}, fmt.Errorf("XPENDING: %w", err)
	}
	pending, err := parsePending(pendingReply)
	if err != nil {
		return Reading{}, fmt.Errorf("XPENDING: %w", err)
	}
	timeReply, err := result(timeCmd)
	if err != nil {
		return Reading{}, fmt.Errorf("TIME: %w", err)
	}
	serverNow, err := parseTime(timeReply)
	if err != nil {
		return Reading{}, fmt.Errorf("TIME: %w", err)
	}

	b, err := r.backlog(ctx, c, q, g, s)
	if err != nil {
		return Reading{}, err
	}

	rd := Reading{
		Depth:             float64(b.depth),
		DepthCapped:       b.capped,
		InFlight:          float64(g.pending),
		OldestPendingIdle: -1,
		ProducedTotal:     math.NaN(),
		ConsumedTotal:     math.NaN(),
		DeadLetter:        math.NaN(),
		Scheduled:         math.NaN(),
	}
	if b.depth > 0 {
		rd.OldestAge = max(serverNow.Sub(time.UnixMilli(int64(b.first.ms))), 0)
	}
	if len(pending) > 0 {
		// XPENDING lists in ID order, so the first entry is the oldest one.
		rd.OldestPendingIdle = pending[0].idle
		for _, p := range pending {
			rd.MaxDeliveries = max(rd.MaxDeliveries, p.deliveries)
		}
	}
	if s.entriesAdded != nil {
		rd.ProducedTotal = float64(*s.entriesAdded)
	}
	switch {
	case g.entriesRead != nil:
		rd.ConsumedTotal = float64(*g.entriesRead)
	case s.entriesAdded != nil && !b.capped:
		// Without entries-read, whatever was added and is no longer waiting
		// has left the backlog. Entries deleted before delivery count as
		// consumed here; that is the best Redis lets us know.
		rd.ConsumedTotal = float64(*s.entriesAdded - b.depth)
	}
	return rd, nil
}

type backlog struct {
	depth  int64
	capped bool
	first  streamID // first undelivered entry; valid when depth > 0
}

// backlog finds how many entries the group has not been delivered yet and
// the first of them.
func (r *Redis) backlog(ctx context.Context, c *redis.Client, q Query, g groupInfo, s streamInfo) (backlog, error) {
	// Nothing generated after last-delivered-id: nothing waiting, whatever
	// lag says. Saves the XRANGE for the common caught-up case.
	if s.lastGenerated != nil && !g.lastDelivered.less(*s.lastGenerated) {
		return backlog{}, nil
	}
	// The whole stream is after last-delivered-id: every entry is waiting.
	if s.length > 0 && s.firstEntry != nil && g.lastDelivered.less(*s.firstEntry) {
		return backlog{depth: s.length, first: *s.firstEntry}, nil
	}

	// Redis 7 computes lag exactly whenever it reports entries-read; when
	// entries-read is nil (tombstones, or fakes like miniredis, which report
	// lag = stream length) lag is at best an estimate, so count instead.
	trusted := g.entriesRead != nil && g.lag != nil
	if trusted && *g.lag == 0 {
		return backlog{}, nil
	}
	limit := r.opts.LagScanLimit
	if trusted {
		limit = 1 // only the first entry, for its age
	}
	start := "-"
	if !g.lastDelivered.isZero() {
		// Exclusive start as its successor ID rather than "(id", which
		// needs Redis 6.2.
		start = g.lastDelivered.next().String()
	}
	reply, err := c.Do(ctx, "XRANGE", q.Name, start, "+", "COUNT", limit).Result()
	if err != nil {
		return backlog{}, fmt.Errorf("XRANGE: %w", err)
	}
	ids, err := parseRangeIDs(reply)
	if err != nil {
		return backlog{}, fmt.Errorf("XRANGE: %w", err)
	}
	if len(ids) == 0 {
		// Lag said there was something, but it was deleted meanwhile.
		return backlog{}, nil
	}
	if trusted {
		return backlog{depth: *g.lag, first: ids[0]}, nil
	}
	return backlog{depth: int64(len(ids)), capped: len(ids) >= limit, first: ids[0]}, nil
}

// isNoSuchKey matches XINFO's reply for a missing key ("ERR no such key").
func isNoSuchKey(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.Contains(strings.ToLower(rerr.Error()), "no such key")
}

// redisClientOptions builds client options for one connection. Errors name
// the connection and are scrubbed of the URL and passwords.
func redisClientOptions(name string, cfg RedisConnection) (*redis.Options, error) {
	if cfg.URL == "" {
		return nil, fmt.Errorf("redis connection %q: URL is empty", name)
	}
	opt, err := redis.ParseURL(cfg.URL)
	if err != nil {
		// url.Error quotes the whole URL, credentials included: keep only
		// its reason. The result is not wrapped for the same reason.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("redis connection %q: invalid URL: %s", name, scrub(err.Error(), cfg))
	}
	if cfg.Password != "" {
		opt.Password = cfg.Password
	}
	// go-redis ignores context deadlines unless told otherwise, and Reader
	// promises to honour them.
	opt.ContextTimeoutEnabled = true
	// Fail fast when Redis is down: the caller polls again within seconds and
	// serves its last good answer meanwhile, whereas go-redis's own retries
	// (3 commands × 5 dials with backoff) would spend the whole read timeout
	// and make every poll during an outage block for it.
	opt.MaxRetries = -1
	opt.DialerRetries = 1
	return opt, nil
}

// scrub removes every form of cfg's secrets from msg.
func scrub(msg string, cfg RedisConnection) string {
	secrets := []string{cfg.Password}
	if info := rawUserinfo(cfg.URL); info != "" {
		secrets = append(secrets, info)
		if _, pw, ok := strings.Cut(info, ":"); ok {
			secrets = append(secrets, pw)
		}
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		forms := []string{s, url.QueryEscape(s), url.PathEscape(s), fmt.Sprintf("%q", s)}
		if u, err := url.PathUnescape(s); err == nil {
			forms = append(forms, u)
		}
		for _, f := range forms {
			if f != "" {
				msg = strings.ReplaceAll(msg, f, redacted)
			}
		}
	}
	return msg
}

// rawUserinfo returns the text between "://" and the last "@" of the
// authority, without parsing: it must work on URLs url.Parse rejects.
func rawUserinfo(raw string) string {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return ""
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ""
	}
	return rest[:at]
}

// redactURL is the URL with its userinfo password replaced, for display.
func redactURL(raw string) string {
	if raw == "" {
		return `""`
	}
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	if info := rawUserinfo(raw); info != "" {
		return strings.Replace(raw, info+"@", redacted+"@", 1)
	}
	return raw
}
