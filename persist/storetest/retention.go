package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
)

// RunRetention runs the tests of the retention contract (persist.Retention)
// against the stores made by open: open(t, r) must return a fresh, empty
// store that enforces r and implements persist.Retainer. The suite closes
// every store it gets.
//
// Messages are given timestamps relative to time.Now, far enough from the
// bounds (hours) that the store's own clock need not be faked; message IDs
// rise with timestamps, as the engine's do.
func RunRetention(t *testing.T, open func(t *testing.T, r persist.Retention) persist.Store) {
	tests := []struct {
		name string
		r    persist.Retention
		fn   func(t *testing.T, s persist.Store, rt persist.Retainer)
	}{
		{"Off", persist.Retention{}, testRetentionOff},
		{"MaxAge", persist.Retention{MaxAge: time.Hour}, testMaxAge},
		{"InboxMax", persist.Retention{InboxMax: 3}, testInboxMax},
		{"DedupWindow", persist.Retention{InboxMax: 2, DedupWindow: time.Hour}, testDedupWindow},
		{"UnderLoad", persist.Retention{InboxMax: 50}, testRetentionUnderLoad},
	}
	probe := open(t, persist.Retention{})
	if _, ok := probe.(chatStore); ok {
		tests = append(tests, struct {
			name string
			r    persist.Retention
			fn   func(t *testing.T, s persist.Store, rt persist.Retainer)
		}{"Chat", persist.Retention{InboxMax: 3}, testChatRetention})
	}
	if err := probe.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := openStore(t, func(t *testing.T) persist.Store { return open(t, tc.r) })
			rt, ok := s.(persist.Retainer)
			if !ok {
				t.Fatalf("%T does not implement persist.Retainer", s)
			}
			tc.fn(t, s, rt)
		})
	}
}

// aged returns msg(id, from, cmid) accepted age ago.
func aged(id uint64, from, cmid string, age time.Duration) persist.Message {
	m := msg(id, from, cmid)
	m.Timestamp = time.Now().Add(-age).UnixMilli()
	return m
}

func enforce(t *testing.T, rt persist.Retainer) {
	t.Helper()
	if err := rt.EnforceRetention(t.Context()); err != nil {
		t.Fatalf("EnforceRetention: %v", err)
	}
}

func mustFirstSeq(t *testing.T, rt persist.Retainer, user string) uint64 {
	t.Helper()
	seq, err := rt.FirstSeq(t.Context(), user)
	if err != nil {
		t.Fatalf("FirstSeq(%q): %v", user, err)
	}
	return seq
}

// checkKept asserts that user's inbox holds exactly ids at seqs first,
// first+1, ..., that FirstSeq is first and LastSeq last, and that a read
// from below FirstSeq starts at FirstSeq.
func checkKept(t *testing.T, s persist.Store, rt persist.Retainer, user string, first, last uint64, ids ...uint64) {
	t.Helper()
	if got := mustFirstSeq(t, rt, user); got != first {
		t.Fatalf("FirstSeq(%q) = %d, want %d", user, got, first)
	}
	if got := mustLastSeq(t, s, user); got != last {
		t.Fatalf("LastSeq(%q) = %d, want %d", user, got, last)
	}
	for _, after := range []uint64{0, first - 1} {
		es := mustRead(t, s, user, after, len(ids)+10)
		got := make([]uint64, len(es))
		for i, e := range es {
			if e.Seq != first+uint64(i) {
				t.Fatalf("ReadInbox(%q, %d): entry %d has seq %d, want %d (gap, or not starting at FirstSeq)", user, after, i, e.Seq, first+uint64(i))
			}
			got[i] = e.Msg.ID
		}
		if !slices.Equal(got, ids) {
			t.Fatalf("ReadInbox(%q, %d) holds ids %v, want %v", user, after, got, ids)
		}
	}
}

