package engine

import (
	"context"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/persist"
)

// The path of a message (SEND and GROUP_SEND), in three variants that share
// one completion (sendOp.AppendDone):
//
//   - inline: the store never blocks (persist.NonBlocking). The request
//     runs on the sender's event loop; the store completes the append
//     before AppendAsync returns, under its own lock, so the SEND_ACK and
//     the pushes are queued in seq order and written at the end of the same
//     OnTraffic (pushes to other loops: one trigger per loop). A store that
//     hands contended appends over (handOffAppender, the memory store)
//     never makes a loop wait for another loop's append: when one is
//     running, the request's bytes are copied into the op and the op is
//     queued for that loop, which completes it (the SEND_ACK then reaches
//     the sender's loop like a cross-loop push).
//   - async: the store has a committer (persist.AsyncAppender). The
//     request is checked on the loop (or on a worker when a lookup could
//     block) and handed to the committer; the store completes each op in
//     commit order once it is durable (the embedded store on a goroutine
//     of its own, while the committer builds the next batch), queueing its
//     ack and pushes for the loops to write.
//   - sync: anything else, and every cluster node: a worker runs the append
//     and waits for it.

// sendOp is one message on its way through the store. It is pooled: the
// steady state allocates nothing per message.
type sendOp struct {
	persist.AppendOp
	s     *Server
	c     *conn // the sending connection
	src   *loop // the loop AppendDone runs on (inline stores), else nil
	h     codec.Header
	start time.Time
	async bool // given to the store's AppendAsync path (AppendDone tells the observer)
	// combined: given to a handOffAppender, whose completions run on
	// the goroutine of whichever loop is combining (its Runner), not
	// necessarily src's.
	combined bool
	// cost is what the op counts in c.inflight and c.inflightBytes while
	// it is at the store; 0 when it is not counted (an append completed
	// within the call that submitted it).
	cost int

	inboxes [2]string
	seqs    [2]uint64
	buf     []byte // the request's strings and body, when the op outlives the frame

	// The PUSH, encoded once per serializer for every device of every
	// inbox (each gets its own seq spliced in); reset on first use.
	// Allocated with the pooled op (sendOpPool) and kept by putSendOp: a
	// pointer, so recycling the op does not copy the template's buffers out
	// and back.
	tmpl    *codec.PushTemplate
	tmplSet bool
}

var sendOpPool = sync.Pool{New: func() any { return &sendOp{tmpl: new(codec.PushTemplate)} }}

func getSendOp(s *Server, c *conn, h codec.Header) *sendOp {
	op := sendOpPool.Get().(*sendOp)
	op.s, op.c, op.h = s, c, h
	return op
}

func putSendOp(op *sendOp) {
	tmpl := op.tmpl
	buf := op.buf[:0]
	if cap(buf) > 64<<10 {
		buf = nil
	}
	inboxes := op.Inboxes
	if cap(inboxes) > len(op.inboxes) && cap(inboxes) <= 4096 {
		clear(inboxes[:cap(inboxes)])
	} else {
		inboxes = nil
	}
	seqs := op.Result.Seqs
	if cap(seqs) <= len(op.seqs) || cap(seqs) > 4096 {
		seqs = nil
	}
	*op = sendOp{buf: buf, tmpl: tmpl}
	if inboxes != nil {
		op.Inboxes = inboxes[:0]
	}
	if seqs != nil {
		op.Result.Seqs = seqs[:0]
	}
	sendOpPool.Put(op)
}

// keep returns b as a string for the store, valid for as long as the
// store may use it:
//
//   - inline store: a view of the frame (the store copies what it keeps
//     before AppendAsync returns);
//   - async store: a copy in op.buf, which op owns until Done (op.buf is
//     sized for the whole request first, by reserve, so copies never move);
//   - anything else (cluster mode, the synchronous path): a string of its
//     own. Such a store may keep the message after Append returns (an
//     append abandoned on timeout completes later; MongoDB's seq cache
//     keys on inbox names), so it must never see memory that op reuses.
func (op *sendOp) keep(b []byte) string {
	switch {
	case len(b) == 0:
		return ""
	case op.s.inline:
		return unsafe.String(unsafe.SliceData(b), len(b))
	case op.s.async != nil:
		return op.copyIn(b)
	}
	return string(b)
}

// copyIn appends b to op.buf and returns the copy as a string. op.buf must
// have room for it (reserve), so earlier copies never move.
func (op *sendOp) copyIn(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	start := len(op.buf)
	op.buf = append(op.buf, b...)
	return unsafe.String(&op.buf[start], len(b))
}

