package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/imgn/imgn/persist"
)

// RunChat runs the conformance suite of persist.ChatStore (conversations,
// read cursors, recall, delete-for-me, history) against the stores made by
// open, as Run does. A store whose open returns something that is not a
// ChatStore fails.
func RunChat(t *testing.T, open func(t *testing.T) persist.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s chatStore)
	}{
		{"Conversations", testConversations},
		{"ConversationPaging", testConversationPaging},
		{"ConversationRetries", testConversationRetries},
		{"ReadCursor", testReadCursor},
		{"History", testHistory},
		{"Recall", testRecall},
		{"Delete", testDelete},
		{"ReadCount", testReadCount},
		{"ChatInvalid", testChatInvalid},
		{"ConcurrentChat", testConcurrentChat},
		{"EventDone", testEventDone},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := openStore(t, func(t *testing.T) persist.Store { return open(t) })
			cs, ok := s.(chatStore)
			if !ok {
				t.Fatalf("%T does not implement persist.ChatStore", s)
			}
			tc.fn(t, cs)
		})
	}
}

// chatStore is a Store with the chat seam.
type chatStore interface {
	persist.Store
	persist.ChatStore
}

// chatMsg returns message id from -> to (a user, or a group when group).
func chatMsg(id uint64, from, to string, group bool) persist.Message {
	return persist.Message{ID: id, From: from, To: to, Group: group, ClientMsgID: fmt.Sprint("c", id),
		Timestamp: 1_700_000_000_000 + int64(id), Body: fmt.Appendf(nil, "body %d", id)}
}

// say appends a 1:1 message and returns its seqs (sender's, recipient's).
func say(t *testing.T, s persist.Store, id uint64, from, to string) []uint64 {
	t.Helper()
	if from == to {
		return mustAppend(t, s, chatMsg(id, from, to, false), from).Seqs
	}
	return mustAppend(t, s, chatMsg(id, from, to, false), from, to).Seqs
}

func mustConvs(t *testing.T, s chatStore, user string, before uint64, limit int) []persist.Conversation {
	t.Helper()
	cs, err := s.Conversations(t.Context(), user, before, limit)
	if err != nil {
		t.Fatalf("Conversations(%q, %d, %d): %v", user, before, limit, err)
	}
	return cs
}

// conv returns user's conversation id, failing t when it is not listed.
func convOf(t *testing.T, s chatStore, user string, id persist.ConvID) persist.Conversation {
	t.Helper()
	for _, c := range mustConvs(t, s, user, 0, 1000) {
		if c.Conv == id {
			return c
		}
	}
	t.Fatalf("%s has no conversation %+v", user, id)
	return persist.Conversation{}
}

func mustHistory(t *testing.T, s chatStore, user string, id persist.ConvID, before uint64, limit int) []uint64 {
	t.Helper()
	es, err := s.History(t.Context(), user, id, before, limit)
	if err != nil {
		t.Fatalf("History(%q, %+v, %d, %d): %v", user, id, before, limit, err)
	}
	ids := make([]uint64, len(es))
	for i, e := range es {
		if i > 0 && e.Seq <= es[i-1].Seq {
			t.Fatalf("History(%q, %+v): seqs not ascending: %d after %d", user, id, e.Seq, es[i-1].Seq)
		}
		if e.Msg.Event != persist.EventNone {
			t.Fatalf("History(%q, %+v) returned event entry %+v", user, id, e)
		}
		ids[i] = e.Msg.ID
	}
	return ids
}

func peer(id string) persist.ConvID  { return persist.ConvID{ID: id} }
func group(id string) persist.ConvID { return persist.ConvID{ID: id, Group: true} }

