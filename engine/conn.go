package engine

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
)

// Connection states.
const (
	stateNew      uint32 = iota // connected, no successful login yet
	stateLoggedIn               // user and device are set and immutable
	stateClosing                // a final frame is queued; nothing else is sent
)

// transport is what the engine needs of a client connection's socket: gnet's
// connection satisfies it, and tests use an in-memory one. Every method is
// called on the connection's event loop only.
type transport interface {
	codec.Peeker
	Write(b []byte) (int, error)
	RemoteAddr() net.Addr
	OutboundBuffered() int
	Close() error
}

// conn is the per-connection state, stored in the gnet connection context.
//
// Field ownership:
//   - the loop's goroutine owns tr's methods, dirty and loginPending;
//   - user, device and ser are written once by whoever completes the login
//     (under mu, before state becomes stateLoggedIn with a release store)
//     and are read-only afterwards: read them only after seeing
//     stateLoggedIn (loggedIn), or under mu;
//   - everything under mu may be touched by any goroutine.
type conn struct {
	tr   transport
	loop *loop
	id   uint64

	// Unix nanoseconds of the accept until the login completes (the login
	// deadline counts from it), then of the last complete inbound frame.
	lastRecv atomic.Int64
	cursor   atomic.Uint64

	// sendLim is the user's send limiter once this connection has sent:
	// the session map keeps one limiter per user for as long as the user
	// has a session, so it cannot change under a live connection, and
	// caching it spares each send a lookup in the map. Atomic because a
	// connection's requests run on its loop or on a worker.
	sendLim atomic.Pointer[rate.Limiter]

	user, device string

	prev, next *conn // in the node's connSet (its shard lock)

	mu         sync.Mutex
	out        *outBuf // frames waiting for the loop to write them; nil when none
	head, tail *task   // requests waiting to run, in arrival order

	state    atomic.Uint32
	sockOut  atomic.Int32 // bytes the transport still had to send after the last flush
	inBytes  int32        // (mu) bytes held by head..tail, bounded by MaxConnInbound
	inflight int32        // (mu) appends handed to the store and not yet complete
	// (mu) bytes of those appends (inflightCost), bounded with the
	// pipelined sends by Config.MaxConnInbound (see mayStartLocked)
	inflightBytes int
	renewed       atomic.Uint32 // seconds since the server started: last session-route renewal

	hbSec        uint16             // heartbeat interval announced at login, seconds
	ser          codec.SerializerID // serializer of server-initiated frames
	dirty        bool               // loop only: listed in loop.dirty
	loginPending bool               // loop only: a LOGIN was queued (noLogin clears it once it has run)
	queued       bool               // (mu) in the loop's mailbox, or about to be
	closeAfter   bool               // (mu) close once out is written
	closed       bool               // (mu) OnClose ran: drop writes
	running      bool               // (mu) a worker owns this connection's task queue
	// direct (mu): another loop may write out to the socket itself
	// (writeFrom): the connection is plain TCP, its loop's last flush left
	// nothing in gnet's buffer, and no final frame is queued.
	direct bool
	// multi: this is its user's first device in the session map and the
	// user has more (userExtra.more). Written and read under the user's
	// session shard lock.
	multi bool
}

func (c *conn) loggedIn() bool { return c.state.Load() == stateLoggedIn }

// identity returns user and device under mu: safe from any goroutine,
// empty before the login completes.
func (c *conn) identity() (user, device string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.user, c.device
}

