package engine

import (
	"context"
	"errors"
	"net/netip"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
)

// The request core: every client command has one entry in routes, saying
// how it is decoded, where it may run and what it needs; the handlers it
// names are typed (a request in, a reply message or a *codec.Error out),
// and exec writes what they return, in one place.
//
// The hot commands (SEND, GROUP_SEND, PUSH_ACK, HEARTBEAT) have raw
// entries instead: they decode their body in place and answer themselves,
// so that the path of a message allocates nothing (no request is built or
// boxed for them).

// request is one decoded client request as a typed handler sees it. It
// lives for the handler's call only.
type request struct {
	ctx context.Context
	src *loop // the event loop it runs on, nil on a worker (see onLoop)
	c   *conn
	h   codec.Header
	msg proto.Message     // the decoded body (codec.DecodeRequest's type for h.Command)
	cs  persist.ChatStore // the chat seam, for routes with chat set
}

// handlerFunc runs a typed request. It returns the reply message (written
// by exec with the route's reply command and the request's seq) or the
// refusal (written as a non-fatal ERROR). A nil reply and a nil error mean
// there is nothing to write: the handler answered itself (LOGIN, RECALL,
// DELETE: their reply must be ordered with frames queued under a lock) or
// the command has no reply (TYPING).
type handlerFunc func(s *Server, r *request) (proto.Message, *codec.Error)

// rawFunc runs a request from its undecoded body (valid only during the
// call), answering it itself. src is the loop it runs on, nil on a worker.
type rawFunc func(s *Server, src *loop, c *conn, h codec.Header, body []byte)

// route is what the core knows of one command.
type route struct {
	run   handlerFunc   // the typed handler, or nil
	raw   rawFunc       // or the raw one
	reply codec.Command // what a reply from run is sent as

	open     bool // may be sent before the login (LOGIN, REGISTER, HEARTBEAT)
	anytime  bool // runs on the loop as soon as it arrives, never queued (HEARTBEAT)
	inline   bool // may run on the loop when the store never blocks
	async    bool // may run on the loop when the store appends asynchronously
	cursor   bool // may run on the loop when the store sets cursors asynchronously (PUSH_ACK)
	chat     bool // needs the chat seam (r.cs), else UNSUPPORTED
	closeOut bool // close the connection once the reply is written (LOGOUT)

	// password, when set, reports whether the request is a password
	// attempt, limited per source address (allowPasswordAttempt).
	password func(proto.Message) bool
}

// known reports whether the route is a command a client may send.
func (rt *route) known() bool { return rt.run != nil || rt.raw != nil }

// routes is the dispatch table, indexed by command; it is filled once by
// init and read-only afterwards. Commands without an entry are answered
// UNKNOWN_COMMAND (docs/protocol.md §2.4).
var routes [256]route

func init() {
	// The table is filled here, not in routes' initializer: handlers reach
	// exec again (a SEND moved to a worker), which would be an
	// initialization cycle.
	always := func(proto.Message) bool { return true }
	withPassword := func(m proto.Message) bool { return m.(*pb.LoginRequest).Password != "" }
	rs := map[codec.Command]route{
		codec.CmdHeartbeat: {raw: (*Server).execHeartbeat, open: true, anytime: true},
		codec.CmdRegister:  {run: (*Server).handleRegister, reply: codec.CmdRegisterOK, open: true, password: always},
		// A token LOGIN runs on the loop with a store that never blocks
		// (onFrame decides: only a password needs a worker).
		codec.CmdLogin:  {run: (*Server).handleLogin, open: true, password: withPassword},
		codec.CmdLogout: {run: (*Server).handleLogout, reply: codec.CmdLogoutOK, inline: true, closeOut: true},

		codec.CmdSend:      {raw: (*Server).handleSend, inline: true, async: true},
		codec.CmdGroupSend: {raw: (*Server).handleSend, inline: true, async: true},
		codec.CmdPushAck:   {raw: (*Server).execPushAck, inline: true, cursor: true},
		codec.CmdSync:      {run: (*Server).handleSync, reply: codec.CmdSyncOK, inline: true},

		codec.CmdGroupCreate:   {run: (*Server).handleGroupCreate, reply: codec.CmdGroupInfo, inline: true},
		codec.CmdGroupJoin:     {run: (*Server).handleGroup, reply: codec.CmdGroupInfo, inline: true},
		codec.CmdGroupLeave:    {run: (*Server).handleGroup, reply: codec.CmdGroupInfo, inline: true},
		codec.CmdGroupMembers:  {run: (*Server).handleGroup, reply: codec.CmdGroupInfo, inline: true},
		codec.CmdGroupAdd:      {run: (*Server).handleGroupMembers, reply: codec.CmdGroupInfo, inline: true},
		codec.CmdGroupRemove:   {run: (*Server).handleGroupMembers, reply: codec.CmdGroupInfo, inline: true},
		codec.CmdGroupTransfer: {run: (*Server).handleGroupTransfer, reply: codec.CmdGroupInfo, inline: true},
		codec.CmdGroupAdmin:    {run: (*Server).handleGroupAdmin, reply: codec.CmdGroupInfo, inline: true},
		codec.CmdGroups:        {run: (*Server).handleGroups, reply: codec.CmdGroupsOK, inline: true},
		codec.CmdPresence:      {run: (*Server).handlePresence, reply: codec.CmdPresenceOK, inline: true},

		codec.CmdConversations: {run: (*Server).handleConversations, reply: codec.CmdConversationsOK, inline: true, chat: true},
		codec.CmdRead:          {run: (*Server).handleRead, reply: codec.CmdReadOK, inline: true, chat: true},
		codec.CmdTyping:        {run: (*Server).handleTyping, inline: true},
		codec.CmdRecall:        {run: (*Server).handleChatEvent, inline: true, chat: true},
		codec.CmdDelete:        {run: (*Server).handleChatEvent, inline: true, chat: true},
		codec.CmdHistory:       {run: (*Server).handleHistory, reply: codec.CmdHistoryOK, inline: true, chat: true},
		codec.CmdReadCount:     {run: (*Server).handleReadCount, reply: codec.CmdReadCountOK, inline: true, chat: true},
	}
	for cmd, rt := range rs {
		routes[cmd] = rt
	}
}

