package bench

import "testing"

// TestAckQueueSpreadsAcks: each connection is acknowledged at its own
// deadline, not all together at the first one.
func TestAckQueueSpreadsAcks(t *testing.T) {
	var a ackQueue
	conns := make([]*gconn, 5)
	for i := range conns {
		conns[i] = &gconn{fd: int32(i)}
		a.add(conns[i], int64(100+10*i)) // first pushes 10 ns apart
	}
	var got []int32
	ack := func(c *gconn) { got = append(got, c.fd) }
	if next := a.popDue(99, ack); next != 100 || len(got) != 0 {
		t.Fatalf("before the first deadline: acked %v, next %d; want none, 100", got, next)
	}
	if next := a.popDue(115, ack); next != 120 || len(got) != 2 || got[0] != 0 || got[1] != 1 {
		t.Fatalf("at 115: acked %v, next %d; want [0 1], 120", got, next)
	}
	if a.len() != 3 {
		t.Fatalf("len %d after two acks, want 3", a.len())
	}
	a.add(conns[0], 130) // conn 0 was pushed to again
	if next := a.popDue(1000, ack); next != 0 || len(got) != 6 {
		t.Fatalf("at 1000: acked %v, next %d; want all six, 0", got, next)
	}
	want := []int32{0, 1, 2, 3, 4, 0}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ack order %v, want %v", got, want)
		}
	}
	if a.len() != 0 {
		t.Fatalf("len %d after draining, want 0", a.len())
	}
}

// TestAckQueueReusesItsArray: a queue that is never empty (a steady
// stream of pushes) does not grow without bound.
func TestAckQueueReusesItsArray(t *testing.T) {
	var a ackQueue
	c := &gconn{}
	now := int64(0)
	for i := 0; i < 100000; i++ {
		a.add(c, now+1000)
		now++
		a.popDue(now, func(*gconn) {})
	}
	if a.len() != 999 {
		t.Fatalf("len %d, want the 999 not yet due", a.len())
	}
	if cap(a.q) > 8192 {
		t.Fatalf("cap %d after 100000 adds with 1000 live: the consumed head is not reclaimed", cap(a.q))
	}
}