// queue appends a frame built by build to c's output and schedules the
// write: at the end of src's turn when src is c's loop, else through c's
// loop's mailbox. src is the loop the caller runs on, nil off-loop. build
// appends whole frames to its argument and returns the extended slice; it
// runs under c.mu and must not block or call back into c. The output bound
// (MaxOutbound, counting what the transport has not sent yet) is checked
// before the frame is handed to the socket: a frame that would exceed it is
// dropped and the connection closed as a slow consumer. queue reports
// whether the frame was queued; frames to a closing or closed connection
// are dropped.
func (c *conn) queue(src *loop, build func([]byte) []byte) bool {
	c.mu.Lock()
	if c.closed || c.closeAfter {
		c.mu.Unlock()
		return false
	}
	if c.out == nil {
		c.out = getOutBuf()
	}
	before := len(c.out.B)
	c.out.B = build(c.out.B)
	ok := true
	if len(c.out.B)+int(c.sockOut.Load()) > c.loop.srv.cfg.MaxOutbound {
		// The frame is dropped; the final ERROR goes out instead, beyond
		// the bound (a few dozen bytes), best effort: the peer is not
		// reading (docs/protocol.md §7).
		c.out.B, _ = codec.AppendFrame(c.out.B[:before], c.ser, codec.CmdError, 0, 0,
			errorMsg(codec.CodeSlowConsumer, "output backed up: the connection is not reading", true, 0))
		c.closeAfter = true
		c.state.Store(stateClosing)
		c.loop.srv.metrics.slowConsumers.Inc()
		c.loop.srv.metrics.countError(codec.CodeSlowConsumer)
		ok = false
	}
	c.scheduleLocked(src)
	return ok
}

// scheduleLocked makes c's loop write c's output soon, and unlocks c.mu.
func (c *conn) scheduleLocked(src *loop) {
	if src == c.loop {
		c.mu.Unlock()
		src.markDirty(c)
		return
	}
	post := !c.queued
	c.queued = true
	direct := c.direct
	c.mu.Unlock()
	switch {
	case !post:
	case direct && src != nil:
		// Written by src at the end of its turn, sparing c's loop a
		// wake-up (writeFrom).
		src.remote = append(src.remote, c)
	default:
		c.loop.post(c, src)
	}
}

// writeFrom writes c's output from src, a loop that is not c's and queued
// it (scheduleLocked), at the end of src's turn: when the socket is idle
// (c.direct), with one write(2) on its descriptor, under c.mu so that
// neither c's loop nor another producer writes, and OnClose cannot close
// the descriptor, until it returns. What the socket does not take at once,
// or output of a connection that is not idle, goes to c's loop's mailbox
// as before, behind nothing: c.out is one queue, written from its front
// by whoever holds c.mu, so frames keep their order.
func (c *conn) writeFrom(src *loop) {
	c.mu.Lock()
	buf := c.out
	if buf == nil || c.closed {
		// Written by c's loop since, or closed (out is dropped).
		c.mu.Unlock()
		return
	}
	if c.direct && !c.closeAfter {
		if fc, ok := c.tr.(gnet.Conn); ok {
			n, _ := writeFd(fc.Fd(), buf.B)
			src.written += n
			if n == len(buf.B) {
				src.direct[0]++
				c.out = nil
				c.queued = false
				c.mu.Unlock()
				putOutBuf(buf)
				return
			}
			// A short write, EAGAIN or an error: the loop takes the
			// rest (gnet buffers it until the socket is writable, or
			// closes the connection on the error).
			buf.B = buf.B[:copy(buf.B, buf.B[n:])]
			src.direct[1]++
		}
		c.direct = false
	}
	c.mu.Unlock()
	c.loop.post(c, src) // c.queued is still set: c is posted once
}

// writeFd is one write(2) of b on fd; it returns how many bytes the
// kernel took (0 on any error, EAGAIN included).
func writeFd(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		return max(n, 0), err
	}
}

// writeMsg queues one frame for c with msg encoded in ser (see queue). A
// message that cannot be encoded (a bug: requests are checked at decode)
// is never dropped silently: it is replaced by ERROR INTERNAL with the
// same seq, so a request always gets an answer, and counted in
// imgn_encode_errors_total. writeMsg reports whether msg itself was queued.
func (c *conn) writeMsg(src *loop, ser codec.SerializerID, cmd codec.Command, seq uint32, msg proto.Message) bool {
	var encErr error
	ok := c.queue(src, func(b []byte) []byte {
		out, err := codec.AppendFrame(b, ser, cmd, 0, seq, msg)
		if err != nil {
			encErr = err
			out, _ = codec.AppendFrame(b, ser, codec.CmdError, 0, seq,
				errorMsg(codec.CodeInternal, "the server could not encode its "+cmd.String()+" reply", false, 0))
		}
		return out
	})
	if encErr != nil {
		s := c.loop.srv
		s.metrics.encodeErrors.Inc()
		s.metrics.countError(codec.CodeInternal)
		s.log.Error("encode frame; answered INTERNAL instead", "cmd", cmd, "seq", seq, "err", encErr)
		return false
	}
	return ok
}

