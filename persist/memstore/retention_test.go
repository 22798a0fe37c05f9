package memstore

import (
	"context"
	"errors"
	"fmt"
	"runtime"
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

// newWith opens a store bounded by r, whose clock the test may set.
func newWith(t testing.TB, r persist.Retention) *Store {
	t.Helper()
	s, err := NewWith(r)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestInboxMaxKeepsNewestAndForgetsDeadMessages(t *testing.T) {
	s := newWith(t, persist.Retention{InboxMax: 3, DedupWindow: time.Minute})
	now := time.Unix(1_800_000_000, 0)
	s.m.clock = func() time.Time { return now }
	ctx := context.Background()
	for i := 1; i <= 10; i++ {
		send(t, s, uint64(i), "alice", fmt.Sprint("m", i), now.UnixMilli(), "alice", "bob")
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
	// m1 is in no inbox any more, but a retry is still recognised for the
	// dedup window; after it, the store holds only what inboxes reference.
	if _, err := s.Lookup(ctx, "alice", "m1"); err != nil {
		t.Fatalf("a trimmed message within the dedup window: %v", err)
	}
	now = now.Add(2 * time.Minute)
	if err := s.EnforceRetention(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, "alice", "m1"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("lookup of a trimmed message after the dedup window: %v", err)
	}
	if n := s.m.byID.len(); n != 3 {
		t.Fatalf("%d messages kept, want 3", n)
	}
	// A message still held by one inbox stays: carol holds m11 while
	// alice's copy is trimmed away by later traffic.
	send(t, s, 11, "alice", "m11", now.UnixMilli(), "alice", "carol")
	for i := 12; i <= 15; i++ {
		send(t, s, uint64(i), "alice", fmt.Sprint("m", i), now.UnixMilli(), "alice")
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
	s := newWith(t, persist.Retention{MaxAge: time.Minute})
	now := time.Unix(1_800_000_000, 0)
	s.m.clock = func() time.Time { return now }
	ctx := context.Background()
	old := now.Add(-2 * time.Minute).UnixMilli()
	for i := 1; i <= 5; i++ {
		send(t, s, uint64(i), "alice", fmt.Sprint("old", i), old, "alice", "bob")
	}
	now = now.Add(2 * time.Second) // past the once-a-second pass guard
	// The pass starts on this append and advances reapPerAppend records
	// per append: two appends finish it.
	send(t, s, 6, "alice", "new", now.UnixMilli(), "alice", "bob")
	send(t, s, 7, "alice", "new2", now.UnixMilli(), "alice", "bob")
	got, _ := s.ReadInbox(ctx, "bob", 0, 100)
	if len(got) != 2 || got[0].Seq != 6 {
		t.Fatalf("bob keeps %+v, want only seqs 6 and 7", got)
	}
	if _, err := s.Lookup(ctx, "alice", "old1"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("expired message still deduplicated: %v", err)
	}
	if head, _ := s.LastSeq(ctx, "bob"); head != 7 {
		t.Fatalf("head %d", head)
	}
}

func TestChunksAreReleased(t *testing.T) {
	s := newWith(t, persist.Retention{InboxMax: 10, DedupWindow: time.Millisecond})
	now := time.Unix(1_800_000_000, 0)
	s.m.clock = func() time.Time { return now }
	for i := 1; i <= 20*chunkRecs; i++ {
		send(t, s, uint64(i), "u", fmt.Sprint(i), now.UnixMilli(), "u")
		now = now.Add(time.Millisecond) // passes run once a second of this clock
	}
	if err := s.EnforceRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(s.m.chunks); n > 2 {
		t.Fatalf("%d chunks held for 10 live messages", n)
	}
}

// completer counts completions (AppendAsync's Done).
type completer struct{ n int }

func (c *completer) AppendDone(*persist.AppendOp) { c.n++ }

// appender returns a function that appends the next 1:1 message from alice
// to bob with AppendAsync, step later on the store's clock than the last,
// and the op it reuses.
func appender(t testing.TB, s *Store, step time.Duration) (func(), *persist.AppendOp, *completer) {
	now := time.Unix(1_800_000_000, 0)
	s.m.clock = func() time.Time { return now }
	done := &completer{}
	op := &persist.AppendOp{Inboxes: []string{"alice", "bob"}, Done: done, Result: persist.AppendResult{Seqs: make([]uint64, 0, 2)}}
	body := []byte("hello, bob")
	var ids [64]byte
	i := uint64(0)
	return func() {
		i++
		// The id is built in a reused buffer, as the engine's views of a
		// frame are: the store copies what it keeps.
		cmid := strconv.AppendUint(ids[:0], i, 10)
		now = now.Add(step)
		op.Msg = persist.Message{ID: i, From: "alice", To: "bob", ClientMsgID: unsafe.String(&cmid[0], len(cmid)), Timestamp: now.UnixMilli(), Body: body}
		s.AppendAsync(op)
		if op.Err != nil {
			t.Fatal(op.Err)
		}
	}, op, done
}

func TestAppendAsyncSteadyStateAllocatesNothing(t *testing.T) {
	s := newWith(t, persist.Retention{InboxMax: 100, DedupWindow: time.Millisecond})
	run, op, done := appender(t, s, time.Millisecond)
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

// TestDedupHashCollisions: with every key hashing alike, deduplication,
// lookup and retention still work (the colliding keys go to the spill map).
func TestDedupHashCollisions(t *testing.T) {
	s := newWith(t, persist.Retention{InboxMax: 5, DedupWindow: time.Minute})
	s.m.testHash = func(string, string) uint64 { return 42 }
	now := time.Unix(1_800_000_000, 0)
	s.m.clock = func() time.Time { return now }
	ctx := context.Background()
	for i := 1; i <= 8; i++ {
		send(t, s, uint64(i), "alice", fmt.Sprint("c", i), now.UnixMilli(), "alice", "bob")
	}
	now = now.Add(2 * time.Minute) // past the dedup window of the trimmed ones
	if err := s.EnforceRetention(ctx); err != nil {
		t.Fatal(err)
	}
	// A retry of a kept message is a duplicate; a trimmed one is forgotten.
	res, err := s.Append(ctx, persist.Message{ID: 100, From: "alice", To: "bob", ClientMsgID: "c7"}, []string{"alice", "bob"})
	if err != nil || !res.Duplicate || res.Msg.ID != 7 {
		t.Fatalf("retry of c7: %+v %v", res, err)
	}
	if _, err := s.Lookup(ctx, "alice", "c1"); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("c1 should be trimmed: %v", err)
	}
	for i := 4; i <= 8; i++ {
		if m, err := s.Lookup(ctx, "alice", fmt.Sprint("c", i)); err != nil || m.ID != uint64(i) {
			t.Fatalf("c%d: %+v %v", i, m, err)
		}
	}
	if s.m.dedup.len()+len(s.m.spill) != 5 {
		t.Fatalf("%d+%d dedup entries for 5 kept messages", s.m.dedup.len(), len(s.m.spill))
	}
}

// TestReleasedChunksAreReused: under a cap, steady traffic recycles its
// chunks: after the warm-up no chunk is allocated, and what a reused chunk
// holds reads back intact.
func TestReleasedChunksAreReused(t *testing.T) {
	s := newWith(t, persist.Retention{InboxMax: 10, DedupWindow: time.Millisecond})
	now := time.Unix(1_800_000_000, 0)
	s.m.clock = func() time.Time { return now }
	for i := 1; i <= 10*chunkRecs; i++ {
		now = now.Add(time.Millisecond)
		send(t, s, uint64(i), "u", fmt.Sprint(i), now.UnixMilli(), "u")
	}
	allocs := testing.AllocsPerRun(3*chunkRecs, func() {}) // the closure's own cost: zero
	before := len(s.m.free)
	if before == 0 {
		t.Fatal("no chunk was released for reuse")
	}
	_ = allocs
	got, err := s.ReadInbox(context.Background(), "u", 0, 100)
	if err != nil || len(got) != 10 || string(got[9].Msg.Body) != fmt.Sprint("body ", 10*chunkRecs) {
		t.Fatalf("last entries after chunk reuse: %d %v", len(got), err)
	}
}

// TestRetentionKeepsPaceWithFastAppends: at 100,000 appends a second (of the
// store's clock) the records kept stay at what the cap and the dedup window
// hold, chunks and inbox arrays are recycled, and appends allocate nothing,
// not even now and then (chunks are counted exactly, allocations
// process-wide). Retention that falls behind the append rate, or releases
// chunks in bursts, fails all three.
func TestRetentionKeepsPaceWithFastAppends(t *testing.T) {
	const window = 20 * time.Millisecond // 2,000 appends at this rate
	s := newWith(t, persist.Retention{InboxMax: 100, DedupWindow: window})
	run, _, _ := appender(t, s, 10*time.Microsecond)
	for range 100 * chunkRecs { // a second of the store's clock
		run()
	}
	// Kept: the 100 both inboxes hold, plus the dedup window's worth (and
	// a millisecond of timestamp granularity) waiting in limbo.
	if kept, most := s.m.byID.len(), 100+2000+200; kept > most {
		t.Fatalf("%d records kept, want at most %d", kept, most)
	}
	made := s.m.madeChunks
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 100 * chunkRecs
	for range n {
		run()
	}
	runtime.ReadMemStats(&after)
	// MemStats counts the whole process: a few allocations of the test
	// runtime's own (and of goroutines other tests left winding down) are
	// tolerated, not the store's one per chunk (a hundred chunks pass in
	// this many appends) or per array growth.
	if allocs := after.Mallocs - before.Mallocs; allocs > 20 {
		t.Fatalf("%d allocations in %d appends at 100k appends/s", allocs, n)
	}
	if s.m.madeChunks != made {
		t.Fatalf("%d chunks made in %d appends, want every chunk reused", s.m.madeChunks-made, n)
	}
}

// BenchmarkAppendAsyncSteady is the engine's 1:1 path under the retention
// imbench gives spawned nodes (1,000 per inbox, 2 s dedup window): 100 pairs
// of inboxes at 100,000 appends a second of the store's clock, after the
// warm-up that fills the inboxes and the window. ns/op is the time the
// store's lock is held per message (the completion here does nothing), plus
// the validation that precedes it.
func BenchmarkAppendAsyncSteady(b *testing.B) {
	s := newWith(b, persist.Retention{InboxMax: 1000, DedupWindow: 2 * time.Second})
	now := time.Unix(1_800_000_000, 0)
	s.m.clock = func() time.Time { return now }
	var users [200]string
	for i := range users {
		users[i] = fmt.Sprintf("bench-user-%03d", i)
	}
	op := &persist.AppendOp{Done: &completer{}, Result: persist.AppendResult{Seqs: make([]uint64, 0, 2)}}
	var inboxes [2]string
	body := make([]byte, 64)
	var ids [64]byte
	i := uint64(0)
	run := func() {
		i++
		p := int(i % 100)
		inboxes[0], inboxes[1] = users[2*p], users[2*p+1]
		op.Inboxes = inboxes[:]
		cmid := strconv.AppendUint(append(ids[:0], "run."...), i, 10)
		now = now.Add(10 * time.Microsecond)
		op.Msg = persist.Message{ID: i, From: inboxes[0], To: inboxes[1], ClientMsgID: unsafe.String(&cmid[0], len(cmid)), Timestamp: now.UnixMilli(), Body: body}
		s.AppendAsync(op)
	}
	for range 400_000 { // the inboxes full, the dedup window's worth in limbo
		run()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		run()
	}
}
