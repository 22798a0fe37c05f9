package client

import (
	"slices"
	"time"

	"github.com/imgn/imgn/codec/pb"
)

// orderer turns the unordered, duplicated, lossy stream of inbox entries
// that arrives by PUSH, SEND_ACK and SYNC_OK into the exactly-once,
// ascending, gap-free stream the application sees. It is pure (time is
// passed in) and not safe for concurrent use: the delivery goroutine owns
// it.
//
// Rules (docs/protocol.md §6.6): last is the highest seq delivered with
// every seq below it delivered. A message at or below last is a duplicate
// and dropped; last+1 is delivered, followed by any buffered successors; a
// higher seq is buffered (at most max of them; beyond that dropped, which
// makes a sync due at once). A gap that has stayed open for grace without
// progress makes a sync due. A SYNC_OK page is authoritative: it holds
// every inbox entry in (after, its highest seq], so seqs missing from it do
// not exist and are skipped; its first_seq says which seqs retention
// removed (see removed).
type orderer struct {
	last  uint64
	buf   map[uint64]*pb.Message
	max   int
	grace time.Duration
	// gapAt is when the current gap was opened or last made progress; zero
	// when nothing is buffered.
	gapAt time.Time
	// dropped: messages were dropped (buffer full, or reported by the
	// caller) since the last completed sync; a sync is due now.
	dropped bool
}

func newOrderer(last uint64, max int, grace time.Duration) *orderer {
	if max < 1 {
		max = 1
	}
	return &orderer{last: last, buf: make(map[uint64]*pb.Message), max: max, grace: grace}
}

// push takes messages from a PUSH (or the sender's own message from a
// SEND_ACK) in any order and appends the deliverable ones to out, in seq
// order.
func (o *orderer) push(now time.Time, msgs []*pb.Message, out []*pb.Message) []*pb.Message {
	start := o.last
	for _, m := range msgs {
		if m == nil || m.GetSeq() <= o.last {
			continue
		}
		s := m.GetSeq()
		if s == o.last+1 {
			out = append(out, m)
			o.last = s
			out = o.drain(out)
			continue
		}
		if _, ok := o.buf[s]; ok {
			continue
		}
		if len(o.buf) >= o.max {
			o.dropped = true
			continue
		}
		o.buf[s] = m
	}
	o.updateGap(now, o.last != start)
	return out
}

// synced takes one SYNC_OK page answering SYNC{after_seq: after} and
// appends the deliverable messages to out. When after <= last the page is
// authoritative up to its highest seq (missing seqs there do not exist);
// otherwise it is treated like a push.
func (o *orderer) synced(now time.Time, after uint64, msgs []*pb.Message, out []*pb.Message) []*pb.Message {
	if after > o.last {
		return o.push(now, msgs, out)
	}
	var hi uint64
	for _, m := range msgs {
		if m == nil || m.GetSeq() <= o.last {
			continue
		}
		hi = max(hi, m.GetSeq())
		if _, ok := o.buf[m.GetSeq()]; !ok {
			o.buf[m.GetSeq()] = m // may exceed max briefly: a page is bounded by the sync limit
		}
	}
	if hi == 0 {
		o.updateGap(now, false)
		return out
	}
	keys := make([]uint64, 0, len(o.buf))
	for s := range o.buf {
		if s <= hi {
			keys = append(keys, s)
		}
	}
	slices.Sort(keys)
	for _, s := range keys {
		out = append(out, o.buf[s])
		delete(o.buf, s)
	}
	o.last = hi
	out = o.drain(out)
	o.trim()
	o.updateGap(now, true)
	return out
}

// removed records that the server's retention removed every seq below
// first (SYNC_OK first_seq): they will never arrive, so delivery goes on at
// first. Buffered messages that now continue the sequence are appended to
// out. A first at or below last+1 changes nothing.
func (o *orderer) removed(now time.Time, first uint64, out []*pb.Message) []*pb.Message {
	if first == 0 || first-1 <= o.last {
		return out
	}
	o.last = first - 1
	o.trim()
	out = o.drain(out)
	o.updateGap(now, true)
	return out
}

// syncDone records that a sync ran to completion (a page with has_more =
// false): drops are recovered, and a gap that is still open gets a fresh
// grace period (its missing seqs were pushed after the sync read the
// inbox, so their pushes may still be in flight).
func (o *orderer) syncDone(now time.Time) {
	o.dropped = false
	o.updateGap(now, true)
}

// noteDropped records that messages were lost before reaching the orderer
// (a full inbound queue, an undecodable push): a sync is due now.
func (o *orderer) noteDropped() { o.dropped = true }

// syncDue reports whether a sync should run at now. Otherwise, when a gap
// is open, at is when it becomes due (zero when nothing is pending).
func (o *orderer) syncDue(now time.Time) (due bool, at time.Time) {
	if o.dropped {
		return true, now
	}
	if len(o.buf) == 0 {
		return false, time.Time{}
	}
	at = o.gapAt.Add(o.grace)
	return !now.Before(at), at
}

// buffered is the number of messages held back by a gap.
func (o *orderer) buffered() int { return len(o.buf) }

// drain appends buffered messages that continue the sequence.
func (o *orderer) drain(out []*pb.Message) []*pb.Message {
	for len(o.buf) > 0 {
		m, ok := o.buf[o.last+1]
		if !ok {
			break
		}
		delete(o.buf, o.last+1)
		o.last++
		out = append(out, m)
	}
	return out
}

// trim drops buffered duplicates (seq <= last) and, after a large page,
// the highest seqs beyond max.
func (o *orderer) trim() {
	for s := range o.buf {
		if s <= o.last {
			delete(o.buf, s)
		}
	}
	for len(o.buf) > o.max {
		var hi uint64
		for s := range o.buf {
			hi = max(hi, s)
		}
		delete(o.buf, hi)
		o.dropped = true
	}
}

func (o *orderer) updateGap(now time.Time, progressed bool) {
	switch {
	case len(o.buf) == 0:
		o.gapAt = time.Time{}
	case progressed || o.gapAt.IsZero():
		o.gapAt = now
	}
}
