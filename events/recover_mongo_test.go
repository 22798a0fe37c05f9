package events

import (
	"fmt"
	"github.com/imgn/imgn/internal/testutil"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/mongostore"
)

// TestRecoverFromMongoStore: two nodes share one MongoDB (FerretDB here);
// after a restart, node n1's Recover publishes again the entries n1 wrote
// from the margin before its checkpoint on (the message's entries of the
// other node and that node's own messages are left to it), each inbox in
// seq order.
func TestRecoverFromMongoStore(t *testing.T) {
	if testing.Short() {
		t.Skip("runs FerretDB")
	}
	r := testsvc.StartRedis(t)
	mg := testsvc.StartMongo(t)
	c := redisClient(t, r.Addr)
	db := fmt.Sprintf("ev%d", time.Now().UnixNano())
	open := func(node string) *mongostore.Store {
		s, err := mongostore.Open(t.Context(), mongostore.Options{URI: mg.URI(), Database: db, NodeID: node, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	n1, n2 := open("n1"), open("n2")
	ctx := t.Context()
	ckpt := time.Now().Add(-time.Minute)
	id := func(at time.Time, n uint64) uint64 { return engine.MessageIDAt(at) + n }
	store := func(s *mongostore.Store, entriesOnly bool, m *persist.Message, inboxes ...string) {
		t.Helper()
		var err error
		if entriesOnly {
			_, err = s.AppendEntries(ctx, *m, inboxes)
		} else {
			_, err = s.Append(ctx, *m, inboxes)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	store(n1, false, msg(id(ckpt.Add(-time.Hour), 1), "alice", "bob"), "alice", "bob") // long before: published live
	late, early := msg(id(ckpt.Add(-time.Second), 2), "carol", "bob"), msg(id(ckpt.Add(-time.Second), 1), "dave", "bob")
	store(n1, false, late, "carol", "bob") // bob 2
	store(n1, false, early, "dave", "bob") // bob 3
	store(n2, true, early, "erin")         // erin's owner is n2: its event is n2's
	after := msg(id(time.Now(), 1), "alice", "bob")
	store(n1, false, after, "alice", "bob") // bob 4, alice 2
	store(n2, false, msg(id(time.Now(), 2), "frank", "gina"), "frank", "gina")

	p := newPublisher(t, r.Addr, nil)
	key := CheckpointKey(DefaultStream, "n1")
	if err := c.Do(ctx, c.B().Set().Key(key).Value(strconv.FormatInt(ckpt.UnixMilli(), 10)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	p.Start()
	n, err := p.Recover(ctx, n1)
	if err != nil || n != 3 {
		t.Fatalf("Recover = %d, %v; want 3", n, err)
	}
	var evs []Event
	testutil.Until(t, 20*time.Second, "3 events", func() bool { evs = readStream(t, c, DefaultStream); return len(evs) == 3 })
	seqs := map[string][]uint64{}
	for _, e := range evs {
		if !e.Replayed || e.Node != "n1" {
			t.Errorf("event %+v: want replayed by n1", e)
		}
		for _, in := range e.Inboxes {
			seqs[in.User] = append(seqs[in.User], in.Seq)
		}
	}
	if !slices.Equal(seqs["bob"], []uint64{2, 3, 4}) {
		t.Fatalf("bob's replayed seqs %v, want 2 3 4 in order", seqs["bob"])
	}
	for _, u := range []string{"erin", "frank", "gina"} {
		if len(seqs[u]) != 0 {
			t.Errorf("n1 replayed %s's entries %v, written by n2", u, seqs[u])
		}
	}
}