// onLoop reports whether a request of command cmd may run on the event loop
// (see exec): with a store that never blocks, every route marked inline;
// with a store that takes appends asynchronously, those marked async (SEND
// and GROUP_SEND, whose handler passes the request to a worker if a lookup
// it needs could block), and PUSH_ACK when the store also takes cursor
// writes asynchronously (handlePushAck hands the cursor over and returns).
func (s *Server) onLoop(cmd codec.Command) bool {
	switch rt := &routes[cmd]; {
	case s.inline:
		return rt.inline
	case s.async != nil:
		return rt.async || (rt.cursor && s.cursors != nil)
	}
	return false
}

// handle runs one queued request on a worker goroutine. Requests of one
// connection arrive here one at a time, in order.
func (s *Server) handle(c *conn, t *task) { s.exec(nil, c, t.h, t.body, t.ip) }

// toWorker queues a request that started on the loop but needs a lookup
// that may block: it runs again, from the start, on a worker.
func (s *Server) toWorker(src *loop, c *conn, h codec.Header, body []byte) {
	t := getTask()
	t.h = h
	t.body = append(t.body[:0], body...)
	c.enqueue(src, t)
}

// exec decodes and runs one request of a command with a route. src is the
// event loop it runs on, nil on a worker; only calls that cannot block are
// made when src is set (see onLoop). body is valid only during the call.
func (s *Server) exec(src *loop, c *conn, h codec.Header, body []byte, ip netip.Addr) {
	rt := &routes[h.Command]
	if !rt.known() {
		// Queued behind a REGISTER or LOGIN (onFrame answers the others
		// at once): before a login every command is NOT_LOGGED_IN.
		if c.loggedIn() {
			c.replyError(src, h.Serializer, h.Seq, codec.CodeUnknownCommand, "unknown command "+h.Command.String(), 0)
		} else {
			c.fail(src, h.Serializer, h.Seq, codec.CodeNotLoggedIn, "log in first")
		}
		return
	}
	if rt.raw != nil {
		rt.raw(s, src, c, h, body)
		return
	}
	msg, err := codec.DecodeRequest(h.Serializer, h.Command, body)
	if err != nil {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeBadBody, err.Error(), 0)
		return
	}
	s.dispatch(src, c, h, msg, ip)
}

// dispatch runs a decoded request through its route's checks and typed
// handler, and writes the outcome.
func (s *Server) dispatch(src *loop, c *conn, h codec.Header, msg proto.Message, ip netip.Addr) {
	rt := &routes[h.Command]
	if rt.run == nil {
		// Only a raw command's own frames get here (a bug): answer anyway.
		c.replyError(src, h.Serializer, h.Seq, codec.CodeInternal, "no handler for "+h.Command.String(), 0)
		return
	}
	if rt.password != nil && rt.password(msg) {
		if e := s.allowPasswordAttempt(ip); e != nil {
			c.replyErr(src, h, e)
			return
		}
	}
	if !rt.open && !c.loggedIn() {
		// The LOGIN this request was queued behind failed.
		c.fail(src, h.Serializer, h.Seq, codec.CodeNotLoggedIn, "log in first")
		return
	}
	r := request{ctx: context.Background(), src: src, c: c, h: h, msg: msg}
	if src == nil {
		var cancel context.CancelFunc
		r.ctx, cancel = context.WithTimeout(r.ctx, requestTimeout)
		defer cancel()
	}
	if rt.chat {
		if r.cs = s.chatStore(); r.cs == nil {
			c.replyErr(src, h, errNoChat)
			return
		}
	}
	out, e := rt.run(s, &r)
	switch {
	case e != nil:
		c.replyErr(src, h, e)
	case out != nil:
		c.writeMsg(src, h.Serializer, rt.reply, h.Seq, out)
		if rt.closeOut {
			c.closeAfterFlush(src)
		}
	}
}

// replyErr answers request h with the non-fatal ERROR e.
func (c *conn) replyErr(src *loop, h codec.Header, e *codec.Error) {
	c.replyError(src, h.Serializer, h.Seq, e.Code, e.Message, e.RetryAfterMs)
}

// failure is the refusal of a request that failed with err: an Error as it
// is, anything else a store failure (storeFailure) described by what, or by
// the step an opError names.
func (s *Server) failure(c *conn, what string, err error) *codec.Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var op *opError
	if errors.As(err, &op) {
		what, err = op.what, op.err
	}
	return s.storeFailure(c, what, err)
}

// storeFailure logs a store call of c's request that failed and returns
// its refusal, classified by ErrorCode; nothing was acknowledged. Only a
// retryable code carries the retry hint: the store's ErrInvalid
// (INVALID_ARGUMENT) tells the client not to send the request again, and a
// wait beside it would say the opposite.
func (s *Server) storeFailure(c *conn, what string, err error) *codec.Error {
	user, _ := c.identity()
	s.log.Warn("store error", "what", what, "user", user, "err", err)
	e := &codec.Error{Code: ErrorCode(err), Message: what + ": " + err.Error()}
	if e.Code.Retryable() {
		e.RetryAfterMs = 200
	}
	return e
}