// testConversations: every append keeps both sides' conversations: order
// by newest activity, last message, unread counts of others' messages, and
// the sender's own message moving its read cursor.
func testConversations(t *testing.T, s chatStore) {
	say(t, s, 1, "alice", "bob")
	say(t, s, 2, "bob", "alice")
	say(t, s, 3, "bob", "alice")
	say(t, s, 4, "carol", "alice")
	mustAppend(t, s, chatMsg(5, "bob", "g1", true), "bob", "alice", "carol")
	say(t, s, 6, "alice", "alice") // a note to self

	cs := mustConvs(t, s, "alice", 0, 10)
	got := make([]persist.ConvID, len(cs))
	for i, c := range cs {
		got[i] = c.Conv
	}
	want := []persist.ConvID{peer("alice"), group("g1"), peer("carol"), peer("bob")}
	if !slices.Equal(got, want) {
		t.Fatalf("alice's conversations %+v, want %+v (newest activity first)", got, want)
	}
	// alice's inbox: 1 (own), 2, 3 (bob), 4 (carol), 5 (group), 6 (self).
	checks := []struct {
		conv         persist.ConvID
		last, read   uint64
		unread       int
		lastID       uint64
		lastFrom     string
		lastGroup    bool
		lastBodyWant string
	}{
		{peer("alice"), 6, 6, 0, 6, "alice", false, "body 6"},
		{group("g1"), 5, 0, 1, 5, "bob", true, "body 5"},
		{peer("carol"), 4, 0, 1, 4, "carol", false, "body 4"},
		{peer("bob"), 3, 1, 2, 3, "bob", false, "body 3"},
	}
	for i, w := range checks {
		c := cs[i]
		if c.LastSeq != w.last || c.ReadSeq != w.read || c.Unread != w.unread {
			t.Errorf("%+v: last %d read %d unread %d, want %d %d %d", w.conv, c.LastSeq, c.ReadSeq, c.Unread, w.last, w.read, w.unread)
		}
		if !c.HasLast || c.Last.Seq != w.last || c.Last.Msg.ID != w.lastID || c.Last.Msg.From != w.lastFrom ||
			c.Last.Msg.Group != w.lastGroup || string(c.Last.Msg.Body) != w.lastBodyWant {
			t.Errorf("%+v: last message %+v (has %v), want id %d from %s", w.conv, c.Last, c.HasLast, w.lastID, w.lastFrom)
		}
	}
	// bob's side: alice (2 own after 1 of alice's: read = his seq 3, unread 0), g1.
	b := convOf(t, s, "bob", peer("alice"))
	if b.LastSeq != 3 || b.ReadSeq != 3 || b.Unread != 0 {
		t.Errorf("bob's conversation with alice: %+v, want last 3 read 3 unread 0", b)
	}
	if g := convOf(t, s, "carol", group("g1")); g.Unread != 1 || g.LastSeq != 2 {
		t.Errorf("carol's g1: %+v, want last 2 unread 1", g)
	}
	// A system message (no sender) belongs to no conversation.
	mustAppend(t, s, chatMsg(7, "", "alice", false), "alice")
	if n := len(mustConvs(t, s, "alice", 0, 10)); n != 4 {
		t.Errorf("a system message made %d conversations, want 4", n)
	}
	if cs := mustConvs(t, s, "nobody", 0, 10); len(cs) != 0 {
		t.Errorf("a user without an inbox has conversations %+v", cs)
	}
}

// testConversationPaging: pages by before_seq cover every conversation
// once, newest first.
func testConversationPaging(t *testing.T, s chatStore) {
	const n = 25
	for i := 1; i <= n; i++ {
		say(t, s, uint64(i), fmt.Sprint("u", i), "alice")
	}
	say(t, s, n+1, "u3", "alice") // u3 becomes the newest
	var seen []string
	before := uint64(0)
	for {
		page := mustConvs(t, s, "alice", before, 7)
		if len(page) == 0 {
			break
		}
		if len(page) > 7 {
			t.Fatalf("page of %d, limit 7", len(page))
		}
		for _, c := range page {
			if before != 0 && c.LastSeq >= before {
				t.Fatalf("conversation %+v not below before_seq %d", c, before)
			}
			seen = append(seen, c.Conv.ID)
			before = c.LastSeq
		}
	}
	if len(seen) != n || seen[0] != "u3" || seen[1] != fmt.Sprint("u", n) || seen[n-1] != "u1" {
		t.Fatalf("paged conversations %v", seen)
	}
	if c := convOf(t, s, "alice", peer("u3")); c.Unread != 2 || c.LastSeq != n+1 {
		t.Fatalf("u3: %+v, want unread 2 last %d", c, n+1)
	}
}

