package sources

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/flowscaler/flowscaler/sources/sbtest"
)

// The fakes check flowscaler's use of the SDK against the documented wire
// formats (ATOM entries, CBS, peek-message), not the service's behaviour.

const (
	sbConnName = "bus"
	sbKeyName  = "RootManageSharedAccessKey"
	sbKey      = "Zmxvd3NjYWxlci10ZXN0LWtleS1ub3QtYS1zZWNyZXQ="
	sbBearer   = "flowscaler-test-bearer-token"
)

// sbEnv is a management fake, an AMQP fake and a reader wired to both
// through the emulator-style connection string.
type sbEnv struct {
	mgmt  *sbtest.Management
	amqp  *sbtest.AMQP
	state sbtest.State
	r     *ServiceBus
	clock *fakeClock
}

func startSB(t *testing.T, opts ServiceBusOptions) *sbEnv {
	t.Helper()
	e := &sbEnv{
		mgmt:  sbtest.StartManagement(t, sbtest.ManagementOptions{Fixtures: "testdata/servicebus", KeyName: sbKeyName, Key: sbKey, BearerToken: sbBearer}),
		state: sbtest.State{KeyName: sbKeyName, Key: sbKey, BearerToken: sbBearer, Entities: map[string]sbtest.Entity{}},
		clock: &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)},
	}
	e.amqp = sbtest.StartAMQP(t, e.state)
	opts.HTTPClient = e.mgmt.Client()
	opts.Now = e.clock.Now
	e.r = NewServiceBus(opts)
	t.Cleanup(func() { _ = e.r.Close() })
	if err := e.r.SetConnections(map[string]ServiceBusConnection{sbConnName: e.connection()}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *sbEnv) connection() ServiceBusConnection {
	return ServiceBusConnection{
		Auth:             ServiceBusConnectionString,
		ConnectionString: e.mgmt.ConnectionString(";UseDevelopmentEmulator=true"),
		AMQPEndpoint:     e.amqp.Host,
		Emulator:         true,
	}
}

// setEntity puts an entity into both fakes: counts in the management API,
// messages behind AMQP. path is "orders" or "events/Subscriptions/billing".
func (e *sbEnv) setEntity(t *testing.T, path string, c sbtest.Counts, ent sbtest.Entity) {
	t.Helper()
	if topic, sub, ok := strings.Cut(path, "/Subscriptions/"); ok {
		e.mgmt.SetSubscription(topic, sub, c)
	} else {
		e.mgmt.SetQueue(path, c)
	}
	e.state.Entities[path] = ent
	e.amqp.Set(t, e.state)
}

func (e *sbEnv) ago(d time.Duration) time.Time { return e.clock.Now().Add(-d) }

func sbCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func queueQuery(name string) Query {
	return Query{Kind: ServiceBusQueue, Connection: sbConnName, Name: name}
}

func subQuery(topic, sub string) Query {
	return Query{Kind: ServiceBusSubscription, Connection: sbConnName, Name: topic, Group: sub}
}