func wantGone(t *testing.T, s persist.Store, from, cmid string) {
	t.Helper()
	if m, err := s.Lookup(t.Context(), from, cmid); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Lookup(%s, %s) = %d, %v; want ErrNotFound (removed by retention)", from, cmid, m.ID, err)
	}
}

func wantKept(t *testing.T, s persist.Store, from, cmid string, id uint64) {
	t.Helper()
	if m, err := s.Lookup(t.Context(), from, cmid); err != nil || m.ID != id {
		t.Fatalf("Lookup(%s, %s) = %d, %v; want message %d kept", from, cmid, m.ID, err, id)
	}
}

// testRetentionOff: with the zero Retention a pass removes nothing.
func testRetentionOff(t *testing.T, s persist.Store, rt persist.Retainer) {
	mustAppend(t, s, aged(1, "x", "old", 1000*time.Hour), "a")
	mustAppend(t, s, msg(2, "x", "new"), "a")
	enforce(t, rt)
	checkKept(t, s, rt, "a", 1, 2, 1, 2)
	wantKept(t, s, "x", "old", 1)
	if got := mustFirstSeq(t, rt, "nobody"); got != 1 {
		t.Fatalf("FirstSeq of an unknown user = %d, want 1", got)
	}
}

func testMaxAge(t *testing.T, s persist.Store, rt persist.Retainer) {
	ctx := t.Context()
	for i := uint64(1); i <= 5; i++ { // expired: 3 h old
		inboxes := []string{"a"}
		switch i {
		case 2:
			inboxes = append(inboxes, "b")
		case 3:
			inboxes = append(inboxes, "c")
		}
		mustAppend(t, s, aged(i, "x", fmt.Sprint(i), 3*time.Hour-time.Duration(i)*time.Minute), inboxes...)
	}
	for i := uint64(6); i <= 8; i++ { // young
		inboxes := []string{"a"}
		if i == 7 {
			inboxes = append(inboxes, "b")
		}
		mustAppend(t, s, aged(i, "x", fmt.Sprint(i), time.Minute), inboxes...)
	}
	if err := s.CreateUser(ctx, persist.User{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCursor(ctx, "a", "phone", 3); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateGroup(ctx, persist.Group{ID: "g", Members: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	checkKept(t, s, rt, "a", 1, 8, 1, 2, 3, 4, 5, 6, 7, 8) // nothing before a pass

	enforce(t, rt)
	checkKept(t, s, rt, "a", 6, 8, 6, 7, 8)
	checkKept(t, s, rt, "b", 2, 2, 7)
	checkKept(t, s, rt, "c", 2, 1) // everything removed: FirstSeq = LastSeq+1
	for i := 1; i <= 5; i++ {
		wantGone(t, s, "x", fmt.Sprint(i))
	}
	wantKept(t, s, "x", "6", 6)
	// Not touched by retention: users, cursors, groups.
	if _, err := s.GetUser(ctx, "a"); err != nil {
		t.Fatalf("GetUser after a pass: %v", err)
	}
	if c, err := s.Cursor(ctx, "a", "phone"); err != nil || c != 3 {
		t.Fatalf("Cursor after a pass = %d, %v; want 3", c, err)
	}
	if g := getGroup(t, s, "g"); !slices.Equal(g.Members, []string{"a"}) {
		t.Fatalf("group after a pass: %+v", g)
	}
	// Seqs are never reused, and a retry of an expired message is a new one.
	if r := mustAppend(t, s, aged(101, "x", "1", 0), "a", "c"); r.Duplicate || !slices.Equal(r.Seqs, []uint64{9, 2}) {
		t.Fatalf("retry of an expired message: %+v, want a fresh message at seqs [9 2]", r)
	}
	enforce(t, rt) // idempotent
	checkKept(t, s, rt, "a", 6, 9, 6, 7, 8, 101)
	checkKept(t, s, rt, "c", 2, 2, 101)
}

func testInboxMax(t *testing.T, s persist.Store, rt persist.Retainer) {
	for i := uint64(1); i <= 10; i++ {
		inboxes := []string{"a"}
		if i == 5 {
			inboxes = append(inboxes, "b")
		}
		mustAppend(t, s, aged(i, "x", fmt.Sprint(i), time.Minute), inboxes...)
	}
	enforce(t, rt)
	checkKept(t, s, rt, "a", 8, 10, 8, 9, 10)
	checkKept(t, s, rt, "b", 1, 1, 5)
	// Within the dedup window a message pushed out of every inbox is still
	// known: a retry is a Duplicate with its original seq (below FirstSeq),
	// and an inbox that never had it gets it now.
	wantKept(t, s, "x", "2", 2)
	r := mustAppend(t, s, aged(99, "x", "2", 0), "a", "z")
	if !r.Duplicate || r.Msg.ID != 2 || !slices.Equal(r.Seqs, []uint64{2, 1}) {
		t.Fatalf("retry of a capped-out message: %+v, want Duplicate of 2 at seqs [2 1]", r)
	}
	checkKept(t, s, rt, "a", 8, 10, 8, 9, 10)
	checkKept(t, s, rt, "z", 1, 1, 2)
	for i := uint64(11); i <= 12; i++ {
		mustAppend(t, s, aged(i, "x", fmt.Sprint(i), 0), "a")
	}
	enforce(t, rt)
	checkKept(t, s, rt, "a", 10, 12, 10, 11, 12)
}

func testDedupWindow(t *testing.T, s persist.Store, rt persist.Retainer) {
	for i := uint64(1); i <= 4; i++ { // 3 h old: beyond the 1 h window
		inboxes := []string{"a"}
		if i == 1 {
			inboxes = append(inboxes, "b") // b keeps message 1
		}
		mustAppend(t, s, aged(i, "x", fmt.Sprint(i), 3*time.Hour-time.Duration(i)*time.Minute), inboxes...)
	}
	for i := uint64(5); i <= 6; i++ {
		mustAppend(t, s, aged(i, "x", fmt.Sprint(i), time.Minute), "a")
	}
	mustAppend(t, s, aged(7, "y", "7", time.Minute), "c", "d")
	mustAppend(t, s, aged(8, "y", "8", time.Minute), "c", "d")
	mustAppend(t, s, aged(9, "y", "9", time.Minute), "c", "d")
	enforce(t, rt)
	checkKept(t, s, rt, "a", 5, 6, 5, 6)
	checkKept(t, s, rt, "b", 1, 1, 1)
	checkKept(t, s, rt, "c", 2, 3, 8, 9)
	wantKept(t, s, "x", "1", 1) // still in b
	for i := 2; i <= 4; i++ {
		wantGone(t, s, "x", fmt.Sprint(i)) // in no inbox and older than the window
	}
	wantKept(t, s, "y", "7", 7) // in no inbox, but young
	// Past the window a retry stores the message again.
	if r := mustAppend(t, s, aged(103, "x", "3", 0), "a"); r.Duplicate || r.Seqs[0] != 7 {
		t.Fatalf("retry after the dedup window: %+v, want a fresh message at seq 7", r)
	}
	// Within it, a retry is still recognised.
	if r := mustAppend(t, s, aged(107, "y", "7", 0), "c"); !r.Duplicate || r.Msg.ID != 7 || r.Seqs[0] != 1 {
		t.Fatalf("retry within the dedup window: %+v, want Duplicate of 7 at seq 1", r)
	}
}

// testRetentionUnderLoad: passes racing appends never leave a gap, never
// reuse a seq, and keep every acknowledged entry that is not below
// FirstSeq.
func testRetentionUnderLoad(t *testing.T, s persist.Store, rt persist.Retainer) {
	const workers, perWorker = 8, 100
	acked := make([]map[uint64]uint64, workers) // seq -> id in "shared"
	var wg sync.WaitGroup
	stop := make(chan struct{})
	passes := make(chan error, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				passes <- nil
				return
			default:
			}
			if err := rt.EnforceRetention(t.Context()); err != nil {
				passes <- fmt.Errorf("pass %d: %w", n, err)
				return
			}
			n++
		}
	}()
	for w := range workers {
		acked[w] = map[uint64]uint64{}
		wg.Go(func() {
			for i := range perWorker {
				id := uint64(w*perWorker + i + 1)
				r, err := s.Append(t.Context(), aged(id, fmt.Sprint("w", w), fmt.Sprint(i), 0), []string{"shared", fmt.Sprint("own", w)})
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
				acked[w][r.Seqs[0]] = id
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-passes; err != nil {
		t.Fatal(err)
	}
	enforce(t, rt)
	const total = workers * perWorker
	want := map[uint64]uint64{}
	for _, a := range acked {
		for seq, id := range a {
			if prev, dup := want[seq]; dup {
				t.Fatalf("seq %d acked for %d and %d", seq, prev, id)
			}
			want[seq] = id
		}
	}
	ids := make([]uint64, 0, 50)
	for seq := uint64(total - 49); seq <= total; seq++ {
		ids = append(ids, want[seq])
	}
	checkKept(t, s, rt, "shared", total-49, total, ids...)
	for w := range workers {
		own := fmt.Sprint("own", w)
		if first, last := mustFirstSeq(t, rt, own), mustLastSeq(t, s, own); first != 51 || last != perWorker {
			t.Fatalf("inbox %s: FirstSeq %d LastSeq %d, want 51 and %d", own, first, last, perWorker)
		}
	}
}

// testChatRetention (stores with the chat seam): conversation entries go
// with the inbox prefix that retention removes; the conversation, its
// last seq and its cursor stay; removed messages are neither unread, nor in
// history, nor recallable there.
func testChatRetention(t *testing.T, st persist.Store, rt persist.Retainer) {
	s := st.(chatStore)
	ctx := t.Context()
	for i := uint64(1); i <= 5; i++ {
		say(t, s, i, "bob", "alice")
	}
	enforce(t, rt) // a store may hold more than the cap between passes
	if c := convOf(t, s, "alice", peer("bob")); c.Unread != 3 || c.LastSeq != 5 || !c.HasLast || c.Last.Msg.ID != 5 {
		t.Fatalf("alice's conversation under a cap of 3: %+v", c)
	}
	if h := mustHistory(t, s, "alice", peer("bob"), 0, 10); !slices.Equal(h, []uint64{3, 4, 5}) {
		t.Fatalf("history under a cap of 3: %v", h)
	}
	res, err := s.MarkRead(ctx, "alice", peer("bob"), 1)
	if err != nil || !res.Moved || res.ReadSeq != 1 || res.Unread != 3 || res.MsgID != 0 {
		t.Fatalf("MarkRead below the first kept seq: %+v, %v", res, err)
	}
	for i := uint64(6); i <= 8; i++ {
		say(t, s, i, "carol", "alice")
	}
	enforce(t, rt)
	c := convOf(t, s, "alice", peer("bob"))
	if c.Unread != 0 || c.LastSeq != 5 || c.ReadSeq != 1 || c.HasLast {
		t.Fatalf("alice's conversation with bob after its messages were removed: %+v", c)
	}
	if h := mustHistory(t, s, "alice", peer("bob"), 0, 10); len(h) != 0 {
		t.Fatalf("history of removed messages: %v", h)
	}
	if c := convOf(t, s, "alice", peer("carol")); c.Unread != 3 {
		t.Fatalf("alice's conversation with carol: %+v", c)
	}
	_, err = s.Recall(ctx, persist.EventRequest{User: "bob", Target: 1, ID: 100, Timestamp: 1})
	wantErr(t, "recall of a message retention removed", err, persist.ErrNotFound)
	ev, err := s.Recall(ctx, persist.EventRequest{User: "bob", Target: 5, ID: 101, Timestamp: 1})
	if err != nil || !slices.Equal(ev.Inboxes, []string{"bob"}) {
		t.Fatalf("recall of a message only bob still holds: %+v, %v", ev, err)
	}
}
