package main

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec/pb"
)

// The chat part of the workload: read cursors and recalls under the same
// faults as the messages.
//
//   - Every client marks a conversation read every readEvery, up to the
//     last message it received in it. A READ_OK must never report a
//     cursor below one an earlier READ_OK of that conversation reported
//     (a cursor moved back), and after the drain the cursor CONVERSATIONS
//     reports must be at least the highest acknowledged one, the same on a
//     second device of the user (every device converges).
//   - Every recallEvery-th acknowledged message is recalled by its sender
//     at once. After the drain (recalls that failed are retried then, as
//     an application would), both inboxes of every recalled message must
//     hold its recall event: every device of every member ends with the
//     recall applied.

const (
	recallEvery = 5
	readEvery   = 700 * time.Millisecond
)

// convRef is one user's conversation with a peer.
type convRef struct{ user, peer string }

type recallRec struct {
	from, to string
	acked    bool
}

// chatLedger records the chat operations and what the clients saw.
type chatLedger struct {
	mu      sync.Mutex
	recalls map[uint64]*recallRec      // by target message id
	read    map[convRef]uint64         // highest acknowledged read cursor
	last    map[convRef]uint64         // seq of the last message received from the peer
	events  map[uint64]map[string]bool // recall target -> users whose stream holds its event
	reads   int
	back    int
}

func newChatLedger() *chatLedger {
	return &chatLedger{recalls: map[uint64]*recallRec{}, read: map[convRef]uint64{}, last: map[convRef]uint64{},
		events: map[uint64]map[string]bool{}}
}

// received notes a message or event of user's stream; it reports whether
// m is an event (which the message accounting skips).
func (ch *chatLedger) received(user string, m *pb.Message) bool {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if m.Event != 0 {
		if m.Event == 1 {
			if ch.events[m.TargetMsgId] == nil {
				ch.events[m.TargetMsgId] = map[string]bool{}
			}
			ch.events[m.TargetMsgId][user] = true
		}
		return true
	}
	if m.From != "" && m.From != user {
		ch.last[convRef{user, m.From}] = m.Seq
	}
	return false
}

// recall withdraws message id (from -> to) and records the outcome.
func (ch *chatLedger) recall(ctx context.Context, cl *client.Client, from, to string, id uint64) {
	ch.mu.Lock()
	rec := ch.recalls[id]
	if rec == nil {
		rec = &recallRec{from: from, to: to}
		ch.recalls[id] = rec
	}
	ch.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	_, err := cl.Recall(rctx, id)
	cancel()
	if err == nil {
		ch.mu.Lock()
		rec.acked = true
		ch.mu.Unlock()
	}
}

// reader marks user's conversations read until ctx ends.
func (ch *chatLedger) reader(ctx context.Context, cl *client.Client, user string, rng *rand.Rand) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(readEvery/2 + time.Duration(rng.Int64N(int64(readEvery)))):
		}
		ch.mu.Lock()
		var convs []convRef
		for c := range ch.last {
			if c.user == user {
				convs = append(convs, c)
			}
		}
		var c convRef
		var upTo uint64
		if len(convs) > 0 {
			c = convs[rng.IntN(len(convs))]
			upTo = ch.last[c]
		}
		ch.mu.Unlock()
		if upTo == 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ok, err := cl.Read(rctx, client.Peer(c.peer), upTo)
		cancel()
		if err != nil {
			continue // unacknowledged: the cursor may or may not have moved
		}
		ch.mu.Lock()
		ch.reads++
		if ok.ReadSeq < ch.read[c] {
			ch.back++
		}
		ch.read[c] = max(ch.read[c], ok.ReadSeq)
		ch.mu.Unlock()
	}
}

// ChatCounts is the chat part of the verdict.
type ChatCounts struct {
	Reads, CursorBack, CursorDiverged, Recalls, RecallsAcked, RecallLost int
}

// finish runs after the drain: it retries the recalls that failed, waits
// for every recall event to reach both inboxes, and compares every
// client's read cursors with the acknowledged ones and with a second
// device's view.
func (ch *chatLedger) finish(ctx context.Context, users []string, clients []*client.Client, dial func(user string) (*client.Client, error)) ChatCounts {
	byUser := map[string]*client.Client{}
	for i, u := range users {
		byUser[u] = clients[i]
	}
	ch.mu.Lock()
	var retry []uint64
	for id, r := range ch.recalls {
		if !r.acked {
			retry = append(retry, id)
		}
	}
	ch.mu.Unlock()
	for _, id := range retry {
		ch.mu.Lock()
		r := ch.recalls[id]
		ch.mu.Unlock()
		ch.recall(ctx, byUser[r.from], r.from, r.to, id)
	}
	missing := func() int {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		n := 0
		for id, r := range ch.recalls {
			if got := ch.events[id]; !got[r.from] || !got[r.to] {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(60 * time.Second)
	for missing() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		for _, cl := range clients {
			sc, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = cl.SyncNow(sc)
			cancel()
		}
		time.Sleep(500 * time.Millisecond)
	}
	var out ChatCounts
	out.RecallLost = missing()
	ch.mu.Lock()
	out.Reads, out.CursorBack, out.Recalls = ch.reads, ch.back, len(ch.recalls)
	for _, r := range ch.recalls {
		if r.acked {
			out.RecallsAcked++
		}
	}
	ch.mu.Unlock()
	for i, u := range users {
		seen, err := readCursors(ctx, clients[i])
		if err != nil {
			out.CursorDiverged++
			continue
		}
		ch.mu.Lock()
		for c, acked := range ch.read {
			if c.user == u && seen[c.peer] < acked {
				out.CursorBack++
			}
		}
		ch.mu.Unlock()
		if i >= 4 { // a second device for a few users is enough to see the shared view
			continue
		}
		second, err := dial(u)
		if err != nil {
			out.CursorDiverged++
			continue
		}
		other, err := readCursors(ctx, second)
		_ = second.Close()
		if err != nil || len(other) != len(seen) {
			out.CursorDiverged++
			continue
		}
		for peer, seq := range seen {
			if other[peer] != seq {
				out.CursorDiverged++
			}
		}
	}
	return out
}

// readCursors returns the read cursor of every 1:1 conversation of cl's
// user, by peer.
func readCursors(ctx context.Context, cl *client.Client) (map[string]uint64, error) {
	out := map[string]uint64{}
	before := uint64(0)
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		page, err := cl.Conversations(rctx, before, 200)
		cancel()
		if err != nil {
			return nil, err
		}
		for _, c := range page.Conversations {
			if c.Peer != "" {
				out[c.Peer] = c.ReadSeq
			}
			before = c.LastSeq
		}
		if !page.HasMore || len(page.Conversations) == 0 {
			return out, nil
		}
	}
}
