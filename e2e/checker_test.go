package e2e

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/testutil"
)

// ledger records what senders were told and what receivers saw, and
// checks the delivery guarantees against every inbox.
type ledger struct {
	mu    sync.Mutex
	acked map[string]ackRec // client_msg_id -> ack
	sent  map[string]bool   // every id ever attempted
}

type ackRec struct {
	from, to string
	seq      uint64 // in the sender's inbox
}

func newLedger() *ledger { return &ledger{acked: map[string]ackRec{}, sent: map[string]bool{}} }

// sendLoop sends messages from cl to the users in to (round robin) until
// ctx ends, one at a time, recording each ack. Retryable failures are
// retried by the client library under the same id; a send that fails in
// the end (context over) is recorded as attempted, not acked.
func (l *ledger) sendLoop(ctx context.Context, t *testing.T, cl *client.Client, prefix string, to []string, pause time.Duration) int {
	n := 0
	for i := 0; ctx.Err() == nil; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		dst := to[i%len(to)]
		l.mu.Lock()
		l.sent[id] = true
		l.mu.Unlock()
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		ack, err := cl.Send(sctx, dst, []byte(id), client.WithClientMsgID(id))
		cancel()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("send %s: %v", id, err)
			}
			return n
		}
		l.mu.Lock()
		l.acked[id] = ackRec{from: cl.User(), to: dst, seq: ack.Seq}
		l.mu.Unlock()
		n++
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	return n
}

// verifyInbox reads user's whole inbox through a fresh client on addr and
// checks: seqs 1..head with no gap or duplicate, no message twice, every
// message acked to or by user present (at the acked seq for the sender),
// nothing that was never sent.
func (l *ledger) verifyInbox(t *testing.T, user string, addrs ...string) int {
	t.Helper()
	cl := dialNode(t, user, "verifier", addrs...)
	defer cl.Close()
	// The receive stream starts at seq 1 (AfterSeq 0): read until the
	// stream has caught up with the head reported by a sync.
	var msgs []*pb.Message
	deadline := time.After(60 * time.Second)
	want := l.expectedFor(user)
	seen := map[string]uint64{}
	add := func(m *pb.Message) {
		if prev, dup := seen[m.ClientMsgId]; dup {
			t.Fatalf("%s: message %s at seq %d and again at %d", user, m.ClientMsgId, prev, m.Seq)
		}
		seen[m.ClientMsgId] = m.Seq
		msgs = append(msgs, m)
	}
	allSeen := func() bool {
		for id := range want {
			if _, ok := seen[id]; !ok {
				return false
			}
		}
		return true
	}
recv:
	for {
		if allSeen() {
			// Everything expected is here; take what else is queued.
			select {
			case m := <-cl.Messages():
				add(m)
				continue recv
			case <-time.After(300 * time.Millisecond):
				break recv
			}
		}
		select {
		case m := <-cl.Messages():
			add(m)
		case <-deadline:
			missing := 0
			for id := range want {
				if _, ok := seen[id]; !ok {
					missing++
					if missing < 5 {
						t.Errorf("%s: acked message %s LOST", user, id)
					}
				}
			}
			t.Fatalf("%s: %d acked messages missing after 60 s (have %d messages)", user, missing, len(msgs))
		}
	}
	for i, m := range msgs {
		if m.Seq != uint64(i+1) {
			t.Fatalf("%s: position %d has seq %d: gap or duplicate in the inbox", user, i, m.Seq)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range msgs {
		if !l.sent[m.ClientMsgId] {
			t.Fatalf("%s: unexpected message %q (never sent)", user, m.ClientMsgId)
		}
		if a, ok := l.acked[m.ClientMsgId]; ok && a.from == user && a.seq != m.Seq {
			t.Fatalf("%s: %s acked at seq %d but stored at %d", user, m.ClientMsgId, a.seq, m.Seq)
		}
	}
	return len(msgs)
}

// expectedFor lists the acked message ids that must be in user's inbox.
func (l *ledger) expectedFor(user string) map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]bool{}
	for id, a := range l.acked {
		if a.from == user || a.to == user {
			out[id] = true
		}
	}
	return out
}

// ackedFromEach counts the acknowledged sends of each of users.
func (l *ledger) ackedFromEach(users []string) map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	all := map[string]int{}
	for _, a := range l.acked {
		all[a.from]++
	}
	out := make(map[string]int, len(users))
	for _, u := range users {
		out[u] = all[u]
	}
	return out
}

// waitSends waits until each of users has had n more sends acknowledged
// than base says (nil: n in all), and fails the test, saying who lags,
// if that takes over a minute. Test phases end on this progress, not
// after a sleep: on a loaded machine a fixed second may see few acks.
func (l *ledger) waitSends(t *testing.T, what string, users []string, base map[string]int, n int) {
	t.Helper()
	testutil.Eventually(t, time.Minute, what, func() error {
		got := l.ackedFromEach(users)
		for _, u := range users {
			if got[u] < base[u]+n {
				return fmt.Errorf("%s has %d sends acknowledged, want %d", u, got[u], base[u]+n)
			}
		}
		return nil
	})
}

func (l *ledger) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}
