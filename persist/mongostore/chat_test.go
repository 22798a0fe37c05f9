package mongostore_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/mongostore"
	"github.com/imgn/imgn/persist/storetest"
)

func TestChat(t *testing.T) {
	storetest.RunChat(t, func(t *testing.T) persist.Store { return open(t, shared.URI(), newDB()) })
}

// TestConversationUpkeepCoalesced: the group commit writes no
// conversation document (the append returns after its inserts only); the
// upkeep flusher writes the conversations of many commits together, one
// upsert per conversation however many messages it had. imgn_store_ops
// counts the upserts as "update".
func TestConversationUpkeepCoalesced(t *testing.T) {
	t.Parallel()
	// A linger no test waits out: only a read (or Close) flushes.
	s := open(t, shared.URI(), newDB(), func(o *mongostore.Options) { o.UpkeepInterval = time.Hour })
	defer s.Close()
	ctx := t.Context()
	before := s.Stats()
	const n = mongostore.HeadsEvery - 1 // no heads hint: every update counted is a conversation's
	for i := range n {
		m := persist.Message{ID: uint64(i + 1), From: "alice", To: "bob", ClientMsgID: fmt.Sprint(i), Body: []byte(fmt.Sprint("m", i))}
		if _, err := s.Append(ctx, m, []string{"alice", "bob"}); err != nil {
			t.Fatal(err)
		}
	}
	mid := s.Stats()
	if d := diffOps(before.Commands, mid.Commands); d["update"] != 0 {
		t.Fatalf("%d appends sent %v: the commits wrote conversations", n, d)
	}
	if mid.Batches-before.Batches != n {
		t.Fatalf("%d sequential appends in %d group commits", n, mid.Batches-before.Batches)
	}
	cs, err := s.Conversations(ctx, "bob", 0, 10)
	if err != nil || len(cs) != 1 || cs[0].Conv.ID != "alice" || cs[0].Unread != n || cs[0].LastSeq != n || string(cs[0].Last.Msg.Body) != fmt.Sprint("m", n-1) {
		t.Fatalf("bob's conversations %+v, %v", cs, err)
	}
	after := s.Stats()
	// The read flushed both documents (alice's and bob's), in one command.
	if d := diffOps(mid.Commands, after.Commands); d["update"] != 1 {
		t.Fatalf("the flush of %d commits' upkeep sent %v, want one update command", n, d)
	}
	cs, err = s.Conversations(ctx, "alice", 0, 10)
	if err != nil || len(cs) != 1 || cs[0].ReadSeq != n || cs[0].Unread != 0 {
		t.Fatalf("alice's conversations (her own messages are read): %+v, %v", cs, err)
	}
}

// TestConversationsRepairedFromInbox: the conversation documents of
// another node that has not flushed its upkeep yet (or crashed before it
// did) are missing or behind; any node's reads answer from the inbox
// entries and write the documents back.
func TestConversationsRepairedFromInbox(t *testing.T) {
	t.Parallel()
	db := newDB()
	// a never flushes during the test (it stands for a node that has not
	// yet, or never will); b is the node that reads.
	a := open(t, shared.URI(), db, func(o *mongostore.Options) { o.UpkeepInterval = time.Hour })
	defer a.Close() // a second Close (below) is harmless
	b := open(t, shared.URI(), db)
	defer b.Close()
	ctx := t.Context()
	send := func(id uint64, from, to string) {
		t.Helper()
		m := persist.Message{ID: id, From: from, To: to, ClientMsgID: fmt.Sprint(id), Body: []byte(fmt.Sprint("m", id))}
		if _, err := a.Append(ctx, m, []string{from, to}); err != nil {
			t.Fatal(err)
		}
	}
	send(1, "alice", "bob")
	send(2, "carol", "bob")
	send(3, "bob", "alice") // bob's own: his read cursor with alice moves
	send(4, "carol", "bob")

	cs, err := b.Conversations(ctx, "bob", 0, 10)
	if err != nil || len(cs) != 2 {
		t.Fatalf("bob's conversations before any flush: %+v, %v", cs, err)
	}
	if c := cs[0]; c.Conv.ID != "carol" || c.LastSeq != 4 || c.Unread != 2 || c.ReadSeq != 0 || string(c.Last.Msg.Body) != "m4" {
		t.Fatalf("bob's conversation with carol %+v", c)
	}
	if c := cs[1]; c.Conv.ID != "alice" || c.LastSeq != 3 || c.Unread != 0 || c.ReadSeq != 3 {
		t.Fatalf("bob's conversation with alice %+v", c)
	}
	// Paging by LastSeq crosses from the repaired part to the documents.
	if cs, err := b.Conversations(ctx, "bob", 4, 10); err != nil || len(cs) != 1 || cs[0].Conv.ID != "alice" {
		t.Fatalf("bob's conversations before seq 4: %+v, %v", cs, err)
	}
	// MarkRead on b finds the conversation that has no document yet.
	rd, err := b.MarkRead(ctx, "alice", persist.ConvID{ID: "bob"}, 0)
	if err != nil || rd.ReadSeq != 2 || !rd.Moved || rd.Unread != 0 {
		t.Fatalf("alice reads her conversation with bob: %+v, %v", rd, err)
	}

	// b wrote back what it read: the documents exist without a's upkeep.
	syncUpkeep(t, b)
	c := open(t, shared.URI(), db)
	defer c.Close()
	for _, want := range []struct {
		user, peer string
		last, read uint64
	}{{"bob", "carol", 4, 0}, {"bob", "alice", 3, 3}, {"alice", "bob", 2, 2}} {
		if !mongostore.ConvStored(t.Context(), c, want.user, persist.ConvID{ID: want.peer}, want.last, want.read) {
			t.Fatalf("%s's conversation with %s is not stored at last %d read %d", want.user, want.peer, want.last, want.read)
		}
	}
	// a's own upkeep lands later, and moves nothing back.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if cs, err := c.Conversations(ctx, "bob", 0, 10); err != nil || len(cs) != 2 || cs[0].LastSeq != 4 || cs[1].ReadSeq != 3 {
		t.Fatalf("bob's conversations after a's flush: %+v, %v", cs, err)
	}
}

