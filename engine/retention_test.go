package engine

import (
	"fmt"
	"testing"
	"time"
	"unsafe"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
)

// TestSyncAfterRetention runs the engine on the embedded store with
// retention: a SYNC from below an inbox's first kept seq gets the kept
// messages and first_seq, so a client never waits for the removed ones; an
// inbox that lost everything answers an empty page with first_seq =
// head_seq+1; /admin/stats carries the store's figures.
func TestSyncAfterRetention(t *testing.T) {
	store, err := pebblestore.Open(pebblestore.Options{Dir: t.TempDir(),
		Retention: persist.Retention{MaxAge: time.Hour, InboxMax: 3}})
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, func(c *Config) { c.Store = store })
	alice, bob := dial(t, s, codec.Protobuf), dial(t, s, codec.Protobuf)
	alice.login("alice", "d")
	bob.login("bob", "d")
	for i := range 10 {
		var ack pb.SendAck
		alice.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint("m", i), To: "bob", Body: []byte{byte(i)}}, &ack)
	}
	// carol's inbox: three messages accepted two hours ago, all beyond
	// the age limit.
	old := time.Now().Add(-2 * time.Hour).UnixMilli()
	for i := range 3 {
		m := persist.Message{ID: uint64(1000 + i), From: "system", ClientMsgID: fmt.Sprint("old", i), Timestamp: old, Body: []byte("x")}
		if _, err := store.Append(t.Context(), m, []string{"carol"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.EnforceRetention(t.Context()); err != nil {
		t.Fatal(err)
	}

	sync := func(c *rawClient, after uint64) *pb.SyncOK {
		t.Helper()
		var page pb.SyncOK
		c.mustCall(codec.CmdSync, &pb.SyncRequest{AfterSeq: after, Limit: 100}, &page)
		return &page
	}
	seqs := func(p *pb.SyncOK) []uint64 {
		var out []uint64
		for _, m := range p.Messages {
			out = append(out, m.Seq)
		}
		return out
	}
	for _, tc := range []struct {
		after, first uint64
		want         []uint64
	}{
		{0, 8, []uint64{8, 9, 10}}, // from below the first kept seq
		{6, 8, []uint64{8, 9, 10}},
		{7, 0, []uint64{8, 9, 10}}, // nothing removed after 7
		{9, 0, []uint64{10}},
		{10, 0, nil},
	} {
		p := sync(bob, tc.after)
		if p.FirstSeq != tc.first || fmt.Sprint(seqs(p)) != fmt.Sprint(tc.want) || p.HeadSeq != 10 {
			t.Errorf("SYNC after %d: first_seq %d, seqs %v, head %d; want first_seq %d, seqs %v, head 10",
				tc.after, p.FirstSeq, seqs(p), p.HeadSeq, tc.first, tc.want)
		}
	}
	carol := dial(t, s, codec.JSON)
	carol.login("carol", "d")
	if p := sync(carol, 0); p.FirstSeq != 4 || len(p.Messages) != 0 || p.HeadSeq != 3 || p.HasMore {
		t.Errorf("SYNC of an inbox retention emptied: %+v; want no messages, first_seq 4, head 3", p)
	}
	if p := sync(carol, 3); p.FirstSeq != 0 {
		t.Errorf("SYNC after the head of an emptied inbox: first_seq %d, want 0", p.FirstSeq)
	}

	st := s.Stats()
	if st.Store == nil || st.Store.Kind != "pebble" || st.Store.Commits == 0 || st.Store.RemovedEntries != 7+7+3 {
		t.Fatalf("Stats().Store = %+v; want the embedded store's figures (17 entries removed: 7 of alice, 7 of bob, 3 of carol)", st.Store)
	}
}

// TestUserCacheKeepsItsOwnKey: the send path looks recipients up with a
// string that points into the request buffer; the cache of known users must
// not keep that string (the buffer is reused, and a key that changes under a
// map corrupts it).
func TestUserCacheKeepsItsOwnKey(t *testing.T) {
	s := startServer(t, nil)
	if err := s.store.CreateUser(t.Context(), persist.User{ID: "bob"}); err != nil {
		t.Fatal(err)
	}
	buf := []byte("bob")
	ok, err := s.userExists(t.Context(), unsafe.String(&buf[0], len(buf)))
	if err != nil || !ok {
		t.Fatalf("userExists(bob) = %v, %v", ok, err)
	}
	copy(buf, "xyz") // the request buffer is reused
	if !s.userKnown("bob") {
		t.Fatal("the user cache lost bob when the request buffer changed: it kept the buffer's string")
	}
	if s.userKnown("xyz") {
		t.Fatal("the user cache knows xyz, which was never looked up")
	}
}