// errorMsg is an ERROR frame's body. Its text may quote request bytes
// (ids, decoder messages): invalid UTF-8 in it is replaced, so that the
// frame encodes in every serializer.
func errorMsg(code codec.ErrorCode, msg string, fatal bool, retryAfterMs uint32) *pb.Error {
	return &pb.Error{Code: uint32(code), Message: validText(msg), Fatal: fatal, Retryable: code.Retryable(), RetryAfterMs: retryAfterMs}
}

// fail queues a final ERROR frame (fatal) and closes c once it is written.
func (c *conn) fail(src *loop, ser codec.SerializerID, seq uint32, code codec.ErrorCode, msg string) {
	c.loop.srv.metrics.countError(code)
	c.writeMsg(src, ser, codec.CmdError, seq, errorMsg(code, msg, true, 0))
	c.closeAfterFlush(src)
}

// kick queues a KICK frame and closes c once it is written.
func (c *conn) kick(src *loop, code codec.ErrorCode, reason string) {
	c.writeMsg(src, c.ser, codec.CmdKick, 0, &pb.Kick{Code: uint32(code), Reason: reason})
	c.closeAfterFlush(src)
}

// closeAfterFlush closes c once what is queued has been written.
func (c *conn) closeAfterFlush(src *loop) {
	c.state.Store(stateClosing)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closeAfter = true
	c.scheduleLocked(src)
}

// replyError answers request seq with a non-fatal ERROR.
func (c *conn) replyError(src *loop, ser codec.SerializerID, seq uint32, code codec.ErrorCode, msg string, retryAfterMs uint32) {
	c.loop.srv.metrics.countError(code)
	c.writeMsg(src, ser, codec.CmdError, seq, errorMsg(code, msg, false, retryAfterMs))
}

// flush writes everything queued for c, and closes c if a final frame was
// queued. Loop goroutine only.
//
// No other loop writes the socket meanwhile: c.direct is cleared before the
// write (under c.mu, which a writeFrom in progress holds) and set again only
// when the socket is plain TCP and gnet holds nothing for it; gnet's own
// writes of what it buffered (once the socket is writable) happen only
// while c.direct is clear. The write runs without c.mu: on an error gnet
// closes the connection from inside it, and OnClose takes c.mu.
func (c *conn) flush() {
	c.mu.Lock()
	buf := c.out
	c.out = nil
	c.queued = false
	closeAfter := c.closeAfter
	closed := c.closed
	wasDirect := c.direct
	if buf != nil {
		c.direct = false
	}
	c.mu.Unlock()
	if buf != nil {
		if !closed {
			n := len(buf.B)
			if _, err := c.tr.Write(buf.B); err == nil {
				c.loop.written += n // counted once per turn (endTurn)
			}
		}
		putOutBuf(buf)
	}
	if closed {
		return
	}
	pending := c.tr.OutboundBuffered()
	c.sockOut.Store(int32(min(pending, 1<<30)))
	if closeAfter {
		_ = c.tr.Close()
		return
	}
	if pending == 0 && (buf != nil || !wasDirect) {
		if _, plain := c.tr.(gnet.Conn); plain {
			c.mu.Lock()
			c.direct = !c.closed && !c.closeAfter
			c.mu.Unlock()
		}
	}
}

// markClosed drops anything queued; called from OnClose.
func (c *conn) markClosed() {
	c.state.Store(stateClosing)
	c.mu.Lock()
	c.closed = true
	if c.out != nil {
		putOutBuf(c.out)
		c.out = nil
	}
	head := c.head
	c.head, c.tail = nil, nil
	c.loop.srv.releaseInbound(int(c.inBytes))
	c.inBytes = 0
	c.mu.Unlock()
	for t := head; t != nil; {
		next := t.next
		putTask(t)
		t = next
	}
}

