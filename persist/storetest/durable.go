package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/imgn/imgn/persist"
)

// RunDurable runs the restart tests of a durable store: open(t, dir) must
// open the store kept in directory dir, creating it when dir is empty; it is
// called several times with the same dir, each time after the previous store
// was closed. The suite closes every store it opens.
func RunDurable(t *testing.T, open func(t *testing.T, dir string) persist.Store) {
	t.Run("Reopen", func(t *testing.T) {
		t.Parallel()
		testReopen(t, open)
	})
	t.Run("CloseFlushesAckedWrites", func(t *testing.T) {
		t.Parallel()
		testCloseFlushes(t, open)
	})
}

func reopen(t *testing.T, open func(t *testing.T, dir string) persist.Store, dir string) persist.Store {
	t.Helper()
	return openStore(t, func(t *testing.T) persist.Store { return open(t, dir) })
}

func mustClose(t *testing.T, s persist.Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func testReopen(t *testing.T, open func(t *testing.T, dir string) persist.Store) {
	ctx := t.Context()
	dir := t.TempDir()
	s := reopen(t, open, dir)

	var aIDs, bIDs []uint64
	for i := 1; i <= 10; i++ {
		id := uint64(i)
		inboxes := []string{"a"}
		if i%3 == 0 {
			inboxes = append(inboxes, "b")
			bIDs = append(bIDs, id)
		}
		aIDs = append(aIDs, id)
		mustAppend(t, s, msg(id, "alice", fmt.Sprint("c", i)), inboxes...)
	}
	gm := persist.Message{ID: 50, From: "alice", To: "g", Group: true, ClientMsgID: "g1", Timestamp: 9, Kind: 0, Body: []byte("group!")}
	first := mustAppend(t, s, gm, "a", "b", "c")
	aIDs, bIDs = append(aIDs, 50), append(bIDs, 50)
	user := persist.User{ID: "alice", PasswordHash: "h", Created: 7}
	if err := s.CreateUser(ctx, user); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateGroup(ctx, persist.Group{ID: "g", Name: "n", Owner: "a", Members: []string{"c", "a", "b"}, Admins: []string{"c"}, Open: true, Created: 8}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddMember(ctx, "g", "d", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveMember(ctx, "g", "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCursor(ctx, "a", "phone", 4); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)

	s = reopen(t, open, dir)
	checkInbox(t, s, "a", aIDs...)
	checkInbox(t, s, "b", bIDs...)
	checkInbox(t, s, "c", 50)
	if got, err := s.Lookup(ctx, "alice", "g1"); err != nil || sameMsg(got, gm) != "" {
		t.Fatalf("Lookup after reopen = %+v, %v; want %+v", got, err, gm)
	}
	es := mustRead(t, s, "c", 0, 1)
	if d := sameMsg(es[0].Msg, gm); d != "" {
		t.Fatalf("ReadInbox after reopen: %s", d)
	}
	if got, err := s.GetUser(ctx, "alice"); err != nil || got != user {
		t.Fatalf("GetUser after reopen = %+v, %v", got, err)
	}
	if g := getGroup(t, s, "g"); !slices.Equal(g.Members, []string{"a", "c", "d"}) || g.Name != "n" || g.Owner != "a" || g.Created != 8 ||
		!slices.Equal(g.Admins, []string{"c"}) || !g.Open || g.Joined[2] <= g.Joined[0] {
		t.Fatalf("GetGroup after reopen = %+v", g)
	}
	if gs, err := s.UserGroups(ctx, "d", "", 10); err != nil || len(gs) != 1 || gs[0].ID != "g" || gs[0].Size != 3 {
		t.Fatalf("UserGroups after reopen = %+v, %v", gs, err)
	}
	if err := s.AddMember(ctx, "g", "e", 3); !errors.Is(err, persist.ErrGroupFull) {
		t.Fatalf("member count after reopen: AddMember at limit err = %v, want ErrGroupFull", err)
	}
	if c, err := s.Cursor(ctx, "a", "phone"); err != nil || c != 4 {
		t.Fatalf("Cursor after reopen = %d, %v; want 4", c, err)
	}
	// Dedup survives the restart, and seqs continue without a gap.
	if r := mustAppend(t, s, gm, "c", "a", "d"); !r.Duplicate || !slices.Equal(r.Seqs, []uint64{1, first.Seqs[0], 1}) {
		t.Fatalf("retry after reopen: %+v, want Duplicate with seqs [1 %d 1]", r, first.Seqs[0])
	}
	r := mustAppend(t, s, msg(60, "bob", "x"), "a", "b")
	if want := []uint64{uint64(len(aIDs) + 1), uint64(len(bIDs) + 1)}; !slices.Equal(r.Seqs, want) {
		t.Fatalf("first append after reopen: seqs %v, want %v", r.Seqs, want)
	}
	mustClose(t, s)

	s = reopen(t, open, dir)
	checkInbox(t, s, "a", append(aIDs, 60)...)
	checkInbox(t, s, "b", append(bIDs, 60)...)
	checkInbox(t, s, "d", 50)
}

// testCloseFlushes: writers race Close; every write acknowledged with nil is
// present after a reopen, at the acknowledged seq, and inboxes have no gaps.
func testCloseFlushes(t *testing.T, open func(t *testing.T, dir string) persist.Store) {
	dir := t.TempDir()
	s := reopen(t, open, dir)
	const workers = 16
	type ack struct {
		id, seq uint64
	}
	acks := make([][]ack, workers)
	var wg sync.WaitGroup
	started := make(chan struct{}, workers)
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := uint64(w*1_000_000 + i + 1)
				res, err := s.Append(t.Context(), msg(id, fmt.Sprint(w), fmt.Sprint(i)), []string{"shared"})
				if i == 0 {
					started <- struct{}{}
				}
				if errors.Is(err, persist.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
				acks[w] = append(acks[w], ack{id, res.Seqs[0]})
			}
		})
	}
	for range workers {
		<-started
	}
	mustClose(t, s)
	wg.Wait()
	if t.Failed() {
		return
	}
	s = reopen(t, open, dir)
	want := map[uint64]uint64{}
	for _, as := range acks {
		for _, a := range as {
			want[a.seq] = a.id
		}
	}
	last := mustLastSeq(t, s, "shared")
	es := mustRead(t, s, "shared", 0, int(last)+1)
	if uint64(len(es)) != last {
		t.Fatalf("inbox has %d entries, LastSeq %d", len(es), last)
	}
	for i, e := range es {
		if e.Seq != uint64(i+1) {
			t.Fatalf("entry %d has seq %d (gap)", i, e.Seq)
		}
	}
	for seq, id := range want {
		if seq > last || es[seq-1].Msg.ID != id {
			t.Fatalf("acked message %d at seq %d is missing after reopen", id, seq)
		}
	}
}