// TestServiceBusReadings: the counts, the oldest active message's age and
// the delivery count, from the real SDK against the fakes.
func TestServiceBusReadings(t *testing.T) {
	e := startSB(t, ServiceBusOptions{PeekCount: 8})
	active := func(seq int64, age time.Duration, deliveries uint32) sbtest.Message {
		return sbtest.Message{SequenceNumber: seq, EnqueuedTime: e.ago(age), DeliveryCount: deliveries, Body: "m"}
	}
	scheduled := func(seq int64, age time.Duration) sbtest.Message {
		due := e.clock.Now().Add(time.Hour)
		return sbtest.Message{SequenceNumber: seq, EnqueuedTime: e.ago(age), State: "scheduled", ScheduledEnqueueTime: &due}
	}
	deferred := func(seq int64, age time.Duration) sbtest.Message {
		return sbtest.Message{SequenceNumber: seq, EnqueuedTime: e.ago(age), State: "deferred", DeliveryCount: 1}
	}
	e.setEntity(t, "orders", sbtest.Counts{Active: 3, DeadLetter: 4, Scheduled: 2, Transfer: 5, TransferDeadLetter: 1}, sbtest.Entity{
		// The oldest messages are scheduled and deferred: neither counts.
		Messages: []sbtest.Message{scheduled(1, 3*time.Hour), deferred(2, 2*time.Hour), active(3, 90*time.Second, 2), active(4, time.Minute, 1), active(5, time.Second, 7)},
	})
	e.setEntity(t, "events/Subscriptions/billing", sbtest.Counts{Active: 2, DeadLetter: 9}, sbtest.Entity{
		Messages: []sbtest.Message{active(10, 45*time.Second, 1), active(11, 5*time.Second, 1)},
	})
	e.setEntity(t, "idle", sbtest.Counts{DeadLetter: 1, Scheduled: 4}, sbtest.Entity{})
	e.setEntity(t, "only-scheduled-peeked", sbtest.Counts{Active: 1}, sbtest.Entity{
		Messages: []sbtest.Message{scheduled(1, time.Hour)},
	})

	cases := []struct {
		name string
		q    Query
		want Reading
	}{
		{
			name: "queue",
			q:    queueQuery("orders"),
			want: Reading{Depth: 3, OldestAge: 90 * time.Second, OldestPendingIdle: -1, MaxDeliveries: 7,
				ProducedTotal: math.NaN(), ConsumedTotal: math.NaN(), DeadLetter: 5, Scheduled: 2},
		},
		{
			name: "subscription",
			q:    subQuery("events", "billing"),
			want: Reading{Depth: 2, OldestAge: 45 * time.Second, OldestPendingIdle: -1, MaxDeliveries: 1,
				ProducedTotal: math.NaN(), ConsumedTotal: math.NaN(), DeadLetter: 9, Scheduled: math.NaN()},
		},
		{
			name: "empty-queue-is-not-peeked",
			q:    queueQuery("idle"),
			want: Reading{Depth: 0, OldestAge: 0, OldestPendingIdle: -1,
				ProducedTotal: math.NaN(), ConsumedTotal: math.NaN(), DeadLetter: 1, Scheduled: 4},
		},
		{
			name: "no-active-message-among-those-peeked",
			q:    queueQuery("only-scheduled-peeked"),
			want: Reading{Depth: 1, OldestAge: -1, OldestPendingIdle: -1,
				ProducedTotal: math.NaN(), ConsumedTotal: math.NaN(), DeadLetter: 0, Scheduled: 0},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.r.Read(sbCtx(t), tc.q)
			if err != nil {
				t.Fatal(err)
			}
			tc.want.At = e.clock.Now()
			if d := cmp.Diff(tc.want, got, cmpopts.EquateNaNs()); d != "" {
				t.Errorf("reading (-want +got):\n%s", d)
			}
		})
	}
	if n := e.amqp.Peeks("idle"); n != 0 {
		t.Errorf("the empty queue was peeked %d times, want 0", n)
	}
}

// TestServiceBusPeekStartsAtHeadEveryTime: every read peeks from the head
// with an explicit sequence number; a receiver left to itself would peek
// after its last peek and see ever younger messages.
func TestServiceBusPeekStartsAtHeadEveryTime(t *testing.T) {
	e := startSB(t, ServiceBusOptions{PeekCount: 2})
	var msgs []sbtest.Message
	for i := int64(1); i <= 6; i++ {
		msgs = append(msgs, sbtest.Message{SequenceNumber: i, EnqueuedTime: e.ago(time.Duration(10-i) * time.Minute)})
	}
	e.setEntity(t, "orders", sbtest.Counts{Active: 6}, sbtest.Entity{Messages: msgs})
	for i := range 3 {
		got, err := e.r.Read(sbCtx(t), queueQuery("orders"))
		if err != nil {
			t.Fatal(err)
		}
		if got.OldestAge != 9*time.Minute {
			t.Errorf("read %d: OldestAge = %v, want 9m0s (the head)", i+1, got.OldestAge)
		}
	}
	var froms []int64
	for _, r := range e.amqp.Requests() {
		if r.Op == "peek" {
			froms = append(froms, r.From)
		}
	}
	if d := cmp.Diff([]int64{0, 0, 0}, froms); d != "" {
		t.Errorf("peeks' from-sequence-number (-want +got):\n%s", d)
	}
	// One receiver, attached once, serves every read.
	attaches := 0
	for _, r := range e.amqp.Requests() {
		if r.Op == "attach" {
			attaches++
		}
	}
	if attaches != 1 {
		t.Errorf("receiver attached %d times, want 1 (cached per entity)", attaches)
	}
}

