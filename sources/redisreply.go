package sources

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Raw reply parsing for the stream commands. go-redis hands Do() replies
// over as RESP2 flat arrays or RESP3 maps depending on the negotiated
// protocol, with nil for a null; both shapes are accepted here so that a
// connection URL's protocol= setting cannot change what we read.

// streamID is a stream entry ID, "<ms>-<seq>".
type streamID struct{ ms, seq uint64 }

func parseStreamID(s string) (streamID, error) {
	msPart, seqPart, ok := strings.Cut(s, "-")
	if !ok {
		return streamID{}, fmt.Errorf("malformed stream ID %q", s)
	}
	ms, err1 := strconv.ParseUint(msPart, 10, 64)
	seq, err2 := strconv.ParseUint(seqPart, 10, 64)
	if err1 != nil || err2 != nil {
		return streamID{}, fmt.Errorf("malformed stream ID %q", s)
	}
	return streamID{ms: ms, seq: seq}, nil
}

func (id streamID) String() string { return fmt.Sprintf("%d-%d", id.ms, id.seq) }

func (id streamID) isZero() bool { return id == streamID{} }

func (id streamID) less(o streamID) bool {
	return id.ms < o.ms || id.ms == o.ms && id.seq < o.seq
}

// next is the smallest ID greater than id.
func (id streamID) next() streamID {
	if id.seq == math.MaxUint64 {
		return streamID{ms: id.ms + 1}
	}
	return streamID{ms: id.ms, seq: id.seq + 1}
}

// groupInfo is one entry of XINFO GROUPS. entriesRead and lag are nil when
// Redis reports them as nil or does not report them (before 7.0).
type groupInfo struct {
	pending       int64
	lastDelivered streamID
	entriesRead   *int64
	lag           *int64
}

// findGroup picks the named group out of an XINFO GROUPS reply.
func findGroup(reply any, name string) (groupInfo, bool, error) {
	groups, ok := reply.([]any)
	if !ok {
		return groupInfo{}, false, fmt.Errorf("unexpected reply type %T", reply)
	}
	for _, raw := range groups {
		m, err := replyMap(raw)
		if err != nil {
			return groupInfo{}, false, err
		}
		if n, _ := m["name"].(string); n != name {
			continue
		}
		var g groupInfo
		if g.pending, err = replyInt(m["pending"]); err != nil {
			return groupInfo{}, false, fmt.Errorf("pending: %w", err)
		}
		ld, _ := m["last-delivered-id"].(string)
		if g.lastDelivered, err = parseStreamID(ld); err != nil {
			return groupInfo{}, false, fmt.Errorf("last-delivered-id: %w", err)
		}
		if g.entriesRead, err = optInt(m, "entries-read"); err != nil {
			return groupInfo{}, false, err
		}
		if g.lag, err = optInt(m, "lag"); err != nil {
			return groupInfo{}, false, err
		}
		return g, true, nil
	}
	return groupInfo{}, false, nil
}

// streamInfo is the part of XINFO STREAM we use. Pointers are nil when the
// field is missing or null (older Redis, fakes, an empty stream).
type streamInfo struct {
	length        int64
	lastGenerated *streamID
	firstEntry    *streamID
	entriesAdded  *int64
}

func parseStreamInfo(reply any) (streamInfo, error) {
	m, err := replyMap(reply)
	if err != nil {
		return streamInfo{}, err
	}
	var s streamInfo
	if s.length, err = replyInt(m["length"]); err != nil {
		return streamInfo{}, fmt.Errorf("length: %w", err)
	}
	if v, ok := m["last-generated-id"].(string); ok {
		if id, err := parseStreamID(v); err == nil {
			s.lastGenerated = &id
		}
	}
	if e, ok := m["first-entry"].([]any); ok && len(e) > 0 {
		if v, ok := e[0].(string); ok {
			if id, err := parseStreamID(v); err == nil {
				s.firstEntry = &id
			}
		}
	}
	if s.entriesAdded, err = optInt(m, "entries-added"); err != nil {
		return streamInfo{}, err
	}
	return s, nil
}

type pendingEntry struct {
	idle       time.Duration
	deliveries int64
}

// parsePending reads an extended XPENDING reply: [id, consumer, idle-ms, deliveries]...
func parsePending(reply any) ([]pendingEntry, error) {
	if reply == nil {
		return nil, nil
	}
	rows, ok := reply.([]any)
	if !ok {
		return nil, fmt.Errorf("unexpected reply type %T", reply)
	}
	out := make([]pendingEntry, 0, len(rows))
	for _, raw := range rows {
		row, ok := raw.([]any)
		if !ok || len(row) < 4 {
			return nil, fmt.Errorf("unexpected entry %T of length %d", raw, len(row))
		}
		idle, err := replyInt(row[2])
		if err != nil {
			return nil, fmt.Errorf("idle: %w", err)
		}
		n, err := replyInt(row[3])
		if err != nil {
			return nil, fmt.Errorf("delivery count: %w", err)
		}
		out = append(out, pendingEntry{idle: time.Duration(idle) * time.Millisecond, deliveries: n})
	}
	return out, nil
}

// parseTime reads a TIME reply: [unix seconds, microseconds].
func parseTime(reply any) (time.Time, error) {
	parts, ok := reply.([]any)
	if !ok || len(parts) != 2 {
		return time.Time{}, fmt.Errorf("unexpected reply %T", reply)
	}
	sec, err := replyInt(parts[0])
	if err != nil {
		return time.Time{}, err
	}
	usec, err := replyInt(parts[1])
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(sec, usec*int64(time.Microsecond)), nil
}

// parseRangeIDs reads the IDs of an XRANGE reply: [[id, fields]...].
func parseRangeIDs(reply any) ([]streamID, error) {
	if reply == nil {
		return nil, nil
	}
	rows, ok := reply.([]any)
	if !ok {
		return nil, fmt.Errorf("unexpected reply type %T", reply)
	}
	ids := make([]streamID, 0, len(rows))
	for _, raw := range rows {
		row, ok := raw.([]any)
		if !ok || len(row) == 0 {
			return nil, fmt.Errorf("unexpected entry %T", raw)
		}
		s, ok := row[0].(string)
		if !ok {
			return nil, fmt.Errorf("unexpected entry ID %T", row[0])
		}
		id, err := parseStreamID(s)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// replyMap turns a RESP3 map or a RESP2 flat [k1, v1, k2, v2...] array into
// a map. A field that is null stays present with a nil value.
func replyMap(v any) (map[string]any, error) {
	switch t := v.(type) {
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, val := range t {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("unexpected map key %T", k)
			}
			out[ks] = val
		}
		return out, nil
	case []any:
		if len(t)%2 != 0 {
			return nil, errors.New("odd-length field list")
		}
		out := make(map[string]any, len(t)/2)
		for i := 0; i < len(t); i += 2 {
			ks, ok := t[i].(string)
			if !ok {
				return nil, fmt.Errorf("unexpected field name %T", t[i])
			}
			out[ks] = t[i+1]
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unexpected reply type %T", v)
	}
}

func replyInt(v any) (int64, error) {
	switch t := v.(type) {
	case int64:
		return t, nil
	case string:
		return strconv.ParseInt(t, 10, 64)
	case error: // an error nested in an array
		return 0, t
	default:
		return 0, fmt.Errorf("not an integer: %T", v)
	}
}

// optInt is a field that may be absent or null: both give nil.
func optInt(m map[string]any, key string) (*int64, error) {
	v, ok := m[key]
	if !ok || v == nil {
		return nil, nil
	}
	n, err := replyInt(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return &n, nil
}
