package engine

import (
	"context"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// loop is the engine's state for one gnet event loop.
//
// Output reaches a connection in one of two ways, and both end in one
// write per connection per turn of its loop:
//
//   - Frames queued while running on the connection's own loop (a reply, a
//     push between two users of the same loop) mark the connection dirty;
//     the loop writes every dirty connection at the end of the OnTraffic or
//     task that queued them (endTraffic, endTurn).
//   - Frames queued by another loop, for a connection whose socket is idle
//     (conn.direct: its loop's last write left nothing in gnet's buffer),
//     are written by that other loop at the end of its turn, one write per
//     connection (conn.writeFrom, nats-server's flushClients idea): the
//     connection's loop is not woken at all.
//   - Frames queued from anywhere else (a worker, the store's committer,
//     the mesh, or another loop when the socket is not idle or took only
//     part of them) put the connection in the loop's mailbox; the first
//     connection put in an idle mailbox triggers the loop once. A producer
//     running on another loop defers that trigger to the end of its own
//     turn, so a burst of pushes from one OnTraffic costs one trigger per
//     destination loop.
//
// No wake-up is lost: a producer adds the connection to the mailbox unless
// it is already there (conn.queued, under conn.mu), and triggers unless a
// trigger is pending (triggered, under mu); the loop clears triggered
// before it drains, and clears conn.queued when it takes the
// connection's output, so anything queued after either moment triggers
// again.
type loop struct {
	srv *Server
	idx int
	el  gnet.EventLoop

	// Owned by the loop's goroutine.
	dirty    []*conn   // connections of this loop with output to write this round
	remote   []*conn   // other loops' connections this turn queued output for, to write at its end (writeFrom)
	pending  int       // entries of dirty still marked (c.dirty): the others were written
	triggers uint64    // bit i: loop i's mailbox needs a trigger at the end of this turn
	now      time.Time // read once per turn: the clock is slow to read on some VMs
	scratch  []byte    // decode buffer of requests run on the loop
	written  int       // bytes written this turn, for the metric
	direct   [2]int    // writeFrom's full and short writes this turn, for the metric

	mu        sync.Mutex
	mail      []*conn // connections with output queued from elsewhere
	spare     []*conn // the other mailbox slice, swapped in on each drain
	triggered bool    // a drain is scheduled
}

// Run implements gnet.Runnable: it drains the mailbox on the loop.
func (l *loop) Run(context.Context) error {
	l.now = time.Now()
	l.drain()
	l.endTurn()
	return nil
}

// drain writes every connection in the mailbox. Loop goroutine only.
func (l *loop) drain() {
	l.mu.Lock()
	list := l.mail
	l.mail = l.spare[:0]
	l.triggered = false
	l.mu.Unlock()
	for i, c := range list {
		c.flush()
		list[i] = nil
	}
	// The drained slice is the next spare: the mailbox now fills the
	// previous spare, so the two never share an array.
	l.mu.Lock()
	l.spare = list[:0]
	l.mu.Unlock()
}

// markDirty schedules c (a connection of this loop) for a write at the end
// of the current turn (see endTraffic). Loop goroutine only.
func (l *loop) markDirty(c *conn) {
	if !c.dirty {
		c.dirty = true
		l.pending++
		l.dirty = append(l.dirty, c)
	}
}

// endTraffic ends an OnTraffic of c. c's own output (the replies its
// client waits for) is written now; output queued for the loop's other
// connections (pushes) waits for the end of the poll round: the loop runs
// its drain task after every ready connection has been read, so a
// connection pushed to from several senders in one round gets one write.
// The task is scheduled once per round, through the mailbox's trigger.
// Triggers of other loops go out now. Loop goroutine only.
func (l *loop) endTraffic(c *conn) {
	if c.dirty {
		c.dirty = false // its entry in l.dirty is skipped at the end of the round
		l.pending--
		c.flush()
	}
	if l.pending == 0 {
		clear(l.dirty)
		l.dirty = l.dirty[:0]
	} else {
		l.mu.Lock()
		need := !l.triggered
		l.triggered = true
		l.mu.Unlock()
		if need {
			l.trigger()
		}
	}
	l.flushDeferred()
}

// endTurn writes the dirty connections and sends the deferred triggers.
// Loop goroutine only; called at the end of every task (drain).
func (l *loop) endTurn() {
	for i, c := range l.dirty {
		if c.dirty {
			c.dirty = false
			c.flush()
		}
		l.dirty[i] = nil
	}
	l.dirty, l.pending = l.dirty[:0], 0
	l.flushDeferred()
}

// flushDeferred writes the output this turn queued for other loops'
// connections (writeFrom), adds this turn's written bytes to the metric and
// sends the triggers this turn deferred.
func (l *loop) flushDeferred() {
	if len(l.remote) > 0 {
		for i, c := range l.remote {
			c.writeFrom(l)
			l.remote[i] = nil
		}
		l.remote = l.remote[:0]
		if l.direct != [2]int{} {
			l.srv.metrics.directWrites.Add(float64(l.direct[0]))
			l.srv.metrics.directShort.Add(float64(l.direct[1]))
			l.direct = [2]int{}
		}
	}
	if l.written > 0 {
		l.srv.metrics.bytesOut.Add(float64(l.written))
		l.written = 0
	}
	if l.triggers != 0 {
		t := l.triggers
		l.triggers = 0
		for i, dst := range *l.srv.loops.Load() {
			if t&(1<<uint(i)) != 0 {
				dst.trigger()
			}
		}
	}
}

// post puts c, whose output was queued by a goroutine that is not c's loop,
// in c's loop's mailbox. src is the loop the caller runs on (nil when it
// runs on no loop): the trigger is then deferred to the end of src's turn.
// The caller has set c.queued (under c.mu), so c is posted once per drain.
func (l *loop) post(c *conn, src *loop) {
	l.mu.Lock()
	l.mail = append(l.mail, c)
	need := !l.triggered
	l.triggered = true
	l.mu.Unlock()
	if !need {
		return
	}
	if src != nil && l.idx < 64 {
		src.triggers |= 1 << uint(l.idx)
		return
	}
	l.trigger()
}

// trigger schedules a drain on the loop.
func (l *loop) trigger() {
	l.srv.metrics.loopTriggers.Inc()
	if err := l.el.Execute(context.Background(), l); err != nil {
		// The engine is stopping: connections are closing, and their
		// output no longer matters. Leave triggered set so no one retries.
		l.srv.log.Debug("loop trigger", "loop", l.idx, "err", err)
	}
}

// now returns the time of the current turn on loop src, or the clock when
// src is nil (off-loop) or the store's completing goroutine (batchLoop,
// which has no turns).
func now(src *loop) time.Time {
	if src != nil && src.idx >= 0 {
		return src.now
	}
	return time.Now()
}

// loopOf returns the engine state of el, creating it on first use. Called
// from OnOpen, on el's own goroutine; loops are few and fixed, so the map
// is written a handful of times and read once per connection.
func (s *Server) loopOf(el gnet.EventLoop) *loop {
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	old := *s.loops.Load()
	for _, l := range old {
		if l.el == el {
			return l
		}
	}
	l := &loop{srv: s, idx: len(old), el: el}
	// The list is copied on write: producers read it without the lock.
	loops := append(old[:len(old):len(old)], l)
	s.loops.Store(&loops)
	return l
}