// TestServiceBusPattern: a pattern aggregates the matching entities with
// sum, max or a float average; the age is the oldest over all of them.
func TestServiceBusPattern(t *testing.T) {
	e := startSB(t, ServiceBusOptions{})
	msg := func(age time.Duration) []sbtest.Message {
		return []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: e.ago(age)}}
	}
	e.setEntity(t, "orders-eu", sbtest.Counts{Active: 4, DeadLetter: 1, Scheduled: 1}, sbtest.Entity{Messages: msg(time.Minute)})
	e.setEntity(t, "orders-us", sbtest.Counts{Active: 1, DeadLetter: 2}, sbtest.Entity{Messages: msg(3 * time.Minute)})
	e.setEntity(t, "orders-ap", sbtest.Counts{Active: 0}, sbtest.Entity{})
	e.setEntity(t, "old-orders-x", sbtest.Counts{Active: 100}, sbtest.Entity{Messages: msg(time.Hour)})
	e.setEntity(t, "events/Subscriptions/billing-a", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: msg(10 * time.Second)})
	e.setEntity(t, "events/Subscriptions/billing-b", sbtest.Counts{Active: 3}, sbtest.Entity{Messages: msg(20 * time.Second)})
	e.setEntity(t, "events/Subscriptions/audit", sbtest.Counts{Active: 50}, sbtest.Entity{Messages: msg(time.Hour)})

	cases := []struct {
		name               string
		q                  Query
		depth, dead, sched float64
		oldest             time.Duration
	}{
		{"queues-sum", Query{Kind: ServiceBusQueue, Connection: sbConnName, Pattern: "orders-.*", Aggregation: AggregateSum}, 5, 3, 1, 3 * time.Minute},
		{"queues-max", Query{Kind: ServiceBusQueue, Connection: sbConnName, Pattern: "orders-.*", Aggregation: AggregateMax}, 4, 2, 1, 3 * time.Minute},
		{"queues-avg", Query{Kind: ServiceBusQueue, Connection: sbConnName, Pattern: "orders-.*", Aggregation: AggregateAvg}, 5.0 / 3, 1, 1.0 / 3, 3 * time.Minute},
		{"subscriptions-avg", Query{Kind: ServiceBusSubscription, Connection: sbConnName, Name: "events", Pattern: "billing-.*", Aggregation: AggregateAvg}, 2.5, 0, math.NaN(), 20 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.r.Read(sbCtx(t), tc.q)
			if err != nil {
				t.Fatal(err)
			}
			// A message never delivered reports a delivery count of 1:
			// the SDK adds one to the AMQP header's count of earlier
			// deliveries.
			want := Reading{At: e.clock.Now(), Depth: tc.depth, OldestAge: tc.oldest, OldestPendingIdle: -1, MaxDeliveries: 1,
				ProducedTotal: math.NaN(), ConsumedTotal: math.NaN(), DeadLetter: tc.dead, Scheduled: tc.sched}
			if d := cmp.Diff(want, got, cmpopts.EquateNaNs(), cmpopts.EquateApprox(0, 1e-12)); d != "" {
				t.Errorf("reading (-want +got):\n%s", d)
			}
		})
	}
	if n := e.amqp.Peeks("old-orders-x"); n != 0 {
		t.Errorf("old-orders-x was peeked %d times: the pattern must match whole names", n)
	}

	_, err := e.r.Read(sbCtx(t), Query{Kind: ServiceBusQueue, Connection: sbConnName, Pattern: "invoices-.*", Aggregation: AggregateSum})
	if !errors.Is(err, ErrEntityNotFound) || !strings.Contains(err.Error(), `no queue matches "invoices-.*"`) {
		t.Errorf("pattern matching nothing: error %v, want ErrEntityNotFound naming the pattern", err)
	}
}

// TestServiceBusCoalesced: however many callers read one entity at once,
// the management API and the peek see one request per read interval.
func TestServiceBusCoalesced(t *testing.T) {
	e := startSB(t, ServiceBusOptions{})
	e.setEntity(t, "orders", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: e.ago(time.Minute)}}})
	r := Coalesce(e.r, Cache{TTL: time.Minute}, e.clock.Now)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := r.Read(sbCtx(t), queueQuery("orders")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := e.mgmt.Requests("/orders"); got != 1 {
		t.Errorf("runtime-properties requests = %d, want 1", got)
	}
	if got := e.amqp.Peeks("orders"); got != 1 {
		t.Errorf("peeks = %d, want 1", got)
	}
	e.clock.Advance(time.Minute)
	if _, err := r.Read(sbCtx(t), queueQuery("orders")); err != nil {
		t.Fatal(err)
	}
	if got, peeks := e.mgmt.Requests("/orders"), e.amqp.Peeks("orders"); got != 2 || peeks != 2 {
		t.Errorf("after the interval: %d runtime-properties requests and %d peeks, want 2 and 2", got, peeks)
	}
}

