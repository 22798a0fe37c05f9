package mongostore_test

import (
	"cmp"
	"slices"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/mongostore"
)

// messageIDAt is messageIDAt (not imported here: the engine's
// imports start goroutines goleak would report). The events package's
// recovery test on this store checks the two agree.
func messageIDAt(t time.Time) uint64 {
	return uint64(t.UnixMilli()-time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()) << 22
}

type replayRef struct {
	id   uint64
	user string
	seq  uint64
}

// replayRefs returns what s replays from from, one ref per entry, in the
// order given (message IDs must ascend; entries of a message sorted by
// user).
func replayRefs(t *testing.T, s *mongostore.Store, from uint64) []replayRef {
	t.Helper()
	var out []replayRef
	last := uint64(0)
	err := s.ReplayFrom(t.Context(), from, func(m *persist.Message, inboxes []string, seqs []uint64) error {
		if m.ID < last || (m.ID == last && last != 0) {
			t.Errorf("message %d replayed after %d", m.ID, last)
		}
		last = m.ID
		if len(m.Body) == 0 {
			t.Errorf("message %d replayed without its body", m.ID)
		}
		var refs []replayRef
		for i := range inboxes {
			refs = append(refs, replayRef{m.ID, inboxes[i], seqs[i]})
		}
		slices.SortFunc(refs, func(a, b replayRef) int { return cmp.Compare(a.user, b.user) })
		out = append(out, refs...)
		return nil
	})
	if err != nil {
		t.Fatalf("ReplayFrom(%d): %v", from, err)
	}
	return out
}

// TestReplayByWriter: two nodes share one database; each replays the
// entries it wrote (one message's entries split between the two), from
// the given ID on, across empty buckets walked one by one and a gap of
// hours skipped with a seek.
func TestReplayByWriter(t *testing.T) {
	t.Parallel()
	db := newDB()
	n1 := open(t, shared.URI(), db, func(o *mongostore.Options) { o.NodeID = "n1" })
	n2 := open(t, shared.URI(), db, func(o *mongostore.Options) { o.NodeID = "n2" })
	t.Cleanup(func() { n1.Close(); n2.Close() })
	ctx := t.Context()
	now := time.Now()
	id := func(ago time.Duration, n uint64) uint64 { return messageIDAt(now.Add(-ago)) + n }
	message := func(id uint64, from, to string) persist.Message {
		return persist.Message{ID: id, From: from, To: to, ClientMsgID: "c" + from + to, Timestamp: now.UnixMilli(), Body: []byte("hi " + to)}
	}
	old := message(id(5*time.Hour, 1), "alice", "bob")       // hours back: reached by a seek
	mid := message(id(40*time.Minute, 1), "alice", "carol")  // within the walk, empty buckets around it
	split := message(id(10*time.Second, 1), "alice", "bob2") // stored by n1, bob2's entry by n2
	other := message(id(5*time.Second, 1), "dave", "erin")   // n2 only
	for _, a := range []struct {
		s       *mongostore.Store
		m       persist.Message
		entries bool
		inboxes []string
	}{
		{n1, old, false, []string{"alice", "bob"}},
		{n1, mid, false, []string{"alice", "carol"}},
		{n1, split, false, []string{"alice"}},
		{n2, split, true, []string{"bob2"}},
		{n2, other, false, []string{"dave", "erin"}},
	} {
		var err error
		if a.entries {
			_, err = a.s.AppendEntries(ctx, a.m, a.inboxes)
		} else {
			_, err = a.s.Append(ctx, a.m, a.inboxes)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// A retry by the other node finds the entry: it stays n1's.
	if res, err := n2.AppendEntries(ctx, split, []string{"alice"}); err != nil || !slices.Equal(res.Seqs, []uint64{3}) {
		t.Fatalf("retry of alice's entry on n2 = %+v, %v", res, err)
	}
	want1 := []replayRef{{old.ID, "alice", 1}, {old.ID, "bob", 1}, {mid.ID, "alice", 2}, {mid.ID, "carol", 1}, {split.ID, "alice", 3}}
	if got := replayRefs(t, n1, 0); !slices.Equal(got, want1) {
		t.Errorf("n1 from 0: %v\nwant %v", got, want1)
	}
	if got := replayRefs(t, n1, messageIDAt(now.Add(-time.Hour))); !slices.Equal(got, want1[2:]) {
		t.Errorf("n1 from an hour ago: %v\nwant %v", got, want1[2:])
	}
	if got := replayRefs(t, n1, split.ID); !slices.Equal(got, want1[4:]) {
		t.Errorf("n1 from the split message: %v\nwant %v", got, want1[4:])
	}
	want2 := []replayRef{{split.ID, "bob2", 1}, {other.ID, "dave", 1}, {other.ID, "erin", 1}}
	if got := replayRefs(t, n2, messageIDAt(now.Add(-6*time.Hour))); !slices.Equal(got, want2) {
		t.Errorf("n2: %v\nwant %v", got, want2)
	}
	if got := replayRefs(t, n2, other.ID+1); len(got) != 0 {
		t.Errorf("n2 past its last message: %v", got)
	}
	// n2 replays for n1 (a takeover) what n1 replays itself.
	var took []replayRef
	err := n2.ReplayerFor("n1").ReplayFrom(ctx, 0, func(m *persist.Message, inboxes []string, seqs []uint64) error {
		for i := range inboxes {
			took = append(took, replayRef{m.ID, inboxes[i], seqs[i]})
		}
		return nil
	})
	slices.SortStableFunc(took, func(a, b replayRef) int {
		return cmp.Or(cmp.Compare(a.id, b.id), cmp.Compare(a.user, b.user))
	})
	if err != nil || !slices.Equal(took, want1) {
		t.Errorf("n2 replaying for n1: %v, %v\nwant %v", took, err, want1)
	}
}
