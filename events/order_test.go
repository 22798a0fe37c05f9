package events

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

// seqEvent is a message event of inbox bob at seq, queued at enq.
func seqEvent(seq uint64, enq int64) *Event {
	return &Event{Type: TypeMessage, MsgID: fmt.Sprint("m", seq), enq: enq, Inboxes: []InboxRef{{User: "bob", Seq: seq}}}
}

func seqs(evs []*Event) []string {
	var out []string
	for _, e := range evs {
		s := fmt.Sprint(e.Inboxes[0].Seq)
		if e.Replayed {
			s += "r"
		}
		out = append(out, s)
	}
	return out
}

// storeWithBob returns a memory store where bob's inbox holds seqs 1..n.
func storeWithBob(t *testing.T, n int) persist.MessageStore {
	st := memstore.New()
	for i := 1; i <= n; i++ {
		if _, err := st.Append(context.Background(), persist.Message{ID: uint64(i), From: "x", To: "bob", ClientMsgID: fmt.Sprint(i)}, []string{"bob"}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func TestSequencerUnordered(t *testing.T) {
	now := int64(1000)
	s := newSequencer(storeWithBob(t, 10), 100*time.Millisecond, "n1", func() int64 { return now }, nil)
	ctx := context.Background()
	// An unknown inbox: its events wait out the hold, then go in seq order.
	s.add(seqEvent(2, 1000))
	s.add(seqEvent(1, 1010))
	if got := s.ready(ctx, false); len(got) != 0 {
		t.Fatalf("released before the hold: %v", seqs(got))
	}
	if d := s.wait(); d != 100*time.Millisecond {
		t.Fatalf("wait %v", d)
	}
	now = 1100
	if got := seqs(s.ready(ctx, false)); !slices.Equal(got, []string{"1", "2"}) {
		t.Fatalf("released %v, want 1 2", got)
	}
	// Known now: the next seq goes at once; one out of order waits for its
	// predecessor, which comes within the hold.
	s.add(seqEvent(4, 1100))
	if got := s.ready(ctx, false); len(got) != 0 {
		t.Fatalf("4 went before 3: %v", seqs(got))
	}
	s.add(seqEvent(3, 1120))
	if got := seqs(s.ready(ctx, false)); !slices.Equal(got, []string{"3", "4"}) {
		t.Fatalf("released %v, want 3 4", got)
	}
	// A predecessor that never comes (dropped) is read from the store when
	// the hold ends.
	s.add(seqEvent(7, 1200))
	if got := s.ready(ctx, false); len(got) != 0 {
		t.Fatalf("released %v during the hold", seqs(got))
	}
	now = 1300
	if got := seqs(s.ready(ctx, false)); !slices.Equal(got, []string{"5r", "6r", "7"}) {
		t.Fatalf("released %v, want 5r 6r 7", got)
	}
	// Repeats go at once; other types are never held.
	s.add(seqEvent(2, 1300))
	s.add(&Event{Type: TypeDelivered, enq: 1300})
	if got := s.ready(ctx, false); len(got) != 2 {
		t.Fatalf("released %d of a repeat and a delivered event", len(got))
	}
	// Stopping flushes whatever is held.
	s.add(seqEvent(9, 1300))
	if got := seqs(s.ready(ctx, true)); !slices.Equal(got, []string{"8r", "9"}) {
		t.Fatalf("flush released %v", got)
	}
}

func TestSequencerOrderedFillsDrops(t *testing.T) {
	s := newSequencer(storeWithBob(t, 5), 0, "n1", func() int64 { return 1 }, nil)
	ctx := context.Background()
	s.add(seqEvent(1, 1))
	s.add(seqEvent(4, 1)) // 2 and 3 were dropped
	if got := seqs(s.ready(ctx, false)); !slices.Equal(got, []string{"1", "2r", "3r", "4"}) {
		t.Fatalf("released %v", got)
	}
	// Without a store the hole stays, but nothing waits.
	s = newSequencer(nil, 0, "n1", func() int64 { return 1 }, nil)
	s.add(seqEvent(1, 1))
	s.add(seqEvent(4, 1))
	if got := seqs(s.ready(ctx, false)); !slices.Equal(got, []string{"1", "4"}) {
		t.Fatalf("released %v", got)
	}
}