// TestServiceBusFailures: each failure is a clear error naming the entity,
// never a panic and never a reading of 0.
func TestServiceBusFailures(t *testing.T) {
	e := startSB(t, ServiceBusOptions{})
	e.setEntity(t, "orders", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: e.ago(time.Minute)}}})
	e.setEntity(t, "events/Subscriptions/billing", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: e.ago(time.Minute)}}})
	e.mgmt.Malform("events", "billing", true)

	cases := []struct {
		name  string
		q     Query
		is    error
		texts []string
	}{
		{
			name:  "missing-queue",
			q:     queueQuery("no-such-queue"),
			is:    ErrEntityNotFound,
			texts: []string{`servicebus-queue bus/no-such-queue: queue "no-such-queue": entity does not exist`},
		},
		{
			name:  "missing-subscription",
			q:     subQuery("events", "nobody"),
			is:    ErrEntityNotFound,
			texts: []string{`servicebus-subscription bus/events#nobody: subscription "nobody" of topic "events": entity does not exist`},
		},
		{
			name:  "malformed-entry-panics-the-sdk",
			q:     subQuery("events", "billing"),
			is:    ErrSDKPanic,
			texts: []string{"servicebus-subscription bus/events#billing: the Service Bus SDK panicked on the response: runtime error: invalid memory address or nil pointer dereference"},
		},
		{
			name:  "unknown-connection",
			q:     Query{Kind: ServiceBusQueue, Connection: "nope", Name: "orders"},
			is:    ErrUnknownConnection,
			texts: []string{`servicebus-queue nope/orders: servicebus connection "nope": connection is not configured`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.r.Read(sbCtx(t), tc.q)
			if !errors.Is(err, tc.is) {
				t.Fatalf("Read = %+v, %v; want an error matching %v", got, err, tc.is)
			}
			for _, want := range tc.texts {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

// TestServiceBusThrottling: a 429 backs the namespace off for its
// Retry-After (no request reaches it meanwhile), then reads resume.
func TestServiceBusThrottling(t *testing.T) {
	e := startSB(t, ServiceBusOptions{MinBackoff: time.Second, MaxBackoff: time.Minute})
	e.setEntity(t, "orders", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: e.ago(time.Minute)}}})
	e.mgmt.Throttle(1, 7*time.Second)

	_, err := e.r.Read(sbCtx(t), queueQuery("orders"))
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != 429 {
		t.Fatalf("first read: %v, want the 429", err)
	}
	e.clock.Advance(6 * time.Second)
	_, err = e.r.Read(sbCtx(t), queueQuery("orders"))
	if !errors.Is(err, ErrThrottled) || !strings.Contains(err.Error(), "throttled by Service Bus (HTTP 429); not asking again for 1s") {
		t.Fatalf("read within Retry-After: %v, want ErrThrottled with the time left", err)
	}
	if got := e.mgmt.Requests("/orders"); got != 1 {
		t.Errorf("requests during the backoff: %d in all, want 1 (the throttled one)", got)
	}
	e.clock.Advance(time.Second)
	got, err := e.r.Read(sbCtx(t), queueQuery("orders"))
	if err != nil || got.Depth != 2 {
		t.Fatalf("read after Retry-After = %+v, %v; want depth 2", got, err)
	}
}

// TestServiceBusPeekFailures: a peek that is refused, throttled or too
// slow fails the read with the entity named; the next read recovers.
func TestServiceBusPeekFailures(t *testing.T) {
	e := startSB(t, ServiceBusOptions{})
	msgs := []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: e.ago(time.Minute)}}
	e.setEntity(t, "orders", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: msgs})

	t.Run("slow-peek", func(t *testing.T) {
		e.setEntity(t, "orders", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: msgs, PeekDelay: 5 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := e.r.Read(ctx, queueQuery("orders"))
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "servicebus-queue bus/orders: peeking orders:") {
			t.Fatalf("slow peek: %v, want the deadline, naming the entity", err)
		}
	})
	t.Run("server-busy", func(t *testing.T) {
		e.setEntity(t, "orders", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: msgs, PeekStatus: 503, PeekCondition: "com.microsoft:server-busy"})
		_, err := e.r.Read(sbCtx(t), queueQuery("orders"))
		if err == nil || !strings.Contains(err.Error(), "status code 503") {
			t.Fatalf("server busy: %v, want the 503", err)
		}
		_, err = e.r.Read(sbCtx(t), queueQuery("orders"))
		if !errors.Is(err, ErrThrottled) {
			t.Fatalf("read right after ServerBusy: %v, want ErrThrottled (backing off)", err)
		}
		e.clock.Advance(time.Second)
	})
	t.Run("recovers", func(t *testing.T) {
		e.setEntity(t, "orders", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: msgs})
		got, err := e.r.Read(sbCtx(t), queueQuery("orders"))
		if want := e.clock.Now().Sub(msgs[0].EnqueuedTime); err != nil || got.OldestAge != want {
			t.Fatalf("after the failures: %+v, %v; want age %v", got, err, want)
		}
	})
}