// task is one request waiting for a worker: its header and a copy of its
// body (the loop's buffer is reused once OnTraffic returns). Tasks are
// pooled and linked per connection, so queueing allocates nothing in steady
// state and an idle connection holds no queue at all.
type task struct {
	h    codec.Header
	body []byte
	ip   netip.Addr // the peer's address, for LOGIN and REGISTER
	next *task
}

// taskCost is what a queued request counts against the inbound bounds: its
// body and a fixed overhead, so a flood of empty frames is bounded too.
func taskCost(t *task) int { return bodyCost(len(t.body)) }

// bodyCost is what a request with an n-byte body counts against the
// inbound bounds.
func bodyCost(n int) int { return n + 64 }

var taskPool = sync.Pool{New: func() any { return new(task) }}

func getTask() *task { return taskPool.Get().(*task) }

func putTask(t *task) {
	if cap(t.body) > 64<<10 {
		t.body = nil // do not pool a buffer grown by one huge body
	}
	body := t.body[:0]
	*t = task{body: body}
	taskPool.Put(t)
}

// hasWork reports whether requests of c are queued, running on a worker, or
// waiting for the store.
func (c *conn) hasWork() bool {
	c.mu.Lock()
	busy := c.head != nil || c.running || c.inflight > 0
	c.mu.Unlock()
	return busy
}

// noLogin reports whether c is not logged in and no LOGIN of it is queued
// or running: a request other than REGISTER, LOGIN and HEARTBEAT is then
// NOT_LOGGED_IN, whatever its command (docs/protocol.md §2.3 step 7).
// While a LOGIN waits for a worker, what follows it queues behind it and
// learns its outcome there. Once it has run and failed, loginPending is
// cleared, so the connection is back to "before login". Loop only.
func (c *conn) noLogin() bool {
	if c.loggedIn() {
		return false
	}
	if !c.loginPending {
		return true
	}
	if c.hasWork() {
		return false // the LOGIN is still queued or running
	}
	c.loginPending = false
	// Read again: the LOGIN may have succeeded since the first look (the
	// worker's state write happens before its last unlock of mu, which
	// hasWork has just taken).
	return !c.loggedIn()
}

// mustQueue reports whether a new request cmd with a body of n bytes must
// queue behind c's earlier ones: requests queued or running on a worker, or
// appends at the store it may not overtake (mayStartLocked).
func (c *conn) mustQueue(cmd codec.Command, n int) bool {
	c.mu.Lock()
	busy := c.head != nil || c.running || !c.mayStartLocked(cmd, bodyCost(n))
	c.mu.Unlock()
	return busy
}

// mayStartLocked reports whether a request cmd costing cost bytes may start
// while c's appends in flight are at the store: always when there are none;
// for a send that may overtake them (inflightAllowed), while fewer than
// maxPipelinedSends are in flight and their bytes and its own stay within
// Config.MaxConnInbound, the same budget as requests queued for workers.
// c.mu must be held.
func (c *conn) mayStartLocked(cmd codec.Command, cost int) bool {
	if c.inflight == 0 {
		return true
	}
	s := c.loop.srv
	return c.inflight < s.inflightAllowed(cmd) && c.inflightBytes+cost <= s.cfg.MaxConnInbound
}

// maxPipelinedSends bounds the appends of one connection in flight at the
// store's committer at once (their bytes are bounded too, see
// mayStartLocked); a send beyond either bound queues for a worker, under the
// connection's inbound bound, until completions make room.
const maxPipelinedSends = 64

// inflightAllowed is how many appends of its connection may be in flight at
// the store while request cmd starts. With an asynchronous store a send may
// follow earlier ones without waiting for them: they all go through the
// committer's queue, which stores and completes them in the order they were
// handed over, so the client's order holds and the committer batches them
// (one fsync) instead of taking one per round trip. The same holds for an
// inline store that hands contended appends over (handOffAppender): its
// queue of handed-over appends is first in, first out; there a PUSH_ACK
// does not wait for them either (it moves the cursor over pushes already
// received, which no append of its own connection can change, and has no
// reply to order), so a connection that sends and acknowledges stays on its
// loop. Any other request waits for every append (it must see their
// effects).
func (s *Server) inflightAllowed(cmd codec.Command) int32 {
	switch {
	case s.async == nil:
	case cmd == codec.CmdSend || cmd == codec.CmdGroupSend:
		if !s.inline || s.handoff != nil {
			return maxPipelinedSends
		}
	case cmd == codec.CmdPushAck:
		if s.handoff != nil {
			return maxPipelinedSends
		}
	}
	return 1
}