// own replaces the views of the frame that keep gave an inline op (To,
// ClientMsgID, Body, and the recipient's inbox) with copies in op.buf, for
// an op that is handed over and so outlives the frame. The inbox names
// other than the recipient's are the sender's id and cached group members,
// which do not change.
func (op *sendOp) own() {
	m := &op.Msg
	to, cmid, body := m.To, m.ClientMsgID, m.Body
	if n := len(to) + len(cmid) + len(body); cap(op.buf) < n {
		op.buf = make([]byte, 0, n)
	}
	op.buf = op.buf[:0]
	m.To = op.copyIn(unsafe.Slice(unsafe.StringData(to), len(to)))
	m.ClientMsgID = op.copyIn(unsafe.Slice(unsafe.StringData(cmid), len(cmid)))
	if len(body) > 0 {
		b := op.copyIn(body)
		m.Body = unsafe.Slice(unsafe.StringData(b), len(b))
	}
	if !m.Group && len(op.Inboxes) == 2 {
		op.inboxes[1] = m.To
	}
}

// inflightCost is what op counts against its connection's inbound bound
// while it is at the store: the bytes it keeps (op.buf, which does not
// change until the op is released) plus the fixed overhead.
func (op *sendOp) inflightCost() int { return bodyCost(len(op.buf)) }

func (op *sendOp) reserve(n int) {
	if op.s.async != nil && !op.s.inline && cap(op.buf) < n {
		op.buf = make([]byte, 0, n)
	}
}

// handleSend runs a SEND or GROUP_SEND: checks, then the append; the ack
// and the pushes follow from AppendDone. src is the loop it runs on, nil on
// a worker.
func (s *Server) handleSend(src *loop, c *conn, h codec.Header, body []byte) {
	group := h.Command == codec.CmdGroupSend
	// The request is decoded in place: the views alias body, or the
	// scratch buffer where a serializer needs unescaping (the loop's own
	// on the loop, a pooled one on a worker).
	var v codec.SendView
	var scratch *[]byte
	if src != nil {
		scratch = &src.scratch
	} else {
		scratch = getScratch()
		defer putScratch(scratch)
	}
	var err error
	*scratch, err = codec.DecodeSend(h.Serializer, body, group, &v, (*scratch)[:0])
	if err != nil {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeBadBody, err.Error(), 0)
		return
	}
	cmid, to, kind, payload := v.ClientMsgID, v.To, v.Kind, v.Body
	if !c.loggedIn() {
		c.fail(src, h.Serializer, h.Seq, codec.CodeNotLoggedIn, "log in first")
		return
	}
	if len(cmid) == 0 || len(cmid) > 64 {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeInvalidArgument, "client_msg_id must be 1..64 bytes", 0)
		return
	}
	toStr := unsafe.String(unsafe.SliceData(to), len(to))
	if !validID(toStr) {
		what := "to must be a user id"
		if group {
			what = "group_id must be a group id"
		}
		c.replyError(src, h.Serializer, h.Seq, codec.CodeInvalidArgument, what, 0)
		return
	}
	// The lookups below read the store on a miss: on the loop that is
	// allowed only when the store never blocks. Only a worker needs a
	// deadline (and its timer).
	mayBlock := src == nil || s.inline
	ctx := context.Background()
	if src == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	var g *persist.Group
	if group {
		var e *codec.Error
		if g, e = s.groupFor(ctx, src, c, h, body, toStr, mayBlock); e != nil {
			c.replyErr(src, h, e)
			return
		} else if g == nil {
			return // passed to a worker
		}
		if _, member := slices.BinarySearch(g.Members, c.user); !member {
			c.replyError(src, h.Serializer, h.Seq, codec.CodeNotGroupMember, "not a member of "+g.ID, 0)
			return
		}
	} else if !s.userKnown(toStr) {
		if !mayBlock {
			s.toWorker(src, c, h, body)
			return
		}
		ok, err := s.userExists(ctx, toStr)
		if err != nil {
			c.replyErr(src, h, s.storeFailure(c, "read recipient", err))
			return
		}
		if !ok {
			c.replyError(src, h.Serializer, h.Seq, codec.CodeUnknownRecipient, "no such user: "+toStr, 0)
			return
		}
	}
	if e := s.sendRate(c, now(src)); e != nil {
		c.replyErr(src, h, e)
		return
	}

	op := getSendOp(s, c, h)
	op.start = now(src)
	op.reserve(len(cmid) + len(to) + len(payload))
	op.Msg = persist.Message{ID: s.ids.nextAt(op.start.UnixMilli()), From: c.user, To: op.keep(to), Group: group, ClientMsgID: op.keep(cmid),
		Timestamp: op.start.UnixMilli(), Kind: kind}
	if len(payload) > 0 {
		body := op.keep(payload)
		op.Msg.Body = unsafe.Slice(unsafe.StringData(body), len(body))
	}
	// The sender's inbox comes first, so Result.Seqs[0] is the ack's seq.
	if group {
		op.Inboxes = append(op.Inboxes[:0], c.user)
		for _, m := range g.Members {
			if m != c.user {
				op.Inboxes = append(op.Inboxes, m)
			}
		}
	} else {
		op.inboxes[0], op.inboxes[1] = c.user, op.Msg.To
		op.Inboxes = op.inboxes[:2]
		if op.Msg.To == c.user {
			op.Inboxes = op.inboxes[:1]
		}
	}
	if n := len(op.Inboxes); cap(op.Result.Seqs) < n {
		if n <= len(op.seqs) {
			op.Result.Seqs = op.seqs[:0]
		} else {
			op.Result.Seqs = make([]uint64, 0, n)
		}
	}
	op.Done = op
	s.submitAppend(ctx, src, op)
}