// TestServiceBusCBSAuthFailure: a refused put-token is a clear error, not a
// hang or a 0.
func TestServiceBusCBSAuthFailure(t *testing.T) {
	e := startSB(t, ServiceBusOptions{})
	e.setEntity(t, "orders", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: e.ago(time.Minute)}}})
	e.state.CBSStatus = 401
	e.amqp.Set(t, e.state)
	_, err := e.r.Read(sbCtx(t), queueQuery("orders"))
	if err == nil || !strings.Contains(err.Error(), "servicebus-queue bus/orders: peeking orders:") || !strings.Contains(err.Error(), "401") {
		t.Fatalf("refused put-token: %v, want an error naming the entity and the 401", err)
	}
}

// TestServiceBusAzureAD: the Azure AD path sends the credential's token,
// as a bearer header to the management API and a jwt put-token over CBS.
func TestServiceBusAzureAD(t *testing.T) {
	e := startSB(t, ServiceBusOptions{})
	e.setEntity(t, "orders", sbtest.Counts{Active: 2}, sbtest.Entity{Messages: []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: e.ago(time.Minute)}}})
	ad := NewServiceBus(ServiceBusOptions{
		HTTPClient: e.mgmt.Client(),
		Now:        e.clock.Now,
		Credential: func(ServiceBusConnection) (azcore.TokenCredential, error) { return staticToken(sbBearer), nil },
	})
	t.Cleanup(func() { _ = ad.Close() })
	if err := ad.SetConnections(map[string]ServiceBusConnection{sbConnName: {Auth: ServiceBusAzureAD, Namespace: e.mgmt.Host}}); err != nil {
		t.Fatal(err)
	}
	got, err := ad.Read(sbCtx(t), queueQuery("idle-check"))
	if !errors.Is(err, ErrEntityNotFound) {
		t.Fatalf("Read of a missing queue with Azure AD = %+v, %v; want ErrEntityNotFound (the bearer token was accepted)", got, err)
	}
	if n := e.mgmt.AuthFailures(); n != 0 {
		t.Errorf("%d management requests were refused, want 0", n)
	}
}

type staticToken string

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// TestServiceBusConnections: bad connections are refused with the reason
// and never the secret, and nothing changes.
func TestServiceBusConnections(t *testing.T) {
	r := NewServiceBus(ServiceBusOptions{})
	t.Cleanup(func() { _ = r.Close() })
	secret := "c2VjcmV0LXZhbHVlLW5ldmVyLXByaW50ZWQ="
	cases := []struct {
		name string
		conn ServiceBusConnection
		want string
	}{
		{"emulator-not-declared", ServiceBusConnection{Auth: ServiceBusConnectionString, ConnectionString: "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=" + secret + ";UseDevelopmentEmulator=true"},
			`servicebus connection "c": the connection string says UseDevelopmentEmulator=true (AMQP without TLS) but the connection does not set emulator`},
		{"emulator-declared-not-in-string", ServiceBusConnection{Auth: ServiceBusConnectionString, Emulator: true, ConnectionString: "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=" + secret},
			`servicebus connection "c": emulator is set but the connection string lacks UseDevelopmentEmulator=true`},
		{"no-key-name", ServiceBusConnection{Auth: ServiceBusConnectionString, ConnectionString: "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=" + secret},
			`servicebus connection "c": connection string: key "SharedAccessKeyName" must not be empty`},
		{"azure-ad-without-namespace", ServiceBusConnection{Auth: ServiceBusAzureAD},
			`servicebus connection "c": azure-ad needs a fully qualified namespace`},
		{"unknown-auth", ServiceBusConnection{Auth: "password"},
			`servicebus connection "c": auth "password": must be connection-string or azure-ad`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := r.SetConnections(map[string]ServiceBusConnection{"c": tc.conn})
			if err == nil || err.Error() != tc.want {
				t.Fatalf("SetConnections: %v, want %q", err, tc.want)
			}
			for _, s := range []string{err.Error(), tc.conn.String(), fmt.Sprintf("%#v", tc.conn)} {
				if strings.Contains(s, secret) {
					t.Errorf("%q leaks the key", s)
				}
			}
		})
	}
}

