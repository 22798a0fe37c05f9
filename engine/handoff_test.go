package engine

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
)

// storedHook is an Observer that runs fn inside every MessageStored: for
// the memory store that is inside the store's combiner, with its lock held,
// so fn sees the store busy appending on the loop that stored the message.
type storedHook struct {
	fn func(msg *persist.Message)
}

func (h *storedHook) MessageStored(msg *persist.Message, _ []string, _ []uint64, _ bool) { h.fn(msg) }
func (h *storedHook) Delivered(string, string, uint64)                                   {}
func (h *storedHook) GroupChanged(GroupChange)                                           {}

// contended drives two loops the way a send meets another loop's append:
// carol (loop 1) sends, and while her append completes (the store's
// combiner is loop 1's, holding the lock) alice's frames are read on loop
// 0. Each round ends with the loops' drains, as poll rounds do.
type contended struct {
	fe     *fakeEngine
	carol  *conn
	alice  *conn
	ct, at *fakeTransport
	cframe []byte
	cnext  func()
	aframe []byte        // what alice sends while carol's append runs
	during func(a *conn) // run after alice's frames were read, still inside the combiner
}

func (x *contended) round() {
	x.cnext()
	x.ct.in = append(x.ct.in, x.cframe...)
	x.fe.feed(x.carol)
	x.fe.runLoops()
	x.fe.runLoops() // pushes queued by the drains themselves
}

// newContended opens carol (loop 1) and alice (loop 0) with serializer
// ser; hook sends alice's frames when carol's message is stored.
func newContended(t testing.TB, ser codec.SerializerID, store persist.Store) *contended {
	x := &contended{}
	hook := &storedHook{fn: func(msg *persist.Message) {
		if msg.From != "carol" || len(x.aframe) == 0 {
			return
		}
		x.at.in = append(x.at.in, x.aframe...)
		x.fe.feed(x.alice)
		if x.during != nil {
			x.during(x.alice)
		}
	}}
	x.fe = newFakeEngine(t, 2, func(c *Config) { c.Store = store; c.Observer = hook })
	x.carol, x.ct = x.fe.conn(1, "carol", "pc", ser)
	x.alice, x.at = x.fe.conn(0, "alice", "pc", ser)
	x.cframe, x.cnext = sendFrame(t, ser, "dave")
	x.fe.conn(0, "dave", "pc", ser)
	x.ct.in = make([]byte, 0, 4*len(x.cframe))
	return x
}