// groupFor returns the members of group id, from the cache or the store,
// or why it cannot. When a store read would block the loop it passes the
// request (h, body) to a worker instead and returns neither.
func (s *Server) groupFor(ctx context.Context, src *loop, c *conn, h codec.Header, body []byte, id string, mayBlock bool) (*persist.Group, *codec.Error) {
	caching := s.cfg.Cluster == nil
	if caching {
		if g, _ := s.groups.get(id); g != nil {
			return g, nil
		}
	}
	if !mayBlock {
		s.toWorker(src, c, h, body)
		return nil, nil
	}
	_, gen := s.groups.get(id)
	g, e := s.loadGroup(ctx, c, id)
	if e != nil {
		return nil, e
	}
	if caching {
		s.groups.put(&g, gen)
	}
	return &g, nil
}

// submitAppend hands op to the store: asynchronously when the store takes
// appends that way, else synchronously on this worker.
func (s *Server) submitAppend(ctx context.Context, src *loop, op *sendOp) {
	if s.async != nil {
		if s.inline {
			op.src = src
		}
		op.async = true
		if h := s.handoff; h != nil {
			op.combined = true
			if h.TryAppendAsync(&op.AppendOp, src) {
				return // completed (and released) within the call: nothing to count
			}
			// Another loop is appending: hand the op over rather than
			// wait. It outlives the frame now, so it owns its bytes,
			// and they count against the connection's bound.
			op.own()
			s.countInflight(op)
			s.metrics.appendHandoffs.Inc()
			h.HandOffAppend(&op.AppendOp, src)
			return
		}
		s.countInflight(op)
		s.async.AppendAsync(&op.AppendOp)
		return
	}
	op.Result, op.Err = s.appendInboxes(ctx, op.Msg, op.Inboxes)
	op.AppendDone(&op.AppendOp)
}

// countInflight counts op, about to be handed to the store, in its
// connection's appends in flight (released by AppendDone).
func (s *Server) countInflight(op *sendOp) {
	op.cost = op.inflightCost()
	op.c.mu.Lock()
	op.c.inflight++
	op.c.inflightBytes += op.cost
	op.c.mu.Unlock()
	s.inflightOps.Add(1)
}

