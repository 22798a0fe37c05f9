package events

import (
	"context"
	"slices"
	"time"

	"github.com/imgn/imgn/persist"
)

// The sequencer keeps the message events of each inbox in seq order on
// their way to the stream, and fills gaps from the store.
//
// On a single node the engine reports the messages of an inbox in seq
// order, but in cluster mode two appends to one inbox that complete
// together are reported from different goroutines, in either order; and
// an event dropped for a full queue leaves a hole. A consumer drops every
// seq at or below the highest it has seen, so an inbox's events must reach
// the stream in order and without holes, or the consumer loses one.
//
// So an event whose seq is not the next of its inbox (the last one
// published + 1) waits for its predecessors, up to the hold; if they do not
// come, the missing entries are read from the store (they are durable: a
// store never keeps seq s+1 of an inbox without s) and published first,
// marked replayed. An inbox the sequencer does not know yet (the first
// event since the start, or one it forgot to stay within its memory bound)
// has no known predecessor: its first event waits out the hold for one
// that would come right behind it, then goes. When the engine reports in
// order (a single node) the hold is zero: nothing waits, and a hole (a
// dropped event) is filled at once.

// Bounds of the sequencer.
const (
	// UnorderedHold is how long an event waits for its predecessors when
	// the engine may report out of order (Config.Unordered).
	UnorderedHold = 100 * time.Millisecond
	// seqInboxes is how many inboxes' last seqs are kept (in each of two
	// generations: the older is dropped when the newer fills).
	seqInboxes = 1 << 17
	// seqFillMax bounds the entries read from the store for one gap; a
	// larger gap is filled with its last seqFillMax entries.
	seqFillMax = 1000
)

type sequencer struct {
	store    persist.MessageStore // nil: gaps are not filled
	hold     time.Duration
	node     string
	now      func() int64
	onFill   func(n int)
	cur, old map[string]uint64 // inbox -> last seq published
	pending  []*Event          // taken from the queue, not published yet, in arrival order
}

func newSequencer(store persist.MessageStore, hold time.Duration, node string, now func() int64, onFill func(int)) *sequencer {
	return &sequencer{store: store, hold: hold, node: node, now: now, onFill: onFill, cur: map[string]uint64{}, old: map[string]uint64{}}
}

func (s *sequencer) last(inbox string) (uint64, bool) {
	if v, ok := s.cur[inbox]; ok {
		return v, true
	}
	v, ok := s.old[inbox]
	return v, ok
}

func (s *sequencer) setLast(inbox string, seq uint64) {
	if v, ok := s.last(inbox); ok && v >= seq {
		return
	}
	if len(s.cur) >= seqInboxes {
		s.old, s.cur = s.cur, make(map[string]uint64, seqInboxes)
	}
	s.cur[inbox] = seq
}

func (s *sequencer) add(e *Event) { s.pending = append(s.pending, e) }

// held returns the number of events waiting, and the enqueue time of the
// oldest of them (for the checkpoint).
func (s *sequencer) held() (n int, oldest int64) {
	for i, e := range s.pending {
		if i == 0 || e.enq < oldest {
			oldest = e.enq
		}
	}
	return len(s.pending), oldest
}

// wait returns how long until the earliest hold ends (0: none is held).
func (s *sequencer) wait() time.Duration {
	n, oldest := s.held()
	if n == 0 {
		return 0
	}
	return max(time.Duration(oldest+s.hold.Milliseconds()-s.now())*time.Millisecond, time.Millisecond)
}

// next reports whether e can be published now: every inbox known and at
// its next seq, or at or below it (a repeat).
func (s *sequencer) next(e *Event) bool {
	for _, in := range e.Inboxes {
		last, known := s.last(in.User)
		if !known || in.Seq > last+1 {
			return false
		}
	}
	return true
}

// learn starts the inboxes it does not know whose first pending event's
// hold is over: the inbox starts below the lowest seq pending for it, so
// its pending events then go in seq order.
func (s *sequencer) learn(now int64, flush bool) {
	var start map[string]uint64
	for _, e := range s.pending {
		if e.Type != TypeMessage || !flush && now-e.enq < s.hold.Milliseconds() {
			continue
		}
		for _, in := range e.Inboxes {
			if _, known := s.last(in.User); known {
				continue
			}
			if start == nil {
				start = map[string]uint64{}
			}
			if cur, ok := start[in.User]; !ok || in.Seq < cur {
				start[in.User] = in.Seq
			}
		}
	}
	for inbox := range start {
		// Every pending event of the inbox counts, held or not.
		low := start[inbox]
		for _, e := range s.pending {
			for _, in := range e.Inboxes {
				if in.User == inbox && in.Seq < low {
					low = in.Seq
				}
			}
		}
		s.setLast(inbox, low-1)
	}
}

func (s *sequencer) published(e *Event) {
	for _, in := range e.Inboxes {
		s.setLast(in.User, in.Seq)
	}
}

// ready returns the events that may be published now, in order, and keeps
// the others. With flush every hold counts as over (the node is stopping).
// Events whose predecessors are pending go first; only then are the holes
// of events whose hold is over filled from the store.
func (s *sequencer) ready(ctx context.Context, flush bool) []*Event {
	var out []*Event
	now := s.now()
	s.learn(now, flush)
	for {
		// Everything that is next in its inboxes, to a fixpoint.
		for progress := true; progress; {
			progress = false
			keep := s.pending[:0]
			for _, e := range s.pending {
				if e.Type != TypeMessage || s.next(e) {
					out = append(out, e)
					s.published(e)
					progress = true
				} else {
					keep = append(keep, e)
				}
			}
			clear(s.pending[len(keep):])
			s.pending = keep
		}
		// Then the first event whose hold is over: fill its holes, and go
		// round again (it may unblock others).
		i := slices.IndexFunc(s.pending, func(e *Event) bool { return flush || now-e.enq >= s.hold.Milliseconds() })
		if i < 0 {
			return out
		}
		e := s.pending[i]
		s.pending = slices.Delete(s.pending, i, i+1)
		out = append(out, s.fill(ctx, e)...)
		out = append(out, e)
		s.published(e)
	}
}

// fill returns events for the entries missing before e in each of its
// inboxes, read from the store.
func (s *sequencer) fill(ctx context.Context, e *Event) []*Event {
	if s.store == nil {
		return nil
	}
	var out []*Event
	for _, in := range e.Inboxes {
		last, known := s.last(in.User)
		if !known || in.Seq <= last+1 {
			continue
		}
		after := last
		if in.Seq-1-last > seqFillMax {
			after = in.Seq - 1 - seqFillMax
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		entries, err := s.store.ReadInbox(rctx, in.User, after, int(in.Seq-1-after))
		cancel()
		if err != nil {
			continue // the hole stays: consumers see the later seq (documented)
		}
		now := s.now()
		for _, en := range entries {
			if en.Seq >= in.Seq {
				break
			}
			f := messageEvent(s.node, now, &en.Msg, []string{in.User}, []uint64{en.Seq}, false)
			f.Replayed, f.enq = true, e.enq
			out = append(out, f)
			s.setLast(in.User, en.Seq)
		}
	}
	if len(out) > 0 && s.onFill != nil {
		s.onFill(len(out))
	}
	return out
}
