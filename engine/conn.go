package engine

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/panjf2000/gnet/v2"
	"google.golang.org/protobuf/proto"
)

// Connection states.
const (
	stateNew      uint32 = iota // connected, no successful login yet
	stateLoggedIn               // user and device are set and immutable
	stateClosing                // a final frame is queued; nothing else is sent
)

// conn is the per-connection state, stored in the gnet connection context.
//
// Field ownership: gc's Reader methods and loginPending belong to the event
// loop. user, device and ser are written once by the worker that completes
// the login, before state becomes stateLoggedIn (atomic release), and are
// read-only after. Everything under mu may be touched by any goroutine.
type conn struct {
	gc  gnet.Conn
	srv *Server
	id  uint64

	openedAt int64        // unix nanoseconds
	lastRecv atomic.Int64 // unix nanoseconds of the last inbound bytes
	state    atomic.Uint32

	user, device string
	ser          codec.SerializerID // serializer of server-initiated frames
	cursor       atomic.Uint64      // last cursor stored for (user, device)
	lastRenew    atomic.Int64       // unix nanoseconds of the last session-route renewal

	loginPending bool // event loop only: a LOGIN or REGISTER is queued

	mu         sync.Mutex
	out        *codec.Buffer // frames waiting for the loop to write them; nil when none
	wakeSent   bool          // a Wake is in flight and will flush out
	closeAfter bool          // close once out is written
	closed     bool          // OnClose ran: drop writes
	tasks      []task        // requests waiting to run, in arrival order
	running    bool          // a worker owns this connection's task queue
}

// task is one decoded request waiting for a worker.
type task struct {
	h   codec.Header
	req proto.Message
	ip  netip.Addr // the peer's address, for LOGIN and REGISTER
}

func (c *conn) loggedIn() bool { return c.state.Load() == stateLoggedIn }

// writeMsg queues one frame for c, encoded in ser. It is safe from any
// goroutine; the event loop writes queued frames in one write on its next
// turn for c. Frames to a closing or closed connection are dropped. It
// reports whether the frame was queued.
func (c *conn) writeMsg(ser codec.SerializerID, cmd codec.Command, seq uint32, msg proto.Message) bool {
	return c.writeMsgThen(ser, cmd, seq, msg, nil)
}

// writeMsgThen is writeMsg that also runs then (if not nil) under c.mu,
// right before the frame is queued: whatever then makes visible to other
// goroutines cannot put a frame on c ahead of this one.
func (c *conn) writeMsgThen(ser codec.SerializerID, cmd codec.Command, seq uint32, msg proto.Message, then func()) bool {
	c.mu.Lock()
	if then != nil {
		then()
	}
	if c.closed || c.closeAfter {
		c.mu.Unlock()
		return false
	}
	if c.out == nil {
		c.out = codec.GetBuffer()
	}
	var err error
	before := len(c.out.B)
	c.out.B, err = codec.AppendFrame(c.out.B, ser, cmd, 0, seq, msg)
	if err != nil {
		c.mu.Unlock()
		c.srv.log.Error("encode frame", "cmd", cmd, "err", err)
		return false
	}
	ok := c.afterAppendLocked(before)
	wake := c.needWakeLocked()
	c.mu.Unlock()
	if wake {
		c.wake()
	}
	return ok
}

// writeRaw queues a frame whose body is already encoded in ser.
func (c *conn) writeRaw(ser codec.SerializerID, cmd codec.Command, seq uint32, body []byte) bool {
	c.mu.Lock()
	if c.closed || c.closeAfter {
		c.mu.Unlock()
		return false
	}
	if c.out == nil {
		c.out = codec.GetBuffer()
	}
	before := len(c.out.B)
	c.out.B = codec.AppendRawFrame(c.out.B, ser, cmd, 0, seq, body)
	ok := c.afterAppendLocked(before)
	wake := c.needWakeLocked()
	c.mu.Unlock()
	if wake {
		c.wake()
	}
	return ok
}

// afterAppendLocked enforces MaxOutbound on our own queue: a connection
// that has this much waiting is not reading, so the frame is dropped and the
// connection closed as a slow consumer. mu is held.
func (c *conn) afterAppendLocked(before int) bool {
	if len(c.out.B) <= c.srv.cfg.MaxOutbound {
		return true
	}
	c.out.B = c.out.B[:before]
	c.closeAfter = true
	c.srv.metrics.slowConsumers.Inc()
	c.srv.metrics.countError(codec.CodeSlowConsumer)
	return false
}