// testConversationRetries: a retried append changes no conversation; a
// retry completing a partial append adds the new inbox's entry once.
func testConversationRetries(t *testing.T, s chatStore) {
	m := chatMsg(1, "alice", "bob", false)
	mustAppend(t, s, m, "alice", "bob")
	mustAppend(t, s, m, "alice", "bob")
	if c := convOf(t, s, "bob", peer("alice")); c.Unread != 1 || c.LastSeq != 1 {
		t.Fatalf("after a retry bob's conversation is %+v, want unread 1 last 1", c)
	}
	if h := mustHistory(t, s, "bob", peer("alice"), 0, 10); !slices.Equal(h, []uint64{1}) {
		t.Fatalf("history after a retry: %v", h)
	}
	p := chatMsg(2, "carol", "dave", false)
	mustAppend(t, s, p, "carol")
	if cs := mustConvs(t, s, "dave", 0, 10); len(cs) != 0 {
		t.Fatalf("dave has conversations before his part: %+v", cs)
	}
	mustAppend(t, s, p, "carol", "dave")
	mustAppend(t, s, p, "carol", "dave")
	if c := convOf(t, s, "dave", peer("carol")); c.Unread != 1 || c.LastSeq != 1 {
		t.Fatalf("dave after the completing retries: %+v", c)
	}
	if c := convOf(t, s, "carol", peer("dave")); c.ReadSeq != 1 || c.Unread != 0 {
		t.Fatalf("carol after the retries: %+v", c)
	}
}

// testReadCursor: MarkRead moves forward only, clamps to the last message,
// reports the unread rest and where the peer holds the last read message.
func testReadCursor(t *testing.T, s chatStore) {
	ctx := t.Context()
	say(t, s, 1, "carol", "bob") // shifts bob's seqs against alice's
	say(t, s, 2, "bob", "alice") // alice 1, bob 2
	say(t, s, 3, "bob", "alice") // alice 2, bob 3
	say(t, s, 4, "bob", "alice") // alice 3, bob 4
	res, err := s.MarkRead(ctx, "alice", peer("bob"), 2)
	if err != nil || !res.Moved || res.ReadSeq != 2 || res.Unread != 1 || res.MsgID != 3 || res.PeerSeq != 3 {
		t.Fatalf("MarkRead(2) = %+v, %v; want moved, read 2, unread 1, msg 3 at bob's seq 3", res, err)
	}
	res, err = s.MarkRead(ctx, "alice", peer("bob"), 1)
	if err != nil || res.Moved || res.ReadSeq != 2 {
		t.Fatalf("MarkRead(1) after 2 = %+v, %v; want the cursor kept at 2", res, err)
	}
	res, err = s.MarkRead(ctx, "alice", peer("bob"), 2)
	if err != nil || res.Moved || res.ReadSeq != 2 {
		t.Fatalf("MarkRead(2) again = %+v, %v; want not moved", res, err)
	}
	res, err = s.MarkRead(ctx, "alice", peer("bob"), 1000)
	if err != nil || !res.Moved || res.ReadSeq != 3 || res.Unread != 0 || res.PeerSeq != 4 {
		t.Fatalf("MarkRead(1000) = %+v, %v; want clamped to 3, peer seq 4", res, err)
	}
	say(t, s, 5, "bob", "alice") // alice 4
	if c := convOf(t, s, "alice", peer("bob")); c.ReadSeq != 3 || c.Unread != 1 {
		t.Fatalf("after a new message: %+v", c)
	}
	res, err = s.MarkRead(ctx, "alice", peer("bob"), 0)
	if err != nil || res.ReadSeq != 4 || res.Unread != 0 {
		t.Fatalf("MarkRead(0) = %+v, %v; want everything read", res, err)
	}
	if c := convOf(t, s, "bob", peer("alice")); c.Unread != 0 || c.ReadSeq != 5 {
		t.Fatalf("alice's reads changed bob's side: %+v", c)
	}
	_, err = s.MarkRead(ctx, "alice", peer("zed"), 1)
	wantErr(t, "MarkRead of an unknown conversation", err, persist.ErrNotFound)
	_, err = s.MarkRead(ctx, "nobody", peer("bob"), 1)
	wantErr(t, "MarkRead of a user without an inbox", err, persist.ErrNotFound)
	// Groups: no peer seq.
	mustAppend(t, s, chatMsg(6, "bob", "g", true), "bob", "alice")
	res, err = s.MarkRead(ctx, "alice", group("g"), 0)
	if err != nil || res.ReadSeq != 5 || res.MsgID != 6 || res.PeerSeq != 0 {
		t.Fatalf("group MarkRead = %+v, %v", res, err)
	}
	// A note to self has no peer seq either.
	say(t, s, 7, "alice", "alice")
	if res, err = s.MarkRead(ctx, "alice", peer("alice"), 0); err != nil || res.PeerSeq != 0 || res.MsgID != 7 {
		t.Fatalf("self MarkRead = %+v, %v", res, err)
	}
}

