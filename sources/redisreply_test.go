package sources

import (
	"testing"
)

func TestStreamIDNext(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0-0", "0-1"},
		{"1526919030474-55", "1526919030474-56"},
		// The sequence wraps into the next millisecond.
		{"5-18446744073709551615", "6-0"},
	} {
		id, err := parseStreamID(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := id.next().String(); got != tc.want {
			t.Errorf("next(%s) = %s, want %s", tc.in, got, tc.want)
		}
		if !id.less(id.next()) {
			t.Errorf("%s is not less than its successor", tc.in)
		}
	}
	for _, bad := range []string{"", "5", "a-1", "1-b", "-1-2", "1-2-3"} {
		if _, err := parseStreamID(bad); err == nil {
			t.Errorf("parseStreamID(%q) accepted", bad)
		}
	}
}

func TestFindGroupNilVersusMissing(t *testing.T) {
	// RESP2 shape, with entries-read null and lag missing (as before Redis 7).
	resp2 := []any{
		[]any{"name", "other", "pending", int64(9), "last-delivered-id", "9-9"},
		[]any{"name", "g", "consumers", int64(1), "pending", int64(2), "last-delivered-id", "5-1", "entries-read", nil},
	}
	// RESP3 shape, with both present.
	resp3 := []any{map[any]any{"name": "g", "pending": int64(2), "last-delivered-id": "5-1", "entries-read": int64(7), "lag": int64(0)}}

	g, found, err := findGroup(resp2, "g")
	if err != nil || !found {
		t.Fatalf("resp2: found=%v err=%v", found, err)
	}
	if g.pending != 2 || g.lastDelivered != (streamID{5, 1}) || g.entriesRead != nil || g.lag != nil {
		t.Errorf("resp2: %+v", g)
	}
	g, found, err = findGroup(resp3, "g")
	if err != nil || !found {
		t.Fatalf("resp3: found=%v err=%v", found, err)
	}
	if g.entriesRead == nil || *g.entriesRead != 7 || g.lag == nil || *g.lag != 0 {
		t.Errorf("resp3: %+v", g)
	}
	if _, found, _ := findGroup(resp3, "nope"); found {
		t.Error("found a group that is not there")
	}
}
