package mongostore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
	"unsafe"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/persist"
)

// rawInbox returns every entry of user's inbox as stored (seq -> message
// ID), bypassing ReadInbox's contiguity rule, so gaps show.
func rawInbox(t *testing.T, s *Store, user string) map[uint64]uint64 {
	t.Helper()
	cur, err := s.inbox.Find(t.Context(), bson.D{{Key: "user", Value: enc(user)}})
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close(t.Context())
	out := map[uint64]uint64{}
	for cur.Next(t.Context()) {
		_, id, seq, err := decodeEntry(cur.Current)
		if err != nil {
			t.Fatal(err)
		}
		out[seq] = id
	}
	if err := cur.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestOwnersChangeUnderLoad: senders append through stores chosen at random
// per attempt (the owner of an inbox changing under them), with attempts
// abandoned at short deadlines while they complete in the background, as a
// forward whose link drops does. No acknowledged message may be missing,
// no inbox may have a gap, and one sender's acknowledged messages must keep
// their order in every inbox.
func TestOwnersChangeUnderLoad(t *testing.T) {
	svc := testsvc.StartMongo(t)
	db := fmt.Sprintf("owners%d", time.Now().UnixNano())
	var stores []*Store
	for range 3 {
		s, err := Open(t.Context(), Options{URI: svc.URI(), Database: db})
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
	}
	defer func() {
		for _, s := range stores {
			s.Close()
		}
	}()
	const users = 6
	const perSender = 15
	type ack struct {
		from, to  string
		id        uint64
		fromSeq   uint64
		toSeq     uint64
		ackedAt   int
		cmid      string
		senderIdx int
	}
	var mu sync.Mutex
	var acks []ack
	var idSeq uint64
	nextID := func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		idSeq++
		return idSeq
	}
	var wg sync.WaitGroup
	for si := range users {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(si), 7))
			from := fmt.Sprint("u", si)
			for i := range perSender {
				to := fmt.Sprint("u", (si+1+i%(users-1))%users)
				cmid := fmt.Sprint(from, "-", i)
				for attempt := 0; ; attempt++ {
					if attempt > 200 {
						t.Errorf("%s: no success after 200 attempts", cmid)
						return
					}
					timeout := time.Duration(rng.IntN(40)) * time.Millisecond
					if attempt > 20 {
						timeout = 5 * time.Second
					}
					ctx, cancel := context.WithTimeout(context.Background(), timeout)
					m := persist.Message{ID: nextID(), From: from, To: to, ClientMsgID: cmid, Body: []byte(cmid)}
					first, err := stores[rng.IntN(len(stores))].Append(ctx, m, []string{from})
					if err != nil {
						cancel()
						if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, persist.ErrUnavailable) {
							t.Errorf("%s: %v", cmid, err)
							return
						}
						continue
					}
					second, err := stores[rng.IntN(len(stores))].Append(ctx, first.Msg, []string{to})
					cancel()
					if err != nil {
						if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, persist.ErrUnavailable) {
							t.Errorf("%s: %v", cmid, err)
							return
						}
						continue
					}
					mu.Lock()
					acks = append(acks, ack{from: from, to: to, id: first.Msg.ID, fromSeq: first.Seqs[0], toSeq: second.Seqs[0],
						ackedAt: len(acks), cmid: cmid, senderIdx: i})
					mu.Unlock()
					break
				}
			}
		})
	}
	wg.Wait()
	// Let abandoned attempts finish.
	time.Sleep(500 * time.Millisecond)
	if t.Failed() {
		return
	}
	inboxes := map[string]map[uint64]uint64{}
	for u := range users {
		user := fmt.Sprint("u", u)
		in := rawInbox(t, stores[0], user)
		inboxes[user] = in
		for seq := uint64(1); seq <= uint64(len(in)); seq++ {
			if _, ok := in[seq]; !ok {
				t.Errorf("inbox %s: %d entries but seq %d missing (gap)", user, len(in), seq)
			}
		}
	}
	pos := map[string]map[uint64]uint64{} // user -> msg -> seq
	for u, in := range inboxes {
		pos[u] = map[uint64]uint64{}
		for seq, id := range in {
			if prev, dup := pos[u][id]; dup {
				t.Errorf("inbox %s: message %d at seq %d and %d", u, id, prev, seq)
			}
			pos[u][id] = seq
		}
	}
	last := map[[2]string]uint64{} // (sender, inbox) -> seq of the last acked
	for _, a := range acks {
		for _, side := range []struct {
			user string
			seq  uint64
		}{{a.from, a.fromSeq}, {a.to, a.toSeq}} {
			got, ok := pos[side.user][a.id]
			if !ok {
				t.Errorf("acked %s (id %d) missing from %s (acked seq %d)", a.cmid, a.id, side.user, side.seq)
				continue
			}
			if got != side.seq {
				t.Errorf("acked %s at %s seq %d, stored at %d", a.cmid, side.user, side.seq, got)
			}
			k := [2]string{a.from, side.user}
			if got <= last[k] {
				t.Errorf("order: %s at %s seq %d after a later-acked message of %s at seq %d", a.cmid, side.user, got, a.from, last[k])
			}
			last[k] = got
		}
	}
	var st []Stats
	for _, s := range stores {
		st = append(st, s.Stats())
	}
	t.Logf("%d acked; stats %+v", len(acks), st)
}