// AppendDone implements persist.AppendCompleter: it answers the sender and
// pushes the message to every online device of its inboxes. For an inline
// store it runs under the store's lock, for an async one on the goroutine
// that completes its commits: either way in seq order per inbox, and it
// must not block.
func (op *sendOp) AppendDone(*persist.AppendOp) {
	s, c, src := op.s, op.c, op.src
	offLoop := src == nil
	switch {
	case op.combined:
		src, _ = s.handoff.Runner().(*loop)
	case op.InBatch && s.batchLoop != nil:
		// On the store's completing goroutine, which writes what this
		// queues once the batch is complete.
		src = s.batchLoop
	}
	if op.Err != nil {
		c.replyErr(src, op.h, s.failure(c, "append", op.Err))
	} else {
		res := &op.Result
		if !res.Duplicate {
			s.metrics.messages.Inc()
		}
		h, m := op.h, &res.Msg
		c.queue(src, func(b []byte) []byte {
			return codec.AppendSendAckFrame(b, h.Serializer, h.Seq, m.ClientMsgID, m.ID, res.Seqs[0], m.Timestamp, res.Duplicate)
		})
		// Pushes go out even for a duplicate: the first attempt may have
		// stored the message and died before pushing; clients drop seqs
		// they have shown.
		s.deliver(src, op, &res.Msg, op.Inboxes, res.Seqs, c)
		if obs := s.cfg.Observer; obs != nil && op.async {
			// Synchronous appends told the observer in localAppend.
			obs.MessageStored(&res.Msg, op.Inboxes, res.Seqs, res.Duplicate)
		}
		if offLoop {
			// Off-loop completions waited for the store: worth measuring.
			// (Inline ones complete within the turn that took the send.)
			s.metrics.pushLatency.Observe(time.Since(op.start).Seconds())
		}
	}
	if op.cost > 0 {
		s.inflightOps.Add(-1)
		c.appendDone(op.cost)
	}
	putSendOp(op)
}

// handOffAppender is an inline store (persist.NonBlocking) whose appends
// never make one event loop wait for another's (persist/memstore's
// TryAppendAsync, HandOffAppend and Runner). runner is the *loop the call
// runs on (nil on a worker); completions run under the store's lock, in
// seq order per inbox, on the goroutine of the combining call, whose runner
// Runner returns during them.
type handOffAppender interface {
	TryAppendAsync(op *persist.AppendOp, runner any) bool
	HandOffAppend(op *persist.AppendOp, runner any)
	Runner() any
}

// sendRate applies the per-user token bucket to a request of logged-in c:
// nil when it may go on, RATE_LIMITED with the wait when the bucket is
// empty. Allocation-free unless it refuses.
func (s *Server) sendRate(c *conn, now time.Time) *codec.Error {
	lim := c.sendLim.Load()
	if lim == nil {
		if lim = s.sessions.limiter(c.user, s.newLimiter); lim == nil {
			return nil // no session (closing): nothing to limit
		}
		c.sendLim.Store(lim)
	}
	if lim.AllowN(now, 1) {
		return nil
	}
	// Refused (rare): learn the wait for retry_after_ms. Reserve
	// allocates, Allow does not, hence the two steps.
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return &codec.Error{Code: codec.CodeRateLimited, Message: "send rate exceeded", RetryAfterMs: uint32(d.Milliseconds()) + 1}
	}
	return nil
}

// pushTo queues a PUSH of m, at seq of user's inbox, to every device of user
// online on this node except skip (the connection that sent it: its
// SEND_ACK stands for it). op (may be nil) lends its push template, so a
// message sent to many inboxes is encoded once per serializer.
func (s *Server) pushTo(src *loop, op *sendOp, user string, seq uint64, m *persist.Message, skip *conn) {
	var arr [8]*conn
	devs := s.sessions.devices(user, arr[:0])
	if len(devs) == 0 || len(devs) == 1 && devs[0] == skip {
		return
	}
	var tmpl *codec.PushTemplate
	if op != nil {
		tmpl = op.tmpl
		if !op.tmplSet {
			op.tmplSet = true
			tmpl.Reset(messageFields(m))
		}
	} else {
		tmpl = new(codec.PushTemplate)
		tmpl.Reset(messageFields(m))
	}
	pushed := 0
	for _, d := range devs {
		if d == skip {
			continue
		}
		ser := d.ser
		if d.queue(src, func(b []byte) []byte { return tmpl.AppendFrame(b, ser, seq) }) {
			pushed++
		}
	}
	if pushed > 0 {
		s.metrics.pushes.Add(float64(pushed))
	}
}

// messageFields is m as the PUSH template takes it.
func messageFields(m *persist.Message) *codec.MessageFields {
	f := &codec.MessageFields{MsgID: m.ID, From: m.From, To: m.To, ClientMsgID: m.ClientMsgID, Kind: m.Kind, Body: m.Body, Time: m.Timestamp}
	if m.Group {
		f.GroupID = m.To
	}
	return f
}

// scratchPool holds decode buffers for requests run on workers (a loop
// has its own).
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func getScratch() *[]byte { return scratchPool.Get().(*[]byte) }

func putScratch(b *[]byte) {
	if cap(*b) <= 64<<10 {
		*b = (*b)[:0]
		scratchPool.Put(b)
	}
}
