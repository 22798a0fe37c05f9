package bench

// ackQueue holds the connections of one loop that have pushes to
// acknowledge, each with the time its PUSH_ACK is due: one interval after
// its first push not yet acknowledged. Every connection then acks on its
// own phase, as independent clients do. A single pass over all of them
// once per interval (what the generator did before) sends a burst of acks
// at one instant, which delays the sends scheduled during it, in the
// generator and at the server, and showed up as the p99 of a 1000-pair run.
//
// Connections are added in the order of their first push, and the
// interval is the same for all, so the queue is in deadline order: a FIFO
// is enough. Owned by the loop goroutine.
type ackQueue struct {
	q    []pendingAck
	head int
}

// pendingAck is a connection whose pushes are acknowledged at due.
type pendingAck struct {
	c   *gconn
	due int64
}

// add queues c with its deadline. due must not be earlier than the
// deadline of any connection queued before (the loop's clock is
// monotonic and the interval fixed).
func (a *ackQueue) add(c *gconn, due int64) {
	a.q = append(a.q, pendingAck{c: c, due: due})
}

// popDue calls ack for every queued connection due at or before now, in
// deadline order, removing it, and returns the next deadline (0: the queue
// is empty).
func (a *ackQueue) popDue(now int64, ack func(*gconn)) int64 {
	next := int64(0)
	for a.head < len(a.q) {
		p := a.q[a.head]
		if p.due > now {
			next = p.due
			break
		}
		a.q[a.head] = pendingAck{}
		a.head++
		ack(p.c)
	}
	// Reuse the array: reset when empty, slide the live tail down when
	// the consumed head is most of it.
	if a.head == len(a.q) {
		a.q, a.head = a.q[:0], 0
	} else if a.head > 1024 && a.head*2 > len(a.q) {
		n := copy(a.q, a.q[a.head:])
		clear(a.q[n:])
		a.q, a.head = a.q[:n], 0
	}
	return next
}

// len returns how many connections are queued.
func (a *ackQueue) len() int { return len(a.q) - a.head }
