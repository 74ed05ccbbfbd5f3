package sources

import (
	"context"
	"strconv"
	"time"
)

// Kind names a queue source as written in trigger metadata.
type Kind string

const (
	RedisList   Kind = "redis-list"
	RedisStream Kind = "redis-stream"
)

// Query names one queue to read. It is comparable: two ScaledObjects that
// watch the same queue produce equal Queries, so reads coalesce on it.
type Query struct {
	Kind       Kind
	Connection string // name of a connection in flowscaler's config
	Name       string // list or stream key; Service Bus queue, or the topic of subscriptions
	Group      string // consumer group of a stream; Service Bus subscription
	// Pattern, when set, is a regular expression over Service Bus entity
	// names (queues, or the topic's subscriptions) in place of one name,
	// and Aggregation ("sum", "max" or "avg") combines the matches.
	Pattern     string
	Aggregation string
}

// String is the human form used in logs and reasons, e.g. "redis-stream local/orders#workers"
// or `servicebus-queue bus matching "orders-.*" (sum)`.
func (q Query) String() string {
	s := string(q.Kind) + " " + q.Connection
	if q.Name != "" || q.Pattern == "" {
		s += "/" + q.Name
	}
	if q.Group != "" {
		s += "#" + q.Group
	}
	if q.Pattern != "" {
		s += " matching " + strconv.Quote(q.Pattern) + " (" + q.Aggregation + ")"
	}
	return s
}

// Reading is one observation of a queue. Unknown values are NaN (floats) or
// negative (durations): a source never reports unknown as 0.
type Reading struct {
	// At is when the reading was taken (the reader's clock).
	At time.Time
	// Depth is the visible backlog: LLEN for a list, the group's undelivered
	// entries (lag) for a stream.
	Depth float64
	// DepthCapped is true when Depth is a lower bound because counting was
	// bounded (a stream whose lag Redis could not report and whose undelivered
	// range is longer than the scan limit).
	DepthCapped bool
	// InFlight is pending (delivered, unacknowledged) entries of a stream group; 0 for lists.
	InFlight float64
	// OldestAge is the age of the oldest undelivered entry, from stream IDs'
	// millisecond timestamps against the server's clock; -1 when unknown (lists) and 0 when nothing is waiting.
	OldestAge time.Duration
	// OldestPendingIdle is the idle time of the oldest pending entry; -1 when none.
	OldestPendingIdle time.Duration
	// MaxDeliveries is the highest delivery count among the oldest pending entries examined.
	MaxDeliveries int64
	// ProducedTotal is the stream's entries-added counter; NaN when unknown.
	ProducedTotal float64
	// ConsumedTotal is the group's entries-read counter (entries delivered to the group); NaN when unknown.
	ConsumedTotal float64
	// DeadLetter is the number of dead-lettered messages (Service Bus: the
	// dead-letter and transfer-dead-letter subqueues); NaN when unknown.
	// It is never part of Depth: its growth means messages fail.
	DeadLetter float64
	// Scheduled is the number of messages scheduled for later (Service Bus
	// queues); NaN when unknown. Never part of Depth: they must not scale up.
	Scheduled float64
}

// Reader reads one queue. Implementations must honour ctx's deadline.
type Reader interface {
	Read(ctx context.Context, q Query) (Reading, error)
}
