package memstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/imgn/imgn/persist"
)

func send(t testing.TB, s *Store, id uint64, from, cmid string, ts int64, inboxes ...string) []uint64 {
	t.Helper()
	res, err := s.Append(context.Background(), persist.Message{ID: id, From: from, To: inboxes[len(inboxes)-1], ClientMsgID: cmid,
		Timestamp: ts, Body: []byte("body " + cmid)}, inboxes)
	if err != nil {
		t.Fatal(err)
	}
	return res.Seqs
}

func TestInboxMaxKeepsNewestAndForgetsDeadMessages(t *testing.T) {
	s := NewWith(Options{InboxMax: 3})
	ctx := context.Background()
	for i := 1; i <= 10; i++ {
		send(t, s, uint64(i), "alice", fmt.Sprint("m", i), int64(i), "alice", "bob")
	}
	for _, u := range []string{"alice", "bob"} {
		head, _ := s.LastSeq(ctx, u)
		if head != 10 {
			t.Fatalf("%s head %d, want 10: retention must not renumber", u, head)
		}
		got, err := s.ReadInbox(ctx, u, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got[0].Seq != 8 || got[2].Seq != 10 || string(got[0].Msg.Body) != "body m8" {
			t.Fatalf("%s keeps %+v, want seqs 8..10", u, got)
		}
	}
	// m1 is in no inbox any more: its message and dedup key are gone, so
	// the store holds only what the inboxes reference.
	if _, err := s.Lookup(ctx, "alice", "m1"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("lookup of a trimmed message: %v", err)
	}
	if n := len(s.m.byID); n != 3 {
		t.Fatalf("%d messages kept, want 3", n)
	}
	// A message still held by one inbox stays: carol holds m11 while
	// alice's copy is trimmed away by later traffic.
	send(t, s, 11, "alice", "m11", 11, "alice", "carol")
	for i := 12; i <= 15; i++ {
		send(t, s, uint64(i), "alice", fmt.Sprint("m", i), int64(i), "alice")
	}
	if _, err := s.Lookup(ctx, "alice", "m11"); err != nil {
		t.Fatalf("m11 is still in carol's inbox: %v", err)
	}
	got, _ := s.ReadInbox(ctx, "carol", 0, 10)
	if len(got) != 1 || got[0].Seq != 1 || string(got[0].Msg.Body) != "body m11" {
		t.Fatalf("carol %+v", got)
	}
}

func TestMaxAgeDropsOldEntries(t *testing.T) {
	s := NewWith(Options{MaxAge: time.Minute})
	now := time.Unix(1_800_000_000, 0)
	s.m.clock = func() time.Time { return now }
	ctx := context.Background()
	old := now.Add(-2 * time.Minute).UnixMilli()
	for i := 1; i <= 5; i++ {
		send(t, s, uint64(i), "alice", fmt.Sprint("old", i), old, "alice", "bob")
	}
	now = now.Add(2 * time.Second) // past the once-a-second scan guard
	send(t, s, 6, "alice", "new", now.UnixMilli(), "alice", "bob")
	got, _ := s.ReadInbox(ctx, "bob", 0, 100)
	if len(got) != 1 || got[0].Seq != 6 {
		t.Fatalf("bob keeps %+v, want only seq 6", got)
	}
	if _, err := s.Lookup(ctx, "alice", "old1"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("expired message still deduplicated: %v", err)
	}
	if head, _ := s.LastSeq(ctx, "bob"); head != 6 {
		t.Fatalf("head %d", head)
	}
}

func TestChunksAreReleased(t *testing.T) {
	s := NewWith(Options{InboxMax: 10})
	for i := 1; i <= 20*chunkRecs; i++ {
		send(t, s, uint64(i), "u", fmt.Sprint(i), int64(i), "u")
	}
	if n := len(s.m.chunks); n > 2 {
		t.Fatalf("%d chunks held for 10 live messages", n)
	}
}

// completer counts completions (AppendAsync's Done).
type completer struct{ n int }

func (c *completer) AppendDone(*persist.AppendOp) { c.n++ }

func TestAppendAsyncSteadyStateAllocatesNothing(t *testing.T) {
	s := NewWith(Options{InboxMax: 100})
	done := &completer{}
	op := &persist.AppendOp{Inboxes: []string{"alice", "bob"}, Done: done, Result: persist.AppendResult{Seqs: make([]uint64, 0, 2)}}
	body := []byte("hello, bob")
	var ids [64]byte
	i := uint64(0)
	run := func() {
		i++
		// The id is built in a reused buffer, as the engine's views of a
		// frame are: the store copies what it keeps.
		cmid := strconv.AppendUint(ids[:0], i, 10)
		op.Msg = persist.Message{ID: i, From: "alice", To: "bob", ClientMsgID: unsafe.String(&cmid[0], len(cmid)), Timestamp: int64(i), Body: body}
		s.AppendAsync(op)
	}
	for range 3 * chunkRecs { // warm up: maps and inboxes at their steady size
		run()
	}
	allocs := testing.AllocsPerRun(2000, run)
	if allocs > 0 {
		t.Fatalf("%.2f allocations per append in steady state", allocs)
	}
	if done.n == 0 || op.Err != nil || len(op.Result.Seqs) != 2 {
		t.Fatalf("done %d err %v seqs %v", done.n, op.Err, op.Result.Seqs)
	}
}
