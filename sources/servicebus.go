package sources

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
)

// Service Bus kinds: a queue, or a subscription of a topic.
const (
	ServiceBusQueue        Kind = "servicebus-queue"
	ServiceBusSubscription Kind = "servicebus-subscription"
)

// Aggregations of a Query with a Pattern.
const (
	AggregateSum = "sum"
	AggregateMax = "max"
	AggregateAvg = "avg"
)

var _ Reader = (*ServiceBus)(nil)

var (
	// ErrEntityNotFound is returned for a queue or subscription that does not
	// exist (the SDK answers (nil, nil)), or a pattern that matches none:
	// never an empty backlog, for the same reason as ErrStreamNotFound.
	ErrEntityNotFound = errors.New("entity does not exist")
	// ErrThrottled is returned while a namespace that throttled us is left
	// alone; the caller serves its last good answer meanwhile.
	ErrThrottled = errors.New("throttled by Service Bus")
	// ErrSDKPanic is returned when the SDK panicked on a response (it
	// dereferences fields of the management API's XML without checking).
	ErrSDKPanic = errors.New("the Service Bus SDK panicked on the response")
)

// ServiceBusAuth says how a Service Bus connection authenticates.
type ServiceBusAuth string

// Authentication modes of a ServiceBusConnection.
const (
	// ServiceBusConnectionString: a SAS connection string (or the
	// development emulator's).
	ServiceBusConnectionString ServiceBusAuth = "connection-string"
	// ServiceBusAzureAD: Azure AD through azidentity's DefaultAzureCredential
	// chain (workload identity, managed identity, environment, CLI).
	ServiceBusAzureAD ServiceBusAuth = "azure-ad"
)

// ServiceBusConnection is one named Service Bus namespace from flowscaler's
// config. It is comparable: SetConnections keeps an existing client exactly
// when the new ServiceBusConnection equals the old one.
type ServiceBusConnection struct {
	Auth ServiceBusAuth
	// ConnectionString is the secret of ServiceBusConnectionString.
	ConnectionString string
	// Namespace is the fully qualified namespace of ServiceBusAzureAD,
	// e.g. orders.servicebus.windows.net.
	Namespace string
	// AMQPEndpoint, when set, is the host:port the AMQP connection dials
	// instead of the namespace's (a TCP proxy, or the emulator's AMQP port
	// when the connection string names its management endpoint).
	AMQPEndpoint string
	// Emulator must be set exactly when the connection string says
	// UseDevelopmentEmulator=true, which makes the SDK speak AMQP without
	// TLS: plaintext is chosen in the config, never by a secret alone.
	Emulator bool
}

// String redacts the connection string.
func (c ServiceBusConnection) String() string {
	return fmt.Sprintf("ServiceBusConnection{Auth: %s, Namespace: %s, ConnectionString: %s, AMQPEndpoint: %s, Emulator: %t}",
		c.Auth, c.namespace(), setOrUnset(c.ConnectionString), c.AMQPEndpoint, c.Emulator)
}

// GoString redacts for %#v too.
func (c ServiceBusConnection) GoString() string { return c.String() }

// LogValue implements slog.LogValuer with the same redaction as String.
func (c ServiceBusConnection) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("auth", string(c.Auth)),
		slog.String("namespace", c.namespace()),
		slog.Bool("connection_string_set", c.ConnectionString != ""),
		slog.String("amqp_endpoint", c.AMQPEndpoint),
		slog.Bool("emulator", c.Emulator),
	)
}

func setOrUnset(s string) string {
	if s == "" {
		return "unset"
	}
	return "set"
}

// namespace is the namespace's host: Namespace, or the connection
// string's endpoint host (not a secret).
func (c ServiceBusConnection) namespace() string {
	if c.Namespace != "" {
		return c.Namespace
	}
	ep, _ := connectionStringField(c.ConnectionString, "Endpoint")
	_, host, _ := strings.Cut(ep, "://")
	return strings.TrimSuffix(host, "/")
}