// testHistory: pages backwards through one conversation, in ascending
// order within a page, and nothing of other conversations.
func testHistory(t *testing.T, s chatStore) {
	var want []uint64
	for i := uint64(1); i <= 30; i++ {
		switch i % 3 {
		case 0:
			say(t, s, i, "alice", "bob")
			want = append(want, i)
		case 1:
			say(t, s, i, "bob", "alice")
			want = append(want, i)
		default:
			say(t, s, i, "carol", "alice")
		}
	}
	if h := mustHistory(t, s, "alice", peer("bob"), 0, 100); !slices.Equal(h, want) {
		t.Fatalf("whole history %v, want %v", h, want)
	}
	var got []uint64
	before := uint64(0)
	for {
		es, err := s.History(t.Context(), "alice", peer("bob"), before, 4)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 0 {
			break
		}
		ids := make([]uint64, len(es))
		for i, e := range es {
			ids[i] = e.Msg.ID
		}
		got = append(ids, got...)
		before = es[0].Seq
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged history %v, want %v", got, want)
	}
	if h := mustHistory(t, s, "alice", peer("nobody"), 0, 10); len(h) != 0 {
		t.Fatalf("history of an unknown conversation: %v", h)
	}
	if h := mustHistory(t, s, "bob", peer("alice"), 0, 3); !slices.Equal(h, want[len(want)-3:]) {
		t.Fatalf("bob's newest 3: %v, want %v", h, want[len(want)-3:])
	}
}