// enqueue queues t to run after c's earlier requests and, unless a worker
// already owns c's queue or appends are still in flight, hands c to the
// worker pool. Requests of one connection run one at a time, in order, so
// a client that pipelines two sends has them stored in the order it sent
// them. It answers BUSY (and drops t) when c's or the node's inbound bound
// is exceeded.
func (c *conn) enqueue(src *loop, t *task) {
	s := c.loop.srv
	cost := taskCost(t)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		putTask(t)
		return
	}
	if int(c.inBytes)+cost > s.cfg.MaxConnInbound {
		c.mu.Unlock()
		h := t.h
		putTask(t)
		c.replyError(src, h.Serializer, h.Seq, codec.CodeBusy, "too many requests in flight on this connection", 100)
		return
	}
	if !s.reserveInbound(cost) {
		c.mu.Unlock()
		h := t.h
		putTask(t)
		c.replyError(src, h.Serializer, h.Seq, codec.CodeBusy, "server work queue is full", 200)
		return
	}
	c.inBytes += int32(cost)
	if c.tail == nil {
		c.head = t
	} else {
		c.tail.next = t
	}
	c.tail = t
	start := !c.running && c.mayStartLocked(c.head.h.Command, taskCost(c.head))
	if start {
		c.running = true
	}
	c.mu.Unlock()
	if start {
		s.pool.submit(c)
	}
}

// runTasks runs c's queued requests until none is left, or until the next
// one must wait for appends in flight (mayStartLocked; their completion
// restarts the queue). Worker only.
func (c *conn) runTasks() {
	s := c.loop.srv
	for {
		c.mu.Lock()
		t := c.head
		if t == nil || c.closed || !c.mayStartLocked(t.h.Command, taskCost(t)) {
			c.running = false
			c.mu.Unlock()
			return
		}
		c.head = t.next
		if c.head == nil {
			c.tail = nil
		}
		cost := taskCost(t)
		c.inBytes -= int32(cost)
		c.mu.Unlock()
		s.releaseInbound(cost)
		s.handle(c, t)
		putTask(t)
	}
}

// appendDone is called when one of c's in-flight appends, of cost bytes,
// completes: the queue it held back runs now if its next request may start.
func (c *conn) appendDone(cost int) {
	c.mu.Lock()
	c.inflight--
	c.inflightBytes -= cost
	start := c.head != nil && !c.running && !c.closed && c.mayStartLocked(c.head.h.Command, taskCost(c.head))
	if start {
		c.running = true
	}
	c.mu.Unlock()
	if start {
		c.loop.srv.pool.submit(c)
	}
}

// dropQueue answers and drops c's queued requests when no worker can run
// them (the pool has stopped).
func (c *conn) dropQueue() {
	c.mu.Lock()
	head := c.head
	c.head, c.tail, c.running = nil, nil, false
	c.loop.srv.releaseInbound(int(c.inBytes))
	c.inBytes = 0
	c.mu.Unlock()
	for t := head; t != nil; {
		next := t.next
		c.replyError(nil, t.h.Serializer, t.h.Seq, codec.CodeShuttingDown, "node is shutting down", 0)
		putTask(t)
		t = next
	}
}

// outBuf is a connection's pending output. Buffers are pooled: a
// connection holds one only while it has output waiting, so an idle
// connection costs none.
type outBuf struct{ B []byte }

// maxPooledOut: larger buffers (a burst to a slow reader) are left to the
// garbage collector rather than kept in the pool.
const maxPooledOut = 64 << 10

var outPool = sync.Pool{New: func() any { return &outBuf{B: make([]byte, 0, 512)} }}

func getOutBuf() *outBuf { return outPool.Get().(*outBuf) }

func putOutBuf(b *outBuf) {
	if cap(b.B) > maxPooledOut {
		return
	}
	b.B = b.B[:0]
	outPool.Put(b)
}