// connectionStringField returns the value of key in a Service Bus
// connection string (keys are case-insensitive, values may contain '=').
func connectionStringField(cs, key string) (string, bool) {
	for _, part := range strings.Split(cs, ";") {
		k, v, ok := strings.Cut(part, "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), key) {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// sasSignature is the signature of a SharedAccessSignature token (sig=…,
// or sig%3D… URL-encoded, up to the next separator): a bearer credential
// until it expires, which a server or proxy may echo from the
// Authorization header it refused, and the SDK's errors quote the
// response's body.
var sasSignature = regexp.MustCompile(`(?i)sig(=|%3D)[^&\s"'<>;]+`)

// scrubServiceBus returns err with every SAS signature and the connection
// string's secrets hidden from its text; errors.Is and errors.As still see
// the original.
func scrubServiceBus(err error, cfg ServiceBusConnection) error {
	msg := sasSignature.ReplaceAllString(err.Error(), "sig${1}"+redacted)
	secrets := []string{cfg.ConnectionString}
	for _, key := range []string{"SharedAccessKey", "SharedAccessSignature"} {
		if v, ok := connectionStringField(cfg.ConnectionString, key); ok {
			secrets = append(secrets, v)
		}
	}
	if msg = redactSecrets(msg, secrets); msg == err.Error() {
		return err
	}
	return scrubbedError{msg: msg, err: err}
}

// scrubbedError is an error whose text had secrets removed.
type scrubbedError struct {
	msg string
	err error
}

func (e scrubbedError) Error() string { return e.msg }
func (e scrubbedError) Unwrap() error { return e.err }

// ServiceBusOptions tune a Service Bus reader. Zero values select the defaults.
type ServiceBusOptions struct {
	// PeekCount is how many messages one peek returns; the oldest active
	// one among them gives the age. Default 32.
	PeekCount int
	// MaxEntities bounds how many entities a Pattern may match. Default 50.
	MaxEntities int
	// PeekConcurrency bounds the peeks of one pattern read. Default 4.
	PeekConcurrency int
	// MinBackoff and MaxBackoff bound how long a throttled namespace is left
	// alone: Retry-After when the service gives one, else MinBackoff
	// doubling per throttled read up to MaxBackoff. Defaults 1s and 60s.
	MinBackoff, MaxBackoff time.Duration
	// HTTPClient carries the management API's requests; nil is azcore's
	// default transport.
	HTTPClient *http.Client
	// TLSConfig is used for AMQP over TLS; nil verifies against the system roots.
	TLSConfig *tls.Config
	// Credential returns the Azure AD credential of a connection; nil is
	// azidentity.NewDefaultAzureCredential.
	Credential func(ServiceBusConnection) (azcore.TokenCredential, error)
	// Now stamps Reading.At and measures message ages. Default time.Now.
	Now func() time.Time
}

const (
	defaultPeekCount       = 32
	defaultMaxEntities     = 50
	defaultPeekConcurrency = 4
	// fromSequenceStart is the sequence number every peek starts from: the
	// head of the entity. Passing it explicitly matters: a Receiver peeks
	// from after its last peek otherwise, and repeated reads would walk
	// forward through the queue.
	fromSequenceStart int64 = 0
)

// ServiceBus reads Azure Service Bus queues and topic subscriptions over
// named connections: counts from the management API's runtime properties,
// the oldest active message's age from a peek at the head of the entity.
// It is safe for concurrent use; connections can be replaced while reads
// run.
type ServiceBus struct {
	opts ServiceBusOptions

	mu     sync.RWMutex
	conns  map[string]*sbConn
	closed bool
}

type sbConn struct {
	cfg    ServiceBusConnection
	admin  *admin.Client
	client *azservicebus.Client

	mu        sync.Mutex
	receivers map[string]*sbReceiver // entity path -> receiver
	// backoffUntil: reads fail fast with ErrThrottled until then.
	backoffUntil time.Time
	backoff      time.Duration // the last backoff, doubled on the next throttling
	throttleErr  string
}

// sbReceiver serialises the peeks of one cached receiver.
type sbReceiver struct {
	mu       sync.Mutex
	r        *azservicebus.Receiver
	lastUsed time.Time // guarded by sbConn.mu
}

// receiverIdle is how long a receiver nobody peeks through keeps its
// links: entities leave a pattern, ScaledObjects are deleted.
const receiverIdle = 10 * time.Minute

// NewServiceBus returns a reader with no connections; call SetConnections.
func NewServiceBus(opts ServiceBusOptions) *ServiceBus {
	if opts.PeekCount <= 0 {
		opts.PeekCount = defaultPeekCount
	}
	if opts.MaxEntities <= 0 {
		opts.MaxEntities = defaultMaxEntities
	}
	if opts.PeekConcurrency <= 0 {
		opts.PeekConcurrency = defaultPeekConcurrency
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(60*time.Second, opts.MinBackoff)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Credential == nil {
		opts.Credential = func(ServiceBusConnection) (azcore.TokenCredential, error) {
			return azidentity.NewDefaultAzureCredential(nil)
		}
	}
	return &ServiceBus{opts: opts, conns: map[string]*sbConn{}}
}

// SetConnections replaces the set of named connections, for start-up and
// reload alike: unchanged connections keep their clients (and AMQP
// connections), new or changed ones get new clients, and clients of removed
// or changed ones are closed. All-or-nothing: on any error nothing changes,
// and the error names every bad connection, never its secret.
func (r *ServiceBus) SetConnections(conns map[string]ServiceBusConnection) error {
	names := make([]string, 0, len(conns))
	for name := range conns {
		names = append(names, name)
	}
	sort.Strings(names)

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	next := make(map[string]*sbConn, len(conns))
	var created []*sbConn
	var errs []error
	for _, name := range names {
		cfg := conns[name]
		if old, ok := r.conns[name]; ok && old.cfg == cfg {
			next[name] = old
			continue
		}
		c, err := r.newConn(name, cfg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		created = append(created, c)
		next[name] = c
	}
	if len(errs) > 0 {
		r.mu.Unlock()
		for _, c := range created {
			c.close()
		}
		return errors.Join(errs...)
	}
	var stale []*sbConn
	for name, old := range r.conns {
		if next[name] != old {
			stale = append(stale, old)
		}
	}
	r.conns = next
	r.mu.Unlock()
	for _, c := range stale {
		c.close()
	}
	return nil
}

// newConn builds the clients of one connection. Neither client dials
// until the first read.
func (r *ServiceBus) newConn(name string, cfg ServiceBusConnection) (*sbConn, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("servicebus connection %q: "+format, append([]any{name}, args...)...)
	}
	// The SDK's own retries would spend the whole read timeout on a
	// throttled or failing namespace; flowscaler polls again within
	// seconds, backs off from throttling itself (see throttled) and serves
	// its last good answer meanwhile.
	adminOpts := &admin.ClientOptions{ClientOptions: azcore.ClientOptions{
		Retry: policy.RetryOptions{MaxRetries: -1},
	}}
	if r.opts.HTTPClient != nil {
		adminOpts.Transport = r.opts.HTTPClient
	}
	// One retry lets the SDK recover a dropped link or connection within a
	// read; the read's deadline bounds it.
	sbOpts := &azservicebus.ClientOptions{
		TLSConfig:      r.opts.TLSConfig,
		CustomEndpoint: cfg.AMQPEndpoint,
		RetryOptions: azservicebus.RetryOptions{
			MaxRetries: 1, RetryDelay: 100 * time.Millisecond, MaxRetryDelay: 500 * time.Millisecond,
		},
	}
	c := &sbConn{cfg: cfg, receivers: map[string]*sbReceiver{}}
	var err error
	switch cfg.Auth {
	case ServiceBusConnectionString:
		if cfg.ConnectionString == "" {
			return nil, bad("connection string is empty")
		}
		emu, _ := connectionStringField(cfg.ConnectionString, "UseDevelopmentEmulator")
		isEmu, _ := strconv.ParseBool(emu)
		switch {
		case isEmu && !cfg.Emulator:
			return nil, bad("the connection string says UseDevelopmentEmulator=true (AMQP without TLS) but the connection does not set emulator")
		case !isEmu && cfg.Emulator:
			return nil, bad("emulator is set but the connection string lacks UseDevelopmentEmulator=true")
		}
		// Errors of the SDK's parser name keys, never values.
		if c.admin, err = admin.NewClientFromConnectionString(cfg.ConnectionString, adminOpts); err != nil {
			return nil, bad("connection string: %v", err)
		}
		if c.client, err = azservicebus.NewClientFromConnectionString(cfg.ConnectionString, sbOpts); err != nil {
			return nil, bad("connection string: %v", err)
		}
	case ServiceBusAzureAD:
		if cfg.Namespace == "" {
			return nil, bad("azure-ad needs a fully qualified namespace")
		}
		if cfg.Emulator {
			return nil, bad("the emulator takes a connection string, not azure-ad")
		}
		cred, err := r.opts.Credential(cfg)
		if err != nil {
			return nil, bad("azure-ad credential: %v", err)
		}
		if c.admin, err = admin.NewClient(cfg.Namespace, cred, adminOpts); err != nil {
			return nil, bad("%v", err)
		}
		if c.client, err = azservicebus.NewClient(cfg.Namespace, cred, sbOpts); err != nil {
			return nil, bad("%v", err)
		}
	default:
		return nil, bad("auth %q: must be %s or %s", cfg.Auth, ServiceBusConnectionString, ServiceBusAzureAD)
	}
	return c, nil
}

// close closes the AMQP client, and with it every cached receiver.
func (c *sbConn) close() {
	if c.client == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.client.Close(ctx)
}

// Close closes every client. Reads after Close fail with ErrClosed.
func (r *ServiceBus) Close() error {
	r.mu.Lock()
	conns := r.conns
	r.conns = map[string]*sbConn{}
	r.closed = true
	r.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	return nil
}

func (r *ServiceBus) conn(name string) (*sbConn, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return nil, ErrClosed
	}
	c, ok := r.conns[name]
	if !ok {
		return nil, fmt.Errorf("servicebus connection %q: %w", name, ErrUnknownConnection)
	}
	return c, nil
}

// sbEntity is one entity's runtime counts.
type sbEntity struct {
	path                          string // AMQP path: "orders" or "events/Subscriptions/billing"
	active, deadLetter, scheduled float64
}

// sbPeek is what a peek found.
type sbPeek struct {
	oldest     time.Duration // -1: no active message among those peeked
	deliveries int64
}

// Read implements Reader. Errors start with the Query and never carry
// secrets.
//
// Depth is the active message count: Service Bus counts locked (in-flight)
// messages as active and does not tell them apart, so InFlight is 0.
// Scheduled messages are never backlog. OldestAge is the age of the oldest
// active message among the first PeekCount peeked (scheduled and deferred
// ones are skipped), from its enqueued time against this reader's clock;
// -1 when none of them is active, 0 when nothing is waiting. With a
// Pattern, counts are combined by the Aggregation and the age is the
// oldest over every match.
func (r *ServiceBus) Read(ctx context.Context, q Query) (Reading, error) {
	c, err := r.conn(q.Connection)
	if err != nil {
		return Reading{}, fmt.Errorf("%s: %w", q, err)
	}
	if q.Kind != ServiceBusQueue && q.Kind != ServiceBusSubscription {
		return Reading{}, fmt.Errorf("%s: kind %q is not a servicebus kind", q, q.Kind)
	}
	if err := c.throttled(r.opts.Now()); err != nil {
		return Reading{}, fmt.Errorf("%s: %w", q, err)
	}
	rd, err := r.read(ctx, c, q)
	if err != nil {
		err = scrubServiceBus(err, c.cfg)
		c.observe(err, r.opts.Now(), r.opts.MinBackoff, r.opts.MaxBackoff)
		return Reading{}, fmt.Errorf("%s: %w", q, err)
	}
	c.observe(nil, r.opts.Now(), r.opts.MinBackoff, r.opts.MaxBackoff)
	return rd, nil
}

func (r *ServiceBus) read(ctx context.Context, c *sbConn, q Query) (Reading, error) {
	var pattern *regexp.Regexp
	if q.Pattern != "" {
		var err error
		// Anchored: "orders-.*" must not match "old-orders-x".
		if pattern, err = regexp.Compile("^(?:" + q.Pattern + ")$"); err != nil {
			return Reading{}, fmt.Errorf("entity pattern: %w", err)
		}
		switch q.Aggregation {
		case AggregateSum, AggregateMax, AggregateAvg:
		default:
			return Reading{}, fmt.Errorf("aggregation %q: must be %s, %s or %s", q.Aggregation, AggregateSum, AggregateMax, AggregateAvg)
		}
	}
	entities, err := r.counts(ctx, c, q, pattern)
	if err != nil {
		return Reading{}, err
	}
	peeks, err := r.peekAll(ctx, c, q, entities)
	if err != nil {
		return Reading{}, err
	}
	return r.combine(q, entities, peeks), nil
}

// combine aggregates the entities' counts and peeks into one Reading.
func (r *ServiceBus) combine(q Query, entities []sbEntity, peeks []sbPeek) Reading {
	agg := func(v func(sbEntity) float64) float64 {
		out := 0.0
		for i, e := range entities {
			x := v(e)
			switch {
			case math.IsNaN(x):
				return math.NaN()
			case q.Aggregation == AggregateMax && i > 0:
				out = max(out, x)
			default:
				out += x
			}
		}
		if q.Aggregation == AggregateAvg {
			out /= float64(len(entities))
		}
		return out
	}
	rd := Reading{
		At:                r.opts.Now(),
		Depth:             agg(func(e sbEntity) float64 { return e.active }),
		OldestAge:         0,
		OldestPendingIdle: -1,
		ProducedTotal:     math.NaN(),
		ConsumedTotal:     math.NaN(),
		DeadLetter:        agg(func(e sbEntity) float64 { return e.deadLetter }),
		Scheduled:         agg(func(e sbEntity) float64 { return e.scheduled }),
	}
	known, waiting := false, false
	for i, e := range entities {
		if e.active <= 0 {
			continue
		}
		waiting = true
		p := peeks[i]
		rd.MaxDeliveries = max(rd.MaxDeliveries, p.deliveries)
		if p.oldest >= 0 {
			rd.OldestAge = max(rd.OldestAge, p.oldest)
			known = true
		}
	}
	if waiting && !known {
		rd.OldestAge = -1
	}
	return rd
}

// counts reads the runtime properties of the Query's entity, or of every
// entity its pattern matches: one management request per entity (a page of
// up to 100 for a pattern).
func (r *ServiceBus) counts(ctx context.Context, c *sbConn, q Query, pattern *regexp.Regexp) ([]sbEntity, error) {
	var out []sbEntity
	err := safely(func() error {
		var err error
		switch {
		case q.Kind == ServiceBusQueue && pattern == nil:
			var e sbEntity
			e, err = queueCounts(ctx, c.admin, q.Name)
			out = []sbEntity{e}
		case q.Kind == ServiceBusQueue:
			out, err = listQueues(ctx, c.admin, pattern, r.opts.MaxEntities)
		case pattern == nil:
			var e sbEntity
			e, err = subscriptionCounts(ctx, c.admin, q.Name, q.Group)
			out = []sbEntity{e}
		default:
			out, err = listSubscriptions(ctx, c.admin, q.Name, pattern, r.opts.MaxEntities)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		what := "queue"
		if q.Kind == ServiceBusSubscription {
			what = fmt.Sprintf("subscription of topic %q", q.Name)
		}
		return nil, fmt.Errorf("no %s matches %q: %w", what, q.Pattern, ErrEntityNotFound)
	}
	return out, nil
}

func queueCounts(ctx context.Context, a *admin.Client, name string) (sbEntity, error) {
	resp, err := a.GetQueueRuntimeProperties(ctx, name, nil)
	if err != nil {
		return sbEntity{}, fmt.Errorf("queue %q runtime properties: %w", name, err)
	}
	if resp == nil {
		return sbEntity{}, fmt.Errorf("queue %q: %w", name, ErrEntityNotFound)
	}
	return queueEntity(name, resp.QueueRuntimeProperties), nil
}

func queueEntity(name string, p admin.QueueRuntimeProperties) sbEntity {
	return sbEntity{
		path:       name,
		active:     float64(p.ActiveMessageCount),
		deadLetter: float64(p.DeadLetterMessageCount) + float64(p.TransferDeadLetterMessageCount),
		scheduled:  float64(p.ScheduledMessageCount),
	}
}

func subscriptionCounts(ctx context.Context, a *admin.Client, topic, sub string) (sbEntity, error) {
	resp, err := a.GetSubscriptionRuntimeProperties(ctx, topic, sub, nil)
	if err != nil {
		return sbEntity{}, fmt.Errorf("subscription %q of topic %q runtime properties: %w", sub, topic, err)
	}
	if resp == nil {
		return sbEntity{}, fmt.Errorf("subscription %q of topic %q: %w", sub, topic, ErrEntityNotFound)
	}
	return subscriptionEntity(topic, sub, resp.SubscriptionRuntimeProperties), nil
}

// subscriptionEntity: scheduled messages wait in the topic, not in its
// subscriptions, so a subscription's scheduled count is unknown.
func subscriptionEntity(topic, sub string, p admin.SubscriptionRuntimeProperties) sbEntity {
	return sbEntity{
		path:       topic + "/Subscriptions/" + sub,
		active:     float64(p.ActiveMessageCount),
		deadLetter: float64(p.DeadLetterMessageCount) + float64(p.TransferDeadLetterMessageCount),
		scheduled:  math.NaN(),
	}
}

// listPage is the page size of pattern reads: the service's maximum.
const listPage = 100

func listQueues(ctx context.Context, a *admin.Client, pattern *regexp.Regexp, limit int) ([]sbEntity, error) {
	var out []sbEntity
	pager := a.NewListQueuesRuntimePropertiesPager(&admin.ListQueuesRuntimePropertiesOptions{MaxPageSize: listPage})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing queues: %w", err)
		}
		for _, p := range page.QueueRuntimeProperties {
			if pattern.MatchString(p.QueueName) {
				out = append(out, queueEntity(p.QueueName, p.QueueRuntimeProperties))
			}
		}
		if len(out) > limit {
			return nil, fmt.Errorf("entity pattern %q matches more than %d queues: narrow it", pattern, limit)
		}
	}
	return out, nil
}

func listSubscriptions(ctx context.Context, a *admin.Client, topic string, pattern *regexp.Regexp, limit int) ([]sbEntity, error) {
	var out []sbEntity
	pager := a.NewListSubscriptionsRuntimePropertiesPager(topic, &admin.ListSubscriptionsRuntimePropertiesOptions{MaxPageSize: listPage})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing subscriptions of topic %q: %w", topic, err)
		}
		for _, p := range page.SubscriptionRuntimeProperties {
			if pattern.MatchString(p.SubscriptionName) {
				out = append(out, subscriptionEntity(topic, p.SubscriptionName, p.SubscriptionRuntimeProperties))
			}
		}
		if len(out) > limit {
			return nil, fmt.Errorf("entity pattern %q matches more than %d subscriptions of topic %q: narrow it", pattern, limit, topic)
		}
	}
	return out, nil
}

// peekAll peeks every entity with active messages, PeekConcurrency at a
// time; the first error fails the read.
func (r *ServiceBus) peekAll(ctx context.Context, c *sbConn, q Query, entities []sbEntity) ([]sbPeek, error) {
	peeks := make([]sbPeek, len(entities))
	errs := make([]error, len(entities))
	sem := make(chan struct{}, r.opts.PeekConcurrency)
	var wg sync.WaitGroup
	for i, e := range entities {
		if e.active <= 0 {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			peeks[i], errs[i] = r.peek(ctx, c, q.Kind, e)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("peeking %s: %w", entities[i].path, err)
		}
	}
	return peeks, nil
}

// peek looks at the head of one entity: PeekCount messages from the first
// sequence number, without locking them. The receiver is cached per
// entity, and dropped after a failure so that the next read starts from
// fresh links.
func (r *ServiceBus) peek(ctx context.Context, c *sbConn, kind Kind, e sbEntity) (sbPeek, error) {
	rcv, err := c.receiver(kind, e, r.opts.Now())
	if err != nil {
		return sbPeek{}, err
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	var msgs []*azservicebus.ReceivedMessage
	err = safely(func() error {
		from := fromSequenceStart
		var err error
		msgs, err = rcv.r.PeekMessages(ctx, r.opts.PeekCount, &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
		return err
	})
	if err != nil {
		c.dropReceiver(e.path, rcv)
		return sbPeek{}, err
	}
	return oldestActive(msgs, r.opts.Now()), nil
}

// oldestActive finds the first active message in sequence order (the SDK
// returns peeked messages sorted): scheduled messages are not due yet and
// deferred ones wait for an explicit receive, so neither is backlog.
// Deliveries is the highest delivery count among the active ones.
func oldestActive(msgs []*azservicebus.ReceivedMessage, now time.Time) sbPeek {
	p := sbPeek{oldest: -1}
	for _, m := range msgs {
		if m == nil || m.State != azservicebus.MessageStateActive {
			continue
		}
		p.deliveries = max(p.deliveries, int64(m.DeliveryCount))
		if p.oldest < 0 && m.EnqueuedTime != nil {
			p.oldest = max(now.Sub(*m.EnqueuedTime), 0)
		}
	}
	return p
}

func (c *sbConn) receiver(kind Kind, e sbEntity, now time.Time) (*sbReceiver, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for path, rcv := range c.receivers {
		if path != e.path && now.Sub(rcv.lastUsed) > receiverIdle {
			delete(c.receivers, path)
			go closeReceiver(rcv)
		}
	}
	if rcv, ok := c.receivers[e.path]; ok {
		rcv.lastUsed = now
		return rcv, nil
	}
	var r *azservicebus.Receiver
	var err error
	if kind == ServiceBusQueue {
		r, err = c.client.NewReceiverForQueue(e.path, nil)
	} else {
		topic, sub, _ := strings.Cut(e.path, "/Subscriptions/")
		r, err = c.client.NewReceiverForSubscription(topic, sub, nil)
	}
	if err != nil {
		return nil, err
	}
	rcv := &sbReceiver{r: r, lastUsed: now}
	c.receivers[e.path] = rcv
	return rcv, nil
}

func (c *sbConn) dropReceiver(path string, rcv *sbReceiver) {
	c.mu.Lock()
	if c.receivers[path] == rcv {
		delete(c.receivers, path)
	}
	c.mu.Unlock()
	go closeReceiver(rcv)
}

// closeReceiver detaches a receiver's links once its peek, if any, is over.
func closeReceiver(rcv *sbReceiver) {
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = rcv.r.Close(ctx)
}

// throttled returns ErrThrottled while the namespace is being left alone.
func (c *sbConn) throttled(now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Before(c.backoffUntil) {
		return fmt.Errorf("%w (%s); not asking again for %s", ErrThrottled, c.throttleErr, c.backoffUntil.Sub(now).Round(time.Millisecond))
	}
	return nil
}

// observe starts or extends a backoff after a throttled read: Retry-After
// when the service gave one, else the previous backoff doubled, between
// lo and hi. Any other outcome ends the backoff sequence.
func (c *sbConn) observe(err error, now time.Time, lo, hi time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	retryAfter, throttled := throttling(err)
	if !throttled {
		if err == nil {
			c.backoff = 0
		}
		return
	}
	d := min(max(2*c.backoff, lo), hi)
	if retryAfter > 0 {
		d = min(max(retryAfter, lo), hi)
	}
	c.backoff = d
	c.backoffUntil = now.Add(d)
	c.throttleErr = throttleSummary(err)
}

// throttling reports whether err is the service asking us to slow down:
// HTTP 429 or 503 (ServerBusy) from the management API, the AMQP
// condition com.microsoft:server-busy, or a management operation answered
// with status 429 or 503; with the Retry-After it gave, if any.
func throttling(err error) (time.Duration, bool) {
	if err == nil {
		return 0, false
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) && (re.StatusCode == http.StatusTooManyRequests || re.StatusCode == http.StatusServiceUnavailable) {
		var after time.Duration
		if re.RawResponse != nil {
			if s, err := strconv.Atoi(re.RawResponse.Header.Get("Retry-After")); err == nil && s > 0 {
				after = time.Duration(s) * time.Second
			}
		}
		return after, true
	}
	var rpc interface{ RPCCode() int }
	if errors.As(err, &rpc) && (rpc.RPCCode() == http.StatusTooManyRequests || rpc.RPCCode() == http.StatusServiceUnavailable) {
		return 0, true
	}
	return 0, strings.Contains(err.Error(), "com.microsoft:server-busy")
}

func throttleSummary(err error) string {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return fmt.Sprintf("HTTP %d", re.StatusCode)
	}
	return "server busy"
}

// safely runs f and turns a panic inside the SDK into ErrSDKPanic: the
// management API's XML is dereferenced without nil checks, and a malformed
// answer must fail one read, not the daemon.
func safely(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrSDKPanic, p)
		}
	}()
	return f()
}