// TestServiceBusLive reads a real namespace when FLOWSCALER_TEST_SERVICEBUS
// holds a connection string whose key has Manage rights; it is skipped
// otherwise. FLOWSCALER_TEST_SERVICEBUS_QUEUE names a queue to read (by
// default every queue of the namespace, summed). This is the check of the
// service's own behaviour that the fakes cannot give.
func TestServiceBusLive(t *testing.T) {
	cs := os.Getenv("FLOWSCALER_TEST_SERVICEBUS")
	if cs == "" {
		t.Skip("FLOWSCALER_TEST_SERVICEBUS is not set: no live Service Bus namespace to read")
	}
	r := NewServiceBus(ServiceBusOptions{})
	t.Cleanup(func() { _ = r.Close() })
	if err := r.SetConnections(map[string]ServiceBusConnection{"live": {Auth: ServiceBusConnectionString, ConnectionString: cs}}); err != nil {
		t.Fatal(err)
	}
	q := Query{Kind: ServiceBusQueue, Connection: "live", Pattern: ".*", Aggregation: AggregateSum}
	if name := os.Getenv("FLOWSCALER_TEST_SERVICEBUS_QUEUE"); name != "" {
		q = Query{Kind: ServiceBusQueue, Connection: "live", Name: name}
	}
	rd, err := r.Read(sbCtx(t), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	t.Logf("%s: depth %v, oldest %v, dead letters %v, scheduled %v, max deliveries %d", q, rd.Depth, rd.OldestAge, rd.DeadLetter, rd.Scheduled, rd.MaxDeliveries)
	switch {
	case !(rd.Depth >= 0) || !(rd.DeadLetter >= 0) || !(rd.Scheduled >= 0):
		t.Errorf("counts must be known and >= 0: %+v", rd)
	case rd.Depth == 0 && rd.OldestAge != 0:
		t.Errorf("nothing active but OldestAge = %v, want 0", rd.OldestAge)
	case rd.Depth > 0 && rd.OldestAge < -1:
		t.Errorf("OldestAge = %v, want >= 0 or -1 (unknown)", rd.OldestAge)
	}
	missing := Query{Kind: ServiceBusQueue, Connection: "live", Name: fmt.Sprintf("flowscaler-missing-%d", time.Now().UnixNano())}
	if _, err := r.Read(sbCtx(t), missing); !errors.Is(err, ErrEntityNotFound) {
		t.Errorf("%s: %v, want ErrEntityNotFound", missing, err)
	}
}

// TestServiceBusIdleReceiversClosed: a receiver nobody peeks through for
// receiverIdle is closed, so entities that left a pattern or were
// forgotten do not keep AMQP links open.
func TestServiceBusIdleReceiversClosed(t *testing.T) {
	e := startSB(t, ServiceBusOptions{})
	msg := []sbtest.Message{{SequenceNumber: 1, EnqueuedTime: e.ago(time.Minute)}}
	e.setEntity(t, "a", sbtest.Counts{Active: 1}, sbtest.Entity{Messages: msg})
	e.setEntity(t, "b", sbtest.Counts{Active: 1}, sbtest.Entity{Messages: msg})
	read := func(name string) {
		t.Helper()
		if _, err := e.r.Read(sbCtx(t), queueQuery(name)); err != nil {
			t.Fatal(err)
		}
	}
	attaches := func(entity string) int {
		n := 0
		for _, r := range e.amqp.Requests() {
			if r.Op == "attach" && r.Entity == entity {
				n++
			}
		}
		return n
	}
	read("a")
	e.clock.Advance(receiverIdle / 2)
	read("b")
	read("a") // still cached
	e.clock.Advance(receiverIdle + time.Second)
	read("b") // a has been idle too long
	c, err := e.r.conn(sbConnName)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	var kept []string
	for path := range c.receivers {
		kept = append(kept, path)
	}
	c.mu.Unlock()
	if d := cmp.Diff([]string{"b"}, kept); d != "" {
		t.Errorf("cached receivers (-want +got):\n%s", d)
	}
	read("a")
	if n := attaches("a"); n != 2 {
		t.Errorf("receiver for a attached %d times, want 2 (once, then again after it was closed)", n)
	}
}