func (c *conn) needWakeLocked() bool {
	if c.wakeSent {
		return false
	}
	c.wakeSent = true
	return true
}

func (c *conn) wake() {
	if err := c.gc.Wake(nil); err != nil {
		// The loop is gone (engine stopping); OnClose will clean up.
		c.mu.Lock()
		c.wakeSent = false
		c.mu.Unlock()
	}
}

// fail queues a final ERROR frame (fatal) and closes c once it is written.
func (c *conn) fail(ser codec.SerializerID, seq uint32, code codec.ErrorCode, msg string) {
	c.srv.metrics.countError(code)
	c.writeMsg(ser, codec.CmdError, seq, &pb.Error{Code: uint32(code), Message: msg, Fatal: true, Retryable: code.Retryable()})
	c.closeAfterFlush()
}

// kick queues a KICK frame and closes c once it is written.
func (c *conn) kick(code codec.ErrorCode, reason string) {
	c.writeMsg(c.ser, codec.CmdKick, 0, &pb.Kick{Code: uint32(code), Reason: reason})
	c.closeAfterFlush()
}

func (c *conn) closeAfterFlush() {
	c.state.Store(stateClosing)
	c.mu.Lock()
	c.closeAfter = true
	wake := c.needWakeLocked()
	c.mu.Unlock()
	if wake {
		c.wake()
	}
}

// replyError answers request seq with a non-fatal ERROR.
func (c *conn) replyError(ser codec.SerializerID, seq uint32, code codec.ErrorCode, msg string, retryAfterMs uint32) {
	c.srv.metrics.countError(code)
	c.writeMsg(ser, codec.CmdError, seq, &pb.Error{Code: uint32(code), Message: msg, Retryable: code.Retryable(), RetryAfterMs: retryAfterMs})
}

// flush writes everything queued for c. Event loop only.
func (c *conn) flush() {
	c.mu.Lock()
	buf := c.out
	c.out = nil
	c.wakeSent = false
	closeAfter := c.closeAfter
	c.mu.Unlock()
	if buf != nil {
		n := len(buf.B)
		if _, err := c.gc.Write(buf.B); err == nil {
			c.srv.metrics.bytesOut.Add(float64(n))
		}
		codec.PutBuffer(buf)
	}
	if closeAfter {
		_ = c.gc.Close()
		return
	}
	if c.gc.OutboundBuffered() > c.srv.cfg.MaxOutbound {
		c.srv.metrics.slowConsumers.Inc()
		c.srv.metrics.countError(codec.CodeSlowConsumer)
		c.state.Store(stateClosing)
		c.mu.Lock()
		c.closeAfter = true
		c.mu.Unlock()
		_ = c.gc.Close()
	}
}

// markClosed drops anything queued; called from OnClose.
func (c *conn) markClosed() {
	c.state.Store(stateClosing)
	c.mu.Lock()
	c.closed = true
	if c.out != nil {
		codec.PutBuffer(c.out)
		c.out = nil
	}
	c.tasks = nil
	c.mu.Unlock()
}

// submit queues t to run after c's earlier requests. Requests of one
// connection run one at a time, in order, so a client that pipelines two
// sends has them stored in the order it sent them.
func (c *conn) submit(t task) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if len(c.tasks) >= c.srv.cfg.ConnQueue {
		c.mu.Unlock()
		c.replyError(t.h.Serializer, t.h.Seq, codec.CodeBusy, "too many requests in flight on this connection", 100)
		return
	}
	c.tasks = append(c.tasks, t)
	if c.running {
		c.mu.Unlock()
		return
	}
	c.running = true
	c.mu.Unlock()
	if !c.srv.pool.submit(c) {
		c.mu.Lock()
		dropped := c.tasks
		c.tasks, c.running = nil, false
		c.mu.Unlock()
		for _, t := range dropped {
			c.replyError(t.h.Serializer, t.h.Seq, codec.CodeBusy, "server work queue is full", 200)
		}
	}
}

// runTasks runs c's queued requests until none is left. Worker only.
func (c *conn) runTasks() {
	for {
		c.mu.Lock()
		if len(c.tasks) == 0 || c.closed {
			c.tasks = nil
			c.running = false
			c.mu.Unlock()
			return
		}
		t := c.tasks[0]
		c.tasks[0] = task{}
		c.tasks = c.tasks[1:]
		c.mu.Unlock()
		c.srv.handle(c, t)
	}
}
