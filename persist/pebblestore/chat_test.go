package pebblestore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
	"github.com/imgn/imgn/persist/storetest"
)

// checkConvsAgree recomputes user's conversations from the whole inbox and
// fails t unless Conversations and History say the same: every
// conversation with its last seq, the messages of others above the read
// cursor as unread, the cursor at or above the user's own newest message,
// and the history as the inbox's messages of that conversation (deleted
// ones left out).
func checkConvsAgree(t *testing.T, s *pebblestore.Store, user string) {
	t.Helper()
	ctx := t.Context()
	es := storetest.ReadGapFree(t, s, user)
	type want struct {
		last, own uint64
		others    []uint64 // seqs of others' messages
		history   []uint64 // message ids, ascending
	}
	convs := map[persist.ConvID]*want{}
	for _, e := range es {
		id := persist.ConvOf(user, &e.Msg)
		if e.Msg.Event != persist.EventNone || id.ID == "" {
			continue
		}
		w := convs[id]
		if w == nil {
			w = &want{}
			convs[id] = w
		}
		w.last = e.Seq
		if e.Msg.From == user {
			w.own = e.Seq
		} else {
			w.others = append(w.others, e.Seq)
		}
		if !e.Deleted {
			w.history = append(w.history, e.Msg.ID)
		}
	}
	got, err := s.Conversations(ctx, user, 0, 1<<20)
	if err != nil {
		t.Fatalf("Conversations(%s): %v", user, err)
	}
	if len(got) != len(convs) {
		t.Fatalf("%s: %d conversations, the inbox has %d", user, len(got), len(convs))
	}
	for i, c := range got {
		w := convs[c.Conv]
		if w == nil {
			t.Fatalf("%s: conversation %+v not in the inbox", user, c.Conv)
		}
		if i > 0 && c.LastSeq >= got[i-1].LastSeq {
			t.Fatalf("%s: conversations not newest first: %d after %d", user, c.LastSeq, got[i-1].LastSeq)
		}
		unread := 0
		for _, q := range w.others {
			if q > c.ReadSeq {
				unread++
			}
		}
		if c.LastSeq != w.last || c.ReadSeq < w.own || c.Unread != unread {
			t.Fatalf("%s: conversation %+v: last %d read %d unread %d; the inbox says last %d, own %d, unread %d",
				user, c.Conv, c.LastSeq, c.ReadSeq, c.Unread, w.last, w.own, unread)
		}
		h, err := s.History(ctx, user, c.Conv, 0, 1<<20)
		if err != nil {
			t.Fatalf("History(%s, %+v): %v", user, c.Conv, err)
		}
		ids := make([]uint64, len(h))
		for j, e := range h {
			ids[j] = e.Msg.ID
		}
		if !slices.Equal(ids, w.history) {
			t.Fatalf("%s: history of %+v is %v; the inbox has %v", user, c.Conv, ids, w.history)
		}
	}
}