// aliased returns a string that views b: what the engine passes for
// names taken from a pooled request buffer, which it overwrites with the
// next request once the call returned.
func aliased(b []byte) string { return unsafe.String(&b[0], len(b)) }

// TestAppendKeepsNoCallerMemory: the names and bodies an Append was given
// may be overwritten as soon as it returns. The store's seq cache must not
// change under it (keys that change their bytes to another user's name
// planned that user's next seq past its end: a gap that hid acknowledged
// messages from readers), and an append whose caller gave up must still go
// to the inbox it was asked for.
func TestAppendKeepsNoCallerMemory(t *testing.T) {
	svc := testsvc.StartMongo(t)
	open := func(t *testing.T, cacheSize int) *Store {
		s, err := Open(t.Context(), Options{URI: svc.URI(), Database: fmt.Sprintf("alias%d", time.Now().UnixNano()),
			SeqCacheSize: cacheSize, OpTimeout: 5 * time.Second, ServerSelectionTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	users := []string{"u0", "u1", "u2", "u3", "u4", "u5"}
	checkGapFree := func(t *testing.T, s *Store) map[string]uint64 {
		t.Helper()
		lens := map[string]uint64{}
		for _, u := range users {
			in := rawInbox(t, s, u)
			for seq := uint64(1); seq <= uint64(len(in)); seq++ {
				if _, ok := in[seq]; !ok {
					t.Fatalf("inbox %s: %d entries, seq %d missing (gap)", u, len(in), seq)
				}
			}
			lens[u] = uint64(len(in))
		}
		return lens
	}

	t.Run("SeqCacheKeys", func(t *testing.T) {
		s := open(t, 0)
		buf := make([]byte, 2)
		from := make([]byte, 1)
		for i := range 60 {
			copy(buf, users[i%len(users)])
			from[0] = 'a' + byte(i%3)
			m := persist.Message{ID: uint64(i + 1), From: aliased(from), To: aliased(buf), ClientMsgID: fmt.Sprint(i), Body: []byte("x")}
			if _, err := s.Append(t.Context(), m, []string{aliased(buf)}); err != nil {
				t.Fatal(err)
			}
			copy(buf, "zz") // the caller reuses its buffer
			from[0] = '?'
		}
		lens := checkGapFree(t, s)
		if len(s.seqCache) != len(users) {
			t.Errorf("seq cache has %d keys, want %d", len(s.seqCache), len(users))
		}
		for u, seq := range s.seqCache { // the committer is idle: no race
			if want, ok := lens[u]; !ok || seq != want {
				t.Errorf("seq cache[%q] = %d; inbox %q holds %d entries", u, seq, u, want)
			}
		}
		got, err := s.Lookup(t.Context(), "a", "0")
		if err != nil || got.To != "u0" {
			t.Errorf("Lookup(a, 0) = %+v, %v; want the message to u0", got, err)
		}
	})

	// The engine's pattern: buffers taken from a pool in any order, one
	// name each, overwritten by the next user of the buffer. A small cache
	// is cleared often, and every clear gives its hash a new seed, so the
	// cases where a changed key answers for another name come up.
	t.Run("PooledBuffers", func(t *testing.T) {
		s := open(t, 8)
		pool := [][]byte{make([]byte, 2), make([]byte, 2), make([]byte, 2)}
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range 1200 {
			b := pool[rng.IntN(len(pool))]
			copy(b, users[rng.IntN(len(users))])
			if _, err := s.Append(t.Context(), persist.Message{ID: uint64(i + 1), From: "x", ClientMsgID: fmt.Sprint(i)}, []string{aliased(b)}); err != nil {
				t.Fatal(err)
			}
		}
		checkGapFree(t, s)
	})

	// The caller's deadline passes while the committer waits for a paused
	// server; the caller reuses its buffer; the append completes later, in
	// the inbox it was asked for.
	t.Run("AbandonedAppend", func(t *testing.T) {
		s := open(t, 0)
		if _, err := s.Append(t.Context(), persist.Message{ID: 1, From: "x", ClientMsgID: "warm"}, []string{"u0"}); err != nil {
			t.Fatal(err)
		}
		if err := svc.Pause(); err != nil {
			t.Fatal(err)
		}
		buf := []byte("u1")
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		_, err := s.Append(ctx, persist.Message{ID: 2, From: "x", To: aliased(buf), ClientMsgID: "late"}, []string{aliased(buf)})
		cancel()
		copy(buf, "u2")
		if rerr := svc.Resume(); rerr != nil {
			t.Fatal(rerr)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Append to a paused server with a 300 ms deadline: %v", err)
		}
		// Wait until the committer has written it (a later append on the
		// same committer completes after it).
		if _, err := s.Append(t.Context(), persist.Message{ID: 3, From: "x", ClientMsgID: "after"}, []string{"u0"}); err != nil {
			t.Fatal(err)
		}
		if in := rawInbox(t, s, "u1"); len(in) != 1 || in[1] != 2 {
			t.Errorf("inbox u1 = %v, want the abandoned message 2 at seq 1", in)
		}
		if in := rawInbox(t, s, "u2"); len(in) != 0 {
			t.Errorf("inbox u2 = %v, want empty", in)
		}
		if got, err := s.Lookup(t.Context(), "x", "late"); err != nil || got.To != "u1" {
			t.Errorf("Lookup(x, late) = %+v, %v; want the message to u1", got, err)
		}
	})
}