// TestConversationsOnEntriesOnlyPath: in a cluster the owner of the
// recipient's inbox writes only its entry (AppendEntries); the recipient's
// conversation is kept up to date there too.
func TestConversationsOnEntriesOnlyPath(t *testing.T) {
	t.Parallel()
	a, b := openPair(t)
	ctx := t.Context()
	m := persist.Message{ID: 9, From: "alice", To: "bob", ClientMsgID: "c", Body: []byte("hi")}
	first, err := a.Append(ctx, m, []string{"alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AppendEntries(ctx, first.Msg, []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	cs, err := a.Conversations(ctx, "bob", 0, 10)
	if err != nil || len(cs) != 1 || cs[0].Conv.ID != "alice" || cs[0].Unread != 1 || string(cs[0].Last.Msg.Body) != "hi" {
		t.Fatalf("bob's conversations after the entries-only append: %+v, %v", cs, err)
	}
	cs, err = b.Conversations(ctx, "alice", 0, 10)
	if err != nil || len(cs) != 1 || cs[0].ReadSeq != 1 || cs[0].Unread != 0 {
		t.Fatalf("alice's conversations: %+v, %v", cs, err)
	}
}

// TestUpkeepQueueBounded: a full upkeep table makes the committer wait
// for a flush, which it asks for at once (the linger here outlasts the
// test): appends keep completing, and every conversation is written.
func TestUpkeepQueueBounded(t *testing.T) {
	t.Parallel()
	s := open(t, shared.URI(), newDB(), func(o *mongostore.Options) { o.UpkeepInterval, o.UpkeepQueue = time.Hour, 2 })
	defer s.Close()
	ctx := t.Context()
	before := s.Stats()
	const n = 12
	for i := range n {
		m := persist.Message{ID: uint64(i + 1), From: fmt.Sprint("s", i), To: fmt.Sprint("r", i), ClientMsgID: "c", Body: []byte("x")}
		if _, err := s.Append(ctx, m, []string{m.From, m.To}); err != nil {
			t.Fatal(err)
		}
	}
	// Each commit records two conversations, so every later one found the
	// table full and waited for the flusher to take it: n-1 flushes, no
	// read asked for any. All but the last one have finished writing (the
	// flusher takes a table only after its previous write).
	if d := diffOps(before.Commands, s.Stats().Commands); d["update"] < n-2 {
		t.Fatalf("%d appends with a table of 2 sent %v, want a flush per commit after the first", n, d)
	}
	for i := range n {
		cs, err := s.Conversations(ctx, fmt.Sprint("r", i), 0, 10)
		if err != nil || len(cs) != 1 || cs[0].Conv.ID != fmt.Sprint("s", i) || cs[0].Unread != 1 {
			t.Fatalf("r%d's conversations %+v, %v", i, cs, err)
		}
	}
}