// testRecall: only the sender, within the window; a recall event takes a
// new seq in every inbox holding the message; the body is gone from every
// read; a repeat changes nothing; events touch no conversation.
func testRecall(t *testing.T, s chatStore) {
	ctx := t.Context()
	mustAppend(t, s, chatMsg(1, "alice", "g", true), "alice", "bob", "carol")
	say(t, s, 2, "bob", "alice")
	before := convOf(t, s, "bob", group("g"))

	_, err := s.Recall(ctx, persist.EventRequest{User: "bob", Target: 1, ID: 100, Timestamp: 1})
	wantErr(t, "recall by a member who did not send it", err, persist.ErrNotSender)
	_, err = s.Recall(ctx, persist.EventRequest{User: "dave", Target: 1, ID: 100, Timestamp: 1})
	wantErr(t, "recall by a user whose inbox does not hold it", err, persist.ErrNotFound)
	_, err = s.Recall(ctx, persist.EventRequest{User: "alice", Target: 99, ID: 100, Timestamp: 1})
	wantErr(t, "recall of an unknown message", err, persist.ErrNotFound)
	_, err = s.Recall(ctx, persist.EventRequest{User: "alice", Target: 1, ID: 100, Timestamp: 1, NotBefore: chatMsg(1, "", "", false).Timestamp + 1})
	wantErr(t, "recall outside the window", err, persist.ErrRecallWindow)

	res, err := s.Recall(ctx, persist.EventRequest{User: "alice", Target: 1, ID: 100, Timestamp: 5, NotBefore: chatMsg(1, "", "", false).Timestamp})
	if err != nil || res.Duplicate {
		t.Fatalf("Recall: %+v, %v", res, err)
	}
	holders := map[string]uint64{}
	for i, u := range res.Inboxes {
		holders[u] = res.Seqs[i]
	}
	wantSeqs := map[string]uint64{"alice": 3, "bob": 3, "carol": 2}
	if len(holders) != 3 || holders["alice"] != 3 || holders["bob"] != 3 || holders["carol"] != 2 {
		t.Fatalf("recall event seqs %v, want %v", holders, wantSeqs)
	}
	if e := res.Event; e.ID != 100 || e.Event != persist.EventRecall || e.Target != 1 || e.From != "alice" || e.To != "g" || !e.Group || len(e.Body) != 0 {
		t.Fatalf("recall event %+v", e)
	}
	for u, seq := range wantSeqs {
		es := ReadGapFree(t, s, u)
		ev := es[seq-1].Msg
		if ev.Event != persist.EventRecall || ev.Target != 1 || ev.ID != 100 {
			t.Fatalf("%s's entry %d is %+v, want the recall event", u, seq, ev)
		}
		for _, e := range es {
			if e.Msg.ID == 1 && (!e.Msg.Recalled || len(e.Msg.Body) != 0) {
				t.Fatalf("%s still reads the recalled message: %+v", u, e.Msg)
			}
		}
	}
	es, err := s.History(ctx, "bob", group("g"), 0, 10)
	if err != nil || len(es) != 1 || !es[0].Msg.Recalled || len(es[0].Msg.Body) != 0 {
		t.Fatalf("bob's history after the recall: %+v, %v", es, err)
	}
	if after := convOf(t, s, "bob", group("g")); after.LastSeq != before.LastSeq || after.Unread != before.Unread || !after.Last.Msg.Recalled {
		t.Fatalf("the recall changed bob's conversation: %+v, before %+v", after, before)
	}
	again, err := s.Recall(ctx, persist.EventRequest{User: "alice", Target: 1, ID: 101, Timestamp: 6, NotBefore: 1 << 62})
	if err != nil || !again.Duplicate || again.Event.ID != 100 || len(again.Seqs) != 3 {
		t.Fatalf("repeated recall: %+v, %v", again, err)
	}
	for i, u := range again.Inboxes {
		if again.Seqs[i] != wantSeqs[u] {
			t.Fatalf("repeated recall reports %s at %d, want %d", u, again.Seqs[i], wantSeqs[u])
		}
	}
	if last := mustLastSeq(t, s, "bob"); last != 3 {
		t.Fatalf("a repeated recall appended: bob's last seq %d", last)
	}
	_, err = s.Recall(ctx, persist.EventRequest{User: "alice", Target: 100, ID: 102, Timestamp: 6})
	wantErr(t, "recall of an event", err, persist.ErrNotFound)
}

