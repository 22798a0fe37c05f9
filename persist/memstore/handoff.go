package memstore

import (
	"sync"

	"github.com/imgn/imgn/persist"
)

// The append hand-off (flat combining).
//
// Several event loops append to one Store. With a plain lock, a loop that
// finds it taken blocks, and on a busy machine a holder descheduled by the
// OS (or a mutex that has tipped into hand-off mode) stalls the other loop
// with every connection it serves. TryAppendAsync and HandOffAppend never
// wait for another appender: the first caller becomes the combiner, takes
// the lock, runs its own op, and then runs every op other callers handed
// to it meanwhile, before it releases the lock. A caller that finds a
// combiner at work queues its op (the queue is bounded; it waits only when
// the queue is full) and returns at once; the combiner completes the op on
// its own goroutine, under the lock.
//
// Order: ops run under the store's lock one at a time, in the order they
// reached the queue (FIFO), so per inbox they complete in seq order exactly
// as through AppendAsync, and two ops of one caller complete in the order
// the caller handed them over. No op is left behind: busy and the queue
// change together under combiner.mu, and the combiner clears busy only when
// it finds the queue empty.
//
// Bounded turns: a combining call serves at most maxCombinedBatches
// batches of handed-off ops. Past that it closes the queue: callers that
// arrive then wait, as they would for a lock, until it has completed what
// is queued (at most maxHandedOff more) and let go. Without the bound, a
// combiner whose queue the other loops refill faster than it drains it
// would never return: its own loop's connections would go unread and
// unwritten, and every reader of the store would wait for the lock, for as
// long as the load lasted.

// maxHandedOff bounds the ops waiting for the combiner. A caller that finds
// the queue full waits for the combiner to take a batch: back-pressure, as
// the lock gave, so that a loop stops reading its connections when the
// combiner falls behind instead of piling work on it. It is below the
// engine's bound on one connection's pipelined sends (64), so a
// connection's sends never overflow to the worker pool because of it.
const maxHandedOff = 32

// maxCombinedBatches bounds the batches one combining call serves (see
// "Bounded turns"): one call completes at most its own op and
// (maxCombinedBatches+1)*maxHandedOff handed-off ones.
const maxCombinedBatches = 4

type combiner struct {
	mu     sync.Mutex
	room   sync.Cond // signalled when the combiner takes a batch; L is &mu
	busy   bool      // a combiner runs; it drains q before it stops
	closed bool      // the combiner's turn is over: callers wait, q takes nothing more
	full   int       // callers waiting for room or for the end of the turn (Wait on room)
	q      []handedOff
	spare  []handedOff // the other queue array, swapped in on each take

	// runner is the runner of the combining call, for Runner. Written and
	// read only under the store's lock (Store.mu).
	runner any
}

// handedOff is an op waiting for the combiner, with CheckAppend's verdict
// (taken by the caller, outside every lock).
type handedOff struct {
	op  *persist.AppendOp
	err error
}

// TryAppendAsync runs op as AppendAsync does (completing it before it
// returns, on the caller's goroutine, under the store's lock) when no other
// TryAppendAsync or HandOffAppend call is combining, and reports true;
// it then also completes every op handed off until the queue is empty.
// When another call is combining it returns false at once and leaves op
// untouched: the caller may then hand it over with HandOffAppend. runner
// is what Runner returns during the completions this call runs.
func (s *Store) TryAppendAsync(op *persist.AppendOp, runner any) bool {
	err := persist.CheckAppend(op.Msg, op.Inboxes)
	c := &s.comb
	c.mu.Lock()
	if c.busy {
		c.mu.Unlock()
		return false
	}
	c.busy = true
	c.mu.Unlock()
	s.combine(op, err, runner)
	return true
}

// HandOffAppend appends op without waiting for another appender: when a
// TryAppendAsync or HandOffAppend call is combining, op joins its queue
// and HandOffAppend returns at once (waiting only while the queue holds
// maxHandedOff ops); the combining call then completes op on its own
// goroutine, with its own runner, before it returns. Otherwise op runs as
// in TryAppendAsync, on this goroutine with this runner.
//
// Since op may outlive the call, the AppendOp ownership rule of
// persist.AsyncAppender applies in full: op and the memory its Msg and
// Inboxes refer to stay untouched until op.Done is called.
func (s *Store) HandOffAppend(op *persist.AppendOp, runner any) {
	err := persist.CheckAppend(op.Msg, op.Inboxes)
	c := &s.comb
	c.mu.Lock()
	for c.busy && (len(c.q) >= maxHandedOff || c.closed) {
		c.full++
		c.room.Wait()
		c.full--
	}
	if c.busy {
		c.q = append(c.q, handedOff{op: op, err: err})
		c.mu.Unlock()
		return
	}
	c.busy = true
	c.mu.Unlock()
	s.combine(op, err, runner)
}

// Runner returns the runner of the TryAppendAsync or HandOffAppend call
// whose goroutine runs the current completion. Valid only inside the
// AppendDone of an op given to one of those two (it reads state that the
// store's lock, held there, protects).
func (s *Store) Runner() any { return s.comb.runner }

// combine runs own (checked: ownErr) and then the handed-off ops, under
// the store's lock, until the queue is empty (closing it after
// maxCombinedBatches batches, so that it empties); then it clears busy,
// wakes the callers held by the end of the turn and releases the lock. The
// caller has set busy.
func (s *Store) combine(own *persist.AppendOp, ownErr error, runner any) {
	c := &s.comb
	s.mu.Lock()
	c.runner = runner
	s.appendLocked(own, ownErr)
	own.Done.AppendDone(own)
	for batches := 0; ; batches++ {
		c.mu.Lock()
		batch := c.q
		if len(batch) == 0 {
			c.busy, c.closed = false, false
			wake := c.full > 0
			c.mu.Unlock()
			if wake {
				c.room.Broadcast() // callers held by the end of the turn
			}
			break
		}
		c.q = c.spare[:0]
		if batches >= maxCombinedBatches {
			c.closed = true // this turn takes nothing more (see "Bounded turns")
		}
		wake := c.full > 0 && !c.closed
		c.mu.Unlock()
		if wake {
			c.room.Broadcast()
		}
		for i := range batch {
			h := batch[i]
			batch[i] = handedOff{} // the op is the caller's again after Done
			s.appendLocked(h.op, h.err)
			h.op.Done.AppendDone(h.op)
		}
		// Only the combiner swaps the arrays, and it holds batch: it
		// becomes the next spare, so q and spare never share one.
		c.mu.Lock()
		c.spare = batch[:0]
		c.mu.Unlock()
	}
	c.runner = nil
	s.mu.Unlock()
}