// TestChatReopen: conversations, cursors, deletes and recalls survive a
// close; appends after the reopen continue the counts (the committer
// reloads each conversation's state on first use).
func TestChatReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s := openAt(t, dir, pebblestore.Options{})
	say := func(s *pebblestore.Store, id uint64, from, to string) {
		t.Helper()
		m := persist.Message{ID: id, From: from, To: to, ClientMsgID: fmt.Sprint(id), Timestamp: time.Now().UnixMilli(), Body: []byte("hi")}
		if _, err := s.Append(ctx, m, []string{from, to}); err != nil {
			t.Fatal(err)
		}
	}
	for i := uint64(1); i <= 6; i++ {
		say(s, i, "bob", "alice")
	}
	say(s, 7, "alice", "bob")
	say(s, 8, "bob", "alice")
	if _, err := s.MarkRead(ctx, "bob", persist.ConvID{ID: "alice"}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, persist.EventRequest{User: "alice", Target: 2, ID: 100, Timestamp: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recall(ctx, persist.EventRequest{User: "bob", Target: 8, ID: 101, Timestamp: 1}); err != nil {
		t.Fatal(err)
	}
	before, err := s.Conversations(ctx, "alice", 0, 10)
	if err != nil || len(before) != 1 || before[0].Unread != 1 || before[0].ReadSeq != 7 {
		t.Fatalf("alice before the reopen: %+v, %v (want unread 1, read 7)", before, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, dir, pebblestore.Options{})
	defer s.Close()
	after, err := s.Conversations(ctx, "alice", 0, 10)
	if err != nil || !slices.EqualFunc(before, after, func(a, b persist.Conversation) bool {
		return a.Conv == b.Conv && a.LastSeq == b.LastSeq && a.ReadSeq == b.ReadSeq && a.Unread == b.Unread &&
			a.Last.Msg.ID == b.Last.Msg.ID && a.Last.Msg.Recalled == b.Last.Msg.Recalled
	}) {
		t.Fatalf("alice after the reopen: %+v, %v; before: %+v", after, err, before)
	}
	say(s, 9, "bob", "alice")
	// alice's seqs: 1-6, 8 from bob, 7 her own, 9 and 10 the delete and
	// recall events, 11 the new message.
	if c, err := s.Conversations(ctx, "alice", 0, 10); err != nil || c[0].Unread != 2 || c[0].LastSeq != 11 {
		t.Fatalf("a message after the reopen: %+v, %v (want unread 2, last 11)", c, err)
	}
	if res, err := s.Recall(ctx, persist.EventRequest{User: "bob", Target: 8, ID: 102, Timestamp: 1}); err != nil || !res.Duplicate || res.Event.ID != 101 {
		t.Fatalf("a repeated recall after the reopen: %+v, %v", res, err)
	}
	if res, err := s.Delete(ctx, persist.EventRequest{User: "alice", Target: 2, ID: 103, Timestamp: 1}); err != nil || !res.Duplicate {
		t.Fatalf("a repeated delete after the reopen: %+v, %v", res, err)
	}
	for _, u := range []string{"alice", "bob"} {
		checkConvsAgree(t, s, u)
	}
}

// TestChatAgeRetention: messages removed by age take their conversation
// entries with them; a conversation that lost all of them keeps its last
// seq and cursor, and its next message counts on from there.
func TestChatAgeRetention(t *testing.T) {
	ctx := t.Context()
	now := time.Now()
	s := openAt(t, t.TempDir(), pebblestore.Options{Retention: persist.Retention{MaxAge: time.Hour}, Now: func() time.Time { return now }})
	defer s.Close()
	old := now.Add(-2 * time.Hour).UnixMilli()
	for i := uint64(1); i <= 100; i++ { // above the range-deletion threshold
		m := persist.Message{ID: i, From: "bob", To: "alice", ClientMsgID: fmt.Sprint(i), Timestamp: old, Body: []byte("x")}
		if _, err := s.Append(ctx, m, []string{"bob", "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.MarkRead(ctx, "alice", persist.ConvID{ID: "bob"}, 40); err != nil {
		t.Fatal(err)
	}
	if err := s.EnforceRetention(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := s.Conversations(ctx, "alice", 0, 10)
	if err != nil || len(c) != 1 || c[0].LastSeq != 100 || c[0].ReadSeq != 40 || c[0].Unread != 0 || c[0].HasLast {
		t.Fatalf("alice after every message expired: %+v, %v", c, err)
	}
	if h, err := s.History(ctx, "alice", persist.ConvID{ID: "bob"}, 0, 10); err != nil || len(h) != 0 {
		t.Fatalf("history of expired messages: %+v, %v", h, err)
	}
	if b, err := s.Conversations(ctx, "bob", 0, 10); err != nil || b[0].ReadSeq != 100 || b[0].Unread != 0 || b[0].LastSeq != 100 {
		t.Fatalf("bob (whose own messages expired): %+v, %v", b, err)
	}
	m := persist.Message{ID: 200, From: "bob", To: "alice", ClientMsgID: "200", Timestamp: now.UnixMilli(), Body: []byte("y")}
	if _, err := s.Append(ctx, m, []string{"bob", "alice"}); err != nil {
		t.Fatal(err)
	}
	c, err = s.Conversations(ctx, "alice", 0, 10)
	if err != nil || c[0].LastSeq != 101 || c[0].Unread != 1 || c[0].ReadSeq != 40 || !c[0].HasLast || c[0].Last.Msg.ID != 200 {
		t.Fatalf("alice after a fresh message: %+v, %v", c, err)
	}
	if b, err := s.Conversations(ctx, "bob", 0, 10); err != nil || b[0].ReadSeq != 101 || b[0].LastSeq != 101 {
		t.Fatalf("bob after his fresh message: %+v, %v", b, err)
	}
}

// The chat crash test: a child process appends 1:1 and group messages
// among a few users and moves read cursors, until it is SIGKILLed; three
// rounds on one directory (so each round starts from a crashed store).
// Afterwards every user's conversations agree with its inbox, and every
// acknowledged message is stored: a crash never leaves an inbox and its
// conversations disagreeing.
const chatCrashEnv = "PEBBLESTORE_CHAT_CRASH_DIR"

var chatUsers = []string{"u0", "u1", "u2", "u3", "u4", "u5"}

// TestChatCrashChild is the child of TestChatCrashSIGKILL; run on its own
// it does nothing.
func TestChatCrashChild(t *testing.T) {
	dir := os.Getenv(chatCrashEnv)
	if dir == "" {
		return
	}
	round := os.Getenv(chatCrashEnv + "_ROUND")
	s := openAt(t, dir, pebblestore.Options{})
	time.AfterFunc(time.Minute, func() { os.Exit(3) }) // never outlive a lost parent
	out := make(chan string, 1024)
	for w := range 6 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(len(round))))
			from := chatUsers[w]
			for i := 0; ; i++ {
				id := uint64(len(round)+1)<<48 | uint64(w)<<32 | uint64(i+1)
				var m persist.Message
				var inboxes []string
				switch i % 5 {
				case 4: // a group message to three users
					m = persist.Message{ID: id, From: from, To: "g", Group: true}
					inboxes = []string{from, chatUsers[(w+1)%6], chatUsers[(w+2)%6]}
				default:
					to := chatUsers[(w+1+rng.IntN(5))%6]
					m = persist.Message{ID: id, From: from, To: to}
					inboxes = []string{from, to}
				}
				m.ClientMsgID, m.Timestamp, m.Body = fmt.Sprintf("%s-%d", round, i), time.Now().UnixMilli(), []byte("b")
				if _, err := s.Append(context.Background(), m, inboxes); err != nil {
					fmt.Println("ERR", err)
					os.Exit(4)
				}
				out <- fmt.Sprintf("ACK %s %s", from, m.ClientMsgID)
				if i%7 == 3 {
					peer := persist.ConvID{ID: chatUsers[(w+1+rng.IntN(5))%6]}
					if _, err := s.MarkRead(context.Background(), from, peer, uint64(rng.IntN(50))); err != nil && !strings.Contains(err.Error(), "not found") {
						fmt.Println("ERR", err)
						os.Exit(4)
					}
				}
			}
		}()
	}
	for line := range out {
		fmt.Println(line)
	}
}

func TestChatCrashSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	dir := t.TempDir()
	var acks [][2]string
	for round := range 3 {
		env := []string{chatCrashEnv + "=" + dir, fmt.Sprintf("%s_ROUND=%s", chatCrashEnv, strings.Repeat("r", round+1))}
		storetest.KillAfter(t, "TestChatCrashChild", env, 400+200*round, func(line string) bool {
			f := strings.Fields(line)
			if len(f) != 3 || f[0] != "ACK" {
				return false
			}
			acks = append(acks, [2]string{f[1], f[2]})
			return true
		})
	}
	s := openAt(t, dir, pebblestore.Options{})
	defer s.Close()
	for _, a := range acks {
		if _, err := s.Lookup(t.Context(), a[0], a[1]); err != nil {
			t.Fatalf("acked message %s/%s: %v", a[0], a[1], err)
		}
	}
	for _, u := range chatUsers {
		checkConvsAgree(t, s, u)
	}
	t.Logf("%d acked appends; conversations of %d users agree with their inboxes", len(acks), len(chatUsers))
}