// testDelete: delete-for-me hides a message from its owner only, appends
// an event to the owner's inbox only, and is idempotent.
func testDelete(t *testing.T, s chatStore) {
	ctx := t.Context()
	say(t, s, 1, "bob", "alice")
	say(t, s, 2, "bob", "alice")
	res, err := s.Delete(ctx, persist.EventRequest{User: "alice", Target: 2, ID: 50, Timestamp: 7})
	if err != nil || res.Duplicate || !slices.Equal(res.Inboxes, []string{"alice"}) || !slices.Equal(res.Seqs, []uint64{3}) {
		t.Fatalf("Delete: %+v, %v", res, err)
	}
	if e := res.Event; e.Event != persist.EventDelete || e.Target != 2 || persist.ConvOf("alice", &e) != peer("bob") {
		t.Fatalf("delete event %+v (conversation %+v)", e, persist.ConvOf("alice", &e))
	}
	es := ReadGapFree(t, s, "alice")
	if !es[1].Deleted || len(es[1].Msg.Body) != 0 || es[0].Deleted || es[2].Msg.Event != persist.EventDelete {
		t.Fatalf("alice's inbox after the delete: %+v", es)
	}
	if h := mustHistory(t, s, "alice", peer("bob"), 0, 10); !slices.Equal(h, []uint64{1}) {
		t.Fatalf("alice's history after deleting 2: %v", h)
	}
	if c := convOf(t, s, "alice", peer("bob")); !c.HasLast || c.Last.Msg.ID != 1 || c.LastSeq != 2 {
		t.Fatalf("alice's conversation after deleting 2: %+v", c)
	}
	if h := mustHistory(t, s, "bob", peer("alice"), 0, 10); !slices.Equal(h, []uint64{1, 2}) {
		t.Fatalf("bob's history changed by alice's delete: %v", h)
	}
	if last := mustLastSeq(t, s, "bob"); last != 2 {
		t.Fatalf("alice's delete appended to bob's inbox: last %d", last)
	}
	again, err := s.Delete(ctx, persist.EventRequest{User: "alice", Target: 2, ID: 51, Timestamp: 8})
	if err != nil || !again.Duplicate || len(again.Seqs) != 0 {
		t.Fatalf("repeated Delete: %+v, %v", again, err)
	}
	if last := mustLastSeq(t, s, "alice"); last != 3 {
		t.Fatalf("a repeated delete appended: last %d", last)
	}
	_, err = s.Delete(ctx, persist.EventRequest{User: "carol", Target: 2, ID: 52, Timestamp: 8})
	wantErr(t, "delete by a user whose inbox does not hold it", err, persist.ErrNotFound)
	if _, err := s.Delete(ctx, persist.EventRequest{User: "alice", Target: 1, ID: 53, Timestamp: 9}); err != nil {
		t.Fatal(err)
	}
	if c := convOf(t, s, "alice", peer("bob")); c.HasLast {
		t.Fatalf("every message deleted, yet Last is %+v", c.Last)
	}
	if seq, err := s.SeqOf(ctx, "bob", 2); err != nil || seq != 2 {
		t.Fatalf("SeqOf(bob, 2) = %d, %v", seq, err)
	}
	_, err = s.SeqOf(ctx, "carol", 2)
	wantErr(t, "SeqOf in an inbox without it", err, persist.ErrNotFound)
}

// testReadCount: a group message's read count counts the members whose
// cursor covers it, never its sender.
func testReadCount(t *testing.T, s chatStore) {
	ctx := t.Context()
	say(t, s, 1, "x", "carol") // carol's seqs run one ahead
	mustAppend(t, s, chatMsg(2, "alice", "g", true), "alice", "bob", "carol")
	mustAppend(t, s, chatMsg(3, "bob", "g", true), "bob", "alice", "carol")
	count := func(user string, seq uint64) (int, int) {
		t.Helper()
		r, n, err := s.ReadCount(ctx, user, group("g"), seq)
		if err != nil {
			t.Fatalf("ReadCount(%s, %d): %v", user, seq, err)
		}
		return r, n
	}
	// bob's own message moved his cursor past alice's message.
	if r, n := count("alice", 1); r != 1 || n != 2 {
		t.Fatalf("message 2 read by %d of %d, want 1 of 2 (bob, by sending)", r, n)
	}
	if _, err := s.MarkRead(ctx, "carol", group("g"), 2); err != nil {
		t.Fatal(err)
	}
	if r, n := count("bob", 1); r != 2 || n != 2 {
		t.Fatalf("message 2 after carol read it: %d of %d", r, n)
	}
	if r, n := count("bob", 2); r != 0 || n != 2 {
		t.Fatalf("message 3: %d of %d, want 0 of 2", r, n)
	}
	_, _, err := s.ReadCount(ctx, "carol", group("g"), 1)
	wantErr(t, "ReadCount of a seq in another conversation", err, persist.ErrNotFound)
	_, _, err = s.ReadCount(ctx, "carol", group("g"), 99)
	wantErr(t, "ReadCount of a seq beyond the inbox", err, persist.ErrNotFound)
}

// testChatInvalid: malformed arguments are ErrInvalid.
func testChatInvalid(t *testing.T, s chatStore) {
	ctx := t.Context()
	say(t, s, 1, "alice", "bob")
	_, err := s.Conversations(ctx, "alice", 0, 0)
	wantErr(t, "Conversations with limit 0", err, persist.ErrInvalid)
	_, err = s.Conversations(ctx, "", 0, 1)
	wantErr(t, "Conversations of an empty user", err, persist.ErrInvalid)
	_, err = s.History(ctx, "alice", peer("bob"), 0, 0)
	wantErr(t, "History with limit 0", err, persist.ErrInvalid)
	_, err = s.History(ctx, "alice", peer(""), 0, 5)
	wantErr(t, "History of an empty conversation id", err, persist.ErrInvalid)
	_, err = s.MarkRead(ctx, "alice", peer(""), 1)
	wantErr(t, "MarkRead of an empty conversation id", err, persist.ErrInvalid)
	_, err = s.Recall(ctx, persist.EventRequest{User: "alice", Target: 1, ID: 1, Timestamp: 1})
	if !errors.Is(err, persist.ErrInvalid) {
		t.Fatalf("Recall with an event id already taken: %v, want ErrInvalid", err)
	}
}