// TestContendedSendIsHandedOver: a send that finds another loop appending
// to the memory store does not wait for it. Its bytes are copied (the frame
// is overwritten before the append runs), it is queued for the loop that is
// appending, and that loop completes it after its own: the SEND_ACKs reach
// the sender's loop in request order, and the pushes reach the receivers on
// both loops, with the bytes the sender sent. A PUSH_ACK behind the sends
// runs at once on the sender's loop.
func TestContendedSendIsHandedOver(t *testing.T) {
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			x := newContended(t, ser, boundedMemStore(t, 1000))
			fe := x.fe
			_, bt := fe.conn(0, "bob", "pc", ser)  // alice's loop
			_, et := fe.conn(1, "erin", "pc", ser) // the combining loop
			var in []byte
			in = append(in, encodeFrame(t, ser, codec.CmdSend, 1, &pb.SendRequest{ClientMsgId: "a1", To: "bob", Body: []byte("to bob")})...)
			in = append(in, encodeFrame(t, ser, codec.CmdSend, 2, &pb.SendRequest{ClientMsgId: "a2", To: "erin", Body: []byte("to erin")})...)
			in = append(in, encodeFrame(t, ser, codec.CmdPushAck, 0, &pb.PushAck{UpToSeq: 7})...)
			x.aframe = in
			handoffs := testutil.ToFloat64(fe.s.metrics.appendHandoffs)
			var inflight int32
			var early int
			var acked uint64
			x.during = func(a *conn) {
				a.mu.Lock()
				inflight = a.inflight
				a.mu.Unlock()
				acked = a.cursor.Load()
				early = len(x.at.out)
				// The frames' memory is the transport's again: clobber it.
				buf := x.at.in[:cap(x.at.in)]
				for i := range buf {
					buf[i] = 'X'
				}
			}
			x.round()

			if inflight != 2 || early != 0 {
				t.Fatalf("while the other loop appended: %d of alice's sends in flight, %d bytes written to her; want 2 and 0", inflight, early)
			}
			if acked != 7 {
				t.Fatalf("alice's PUSH_ACK waited for her sends in flight (cursor %d while they were)", acked)
			}
			if cur, err := fe.s.store.Cursor(context.Background(), "alice", "pc"); err != nil || cur != 7 {
				t.Fatalf("stored cursor %d, %v; want 7", cur, err)
			}
			if n := testutil.ToFloat64(fe.s.metrics.appendHandoffs) - handoffs; n != 2 {
				t.Fatalf("%v sends handed over, want 2", n)
			}
			acks := x.at.frames(t)
			if len(acks) != 2 {
				t.Fatalf("alice got %d frames, want 2 SEND_ACKs", len(acks))
			}
			for i, f := range acks {
				var ack pb.SendAck
				if f.Command != codec.CmdSendAck {
					t.Fatalf("alice frame %d: %s", i, f.Command)
				}
				if err := codec.Unmarshal(f.Serializer, f.Body, &ack); err != nil {
					t.Fatal(err)
				}
				wantID := []string{"a1", "a2"}[i]
				if f.Seq != uint32(i+1) || ack.ClientMsgId != wantID || ack.Seq != uint64(i+1) {
					t.Fatalf("ack %d: request %d, client_msg_id %q, seq %d; want request %d, %q, seq %d", i, f.Seq, ack.ClientMsgId, ack.Seq, i+1, wantID, i+1)
				}
			}
			for who, tr := range map[string]*fakeTransport{"bob": bt, "erin": et} {
				fs := tr.frames(t)
				if len(fs) != 1 || fs[0].Command != codec.CmdPush {
					t.Fatalf("%s got %v, want one PUSH", who, fs)
				}
				var p pb.Push
				if err := codec.Unmarshal(fs[0].Serializer, fs[0].Body, &p); err != nil {
					t.Fatal(err)
				}
				m := p.Messages[0]
				if m.From != "alice" || m.To != who || string(m.Body) != "to "+who || m.Seq != 1 {
					t.Fatalf("%s's push: from %q to %q body %q seq %d", who, m.From, m.To, m.Body, m.Seq)
				}
			}
			if fs := x.ct.frames(t); len(fs) != 1 || fs[0].Command != codec.CmdSendAck {
				t.Fatalf("carol got %v", fs)
			}
			x.alice.mu.Lock()
			defer x.alice.mu.Unlock()
			if x.alice.inflight != 0 || x.alice.inflightBytes != 0 {
				t.Fatalf("alice still counts %d appends, %d bytes in flight", x.alice.inflight, x.alice.inflightBytes)
			}
		})
	}
}

// TestHandedOverSendAllocatesNothing: the handed-over path (copy, queue,
// completion on the other loop, the ack posted to the sender's loop)
// allocates nothing in steady state either.
func TestHandedOverSendAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; the plain run asserts them")
	}
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			x := newContended(t, ser, boundedMemStore(t, 1000))
			_, bt := x.fe.conn(1, "bob", "pc", ser)
			frame, next := sendFrame(t, ser, "bob")
			x.aframe = frame
			x.at.in = make([]byte, 0, 2*len(frame))
			handoffs := testutil.ToFloat64(x.fe.s.metrics.appendHandoffs)
			run := func() {
				next()
				x.round()
				if len(x.at.out) == 0 || len(bt.out) == 0 {
					t.Fatal("no ack or no push")
				}
				x.at.out, x.ct.out, bt.out = x.at.out[:0], x.ct.out[:0], bt.out[:0]
			}
			for range 3000 {
				run()
			}
			if n := testing.AllocsPerRun(1000, run); n != 0 {
				t.Fatalf("%v allocations per handed-over message", n)
			}
			if n := testutil.ToFloat64(x.fe.s.metrics.appendHandoffs) - handoffs; n != 4001 {
				t.Fatalf("%v sends handed over, want every one of alice's 4001", n)
			}
		})
	}
}