// BenchmarkChatReads: the chat reads on a user with 100 conversations of
// 20 messages each (NoSync: the reads are what is measured).
func BenchmarkChatReads(b *testing.B) {
	s := openAt(b, b.TempDir(), pebblestore.Options{NoSync: true})
	defer s.Close()
	ctx := context.Background()
	const convs, each = 100, 20
	for i := range convs * each {
		peer := fmt.Sprint("peer", i%convs)
		m := persist.Message{ID: uint64(i + 1), From: peer, To: "alice", ClientMsgID: fmt.Sprint(i), Timestamp: 1, Body: make([]byte, 100)}
		if _, err := s.Append(ctx, m, []string{peer, "alice"}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.MarkRead(ctx, "alice", persist.ConvID{ID: "peer7"}, 0); err != nil {
		b.Fatal(err)
	}
	b.Run("Conversations50", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if cs, err := s.Conversations(ctx, "alice", 0, 50); err != nil || len(cs) != 50 {
				b.Fatal(len(cs), err)
			}
		}
	})
	b.Run("History20", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if h, err := s.History(ctx, "alice", persist.ConvID{ID: "peer3"}, 0, 20); err != nil || len(h) != each {
				b.Fatal(len(h), err)
			}
		}
	})
	b.Run("MarkRead", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.MarkRead(ctx, "alice", persist.ConvID{ID: "peer5"}, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