// testConcurrentChat: appends from several senders race with reads of the
// list and a reader of one conversation (its cursor clamped to what had
// arrived); the result is what the appends and the highest read imply.
func testConcurrentChat(t *testing.T, s chatStore) {
	const senders, each = 4, 50
	var wg sync.WaitGroup
	for w := range senders {
		wg.Go(func() {
			for i := range each {
				id := uint64(w*each + i + 1)
				if _, err := s.Append(t.Context(), chatMsg(id, fmt.Sprint("s", w), "alice", false), []string{fmt.Sprint("s", w), "alice"}); err != nil {
					t.Errorf("append %d: %v", id, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range each {
			if _, err := s.Conversations(t.Context(), "alice", 0, 10); err != nil {
				t.Errorf("Conversations: %v", err)
				return
			}
			if _, err := s.MarkRead(t.Context(), "alice", peer("s0"), 10); err != nil && !errors.Is(err, persist.ErrNotFound) {
				t.Errorf("MarkRead: %v", err)
				return
			}
		}
	})
	wg.Wait()
	es := ReadGapFree(t, s, "alice")
	if len(es) != senders*each {
		t.Fatalf("alice holds %d entries, want %d", len(es), senders*each)
	}
	for w := range senders {
		var seqs []uint64
		for _, e := range es {
			if e.Msg.From == fmt.Sprint("s", w) {
				seqs = append(seqs, e.Seq)
			}
		}
		c := convOf(t, s, "alice", peer(fmt.Sprint("s", w)))
		unread := 0
		for _, q := range seqs {
			if q > c.ReadSeq {
				unread++
			}
		}
		if c.LastSeq != seqs[len(seqs)-1] || c.Unread != unread || (w != 0 && c.ReadSeq != 0) || c.ReadSeq > 10 {
			t.Fatalf("conversation with s%d: %+v, want last %d, unread %d", w, c, seqs[len(seqs)-1], unread)
		}
	}
}

// testEventDone: EventRequest.Done is called once, before Recall or Delete
// returns, with the result they return; never on an error.
func testEventDone(t *testing.T, s chatStore) {
	ctx := t.Context()
	say(t, s, 1, "alice", "bob")
	var got []persist.EventResult
	done := func(r *persist.EventResult) { got = append(got, *r) }
	_, err := s.Recall(ctx, persist.EventRequest{User: "bob", Target: 1, ID: 10, Timestamp: 1, Done: done})
	wantErr(t, "recall by the recipient", err, persist.ErrNotSender)
	if len(got) != 0 {
		t.Fatalf("Done called on an error: %+v", got)
	}
	for i, call := range []func() (persist.EventResult, error){
		func() (persist.EventResult, error) {
			return s.Recall(ctx, persist.EventRequest{User: "alice", Target: 1, ID: 11, Timestamp: 1, Done: done})
		},
		func() (persist.EventResult, error) {
			return s.Recall(ctx, persist.EventRequest{User: "alice", Target: 1, ID: 12, Timestamp: 1, Done: done})
		},
		func() (persist.EventResult, error) {
			return s.Delete(ctx, persist.EventRequest{User: "bob", Target: 1, ID: 13, Timestamp: 1, Done: done})
		},
	} {
		res, err := call()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if len(got) != i+1 || !slices.Equal(got[i].Seqs, res.Seqs) || got[i].Duplicate != res.Duplicate || got[i].Event.ID != res.Event.ID {
			t.Fatalf("call %d returned %+v; Done saw %+v", i, res, got)
		}
	}
	if !got[1].Duplicate || got[2].Duplicate {
		t.Fatalf("Done results %+v", got)
	}
}
