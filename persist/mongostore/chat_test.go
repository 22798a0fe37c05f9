package mongostore_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/mongostore"
	"github.com/imgn/imgn/persist/storetest"
)

func TestChat(t *testing.T) {
	storetest.RunChat(t, func(t *testing.T) persist.Store { return open(t, shared.URI(), newDB()) })
}

// TestConversationUpkeepPerCommit: conversation upkeep costs one bulk
// write per group commit, never one command per message (imgn_store_ops
// counts it as "update").
func TestConversationUpkeepPerCommit(t *testing.T) {
	t.Parallel()
	s := open(t, shared.URI(), newDB())
	defer s.Close()
	before := s.Stats()
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Each inbox gets seq 1: no heads hint is written, so every
			// update counted is the conversation upkeep.
			m := persist.Message{ID: uint64(i + 1), From: fmt.Sprint("s", i), To: fmt.Sprint("r", i), ClientMsgID: "c", Body: []byte("x")}
			if _, err := s.Append(t.Context(), m, []string{m.From, m.To}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	after := s.Stats()
	batches := after.Batches - before.Batches
	updates := diffOps(before.Commands, after.Commands)["update"]
	t.Logf("%d appends in %d group commits: %v", n, batches, diffOps(before.Commands, after.Commands))
	// One per commit on MongoDB; FerretDB takes the bulk 16 upserts to a
	// command (mongostore.FerretUpdateBatch). Never one per message.
	want := batches
	if s.FerretDB() {
		want = batches + 2*n/mongostore.FerretUpdateBatch
	}
	if updates > want || updates >= n {
		t.Fatalf("%d updates for %d group commits of %d messages, want at most %d", updates, batches, n, want)
	}
	for i := range n {
		cs, err := s.Conversations(t.Context(), fmt.Sprint("r", i), 0, 10)
		if err != nil || len(cs) != 1 || cs[0].Conv.ID != fmt.Sprint("s", i) || cs[0].Unread != 1 || cs[0].LastSeq != 1 {
			t.Fatalf("r%d's conversations %+v, %v", i, cs, err)
		}
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
