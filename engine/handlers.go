package engine

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
)

// requestTimeout bounds the store work of one request run by a worker.
const requestTimeout = 10 * time.Second

// onLoop reports whether a request of command cmd may run on the event loop
// (see exec): with a store that never blocks, everything but REGISTER and
// LOGIN (onFrame runs a token LOGIN on the loop itself: only a password
// needs a worker); with a store that takes appends asynchronously, SEND and
// GROUP_SEND (whose handler passes the request to a worker if a lookup it
// needs could block).
func (s *Server) onLoop(cmd codec.Command) bool {
	switch {
	case s.inline:
		return cmd != codec.CmdRegister && cmd != codec.CmdLogin
	case s.async != nil:
		return cmd == codec.CmdSend || cmd == codec.CmdGroupSend
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

// exec decodes and runs one request. src is the event loop it runs on, nil
// on a worker; only calls that cannot block are made when src is set (see
// onLoop). body is valid only during the call.
func (s *Server) exec(src *loop, c *conn, h codec.Header, body []byte, ip netip.Addr) {
	switch h.Command {
	case codec.CmdSend, codec.CmdGroupSend:
		s.handleSend(src, c, h, body)
		return
	case codec.CmdPushAck:
		// Decoded in place: every receiver sends these all the time.
		upTo, err := codec.DecodePushAck(h.Serializer, body)
		if err != nil {
			c.replyError(src, h.Serializer, h.Seq, codec.CodeBadBody, err.Error(), 0)
			return
		}
		if c.loggedIn() {
			s.handlePushAck(src, c, upTo)
		}
		return
	}
	req, err := codec.DecodeRequest(h.Serializer, h.Command, body)
	if err != nil {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeBadBody, err.Error(), 0)
		return
	}
	ctx := context.Background()
	if src == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	switch req := req.(type) {
	case *pb.RegisterRequest:
		if s.allowPasswordAttempt(src, c, h, ip) {
			s.handleRegister(ctx, c, h, req)
		}
		return
	case *pb.LoginRequest:
		if req.Password == "" || s.allowPasswordAttempt(src, c, h, ip) {
			s.handleLogin(ctx, src, c, h, req)
		}
		return
	}
	if !c.loggedIn() {
		// The LOGIN this request was queued behind failed.
		c.fail(src, h.Serializer, h.Seq, codec.CodeNotLoggedIn, "log in first")
		return
	}
	switch req := req.(type) {
	case *pb.Empty: // LOGOUT
		c.writeMsg(src, h.Serializer, codec.CmdLogoutOK, h.Seq, &pb.Empty{})
		s.sessions.remove(c)
		c.closeAfterFlush(src)
	case *pb.SyncRequest:
		s.handleSync(ctx, src, c, h, req)
	case *pb.GroupCreateRequest:
		s.handleGroupCreate(ctx, src, c, h, req)
	case *pb.GroupRequest:
		s.handleGroup(ctx, src, c, h, req)
	case *pb.GroupMembersRequest:
		s.handleGroupChange(ctx, src, c, h, req.GroupId, groupOp{users: req.Users})
	case *pb.GroupTransferRequest:
		s.handleGroupChange(ctx, src, c, h, req.GroupId, groupOp{users: []string{req.User}})
	case *pb.GroupAdminRequest:
		s.handleGroupChange(ctx, src, c, h, req.GroupId, groupOp{users: []string{req.User}, admin: req.Admin})
	case *pb.GroupsRequest:
		s.handleGroups(ctx, src, c, h, req)
	case *pb.PresenceRequest:
		s.handlePresence(ctx, src, c, h, req)
	default:
		s.execChat(ctx, src, c, h, req)
	}
}

// allowPasswordAttempt applies the per-address limit on password attempts;
// a refused attempt is answered RATE_LIMITED (retryable after the wait).
func (s *Server) allowPasswordAttempt(src *loop, c *conn, h codec.Header, ip netip.Addr) bool {
	ok, wait := s.logins.allow(ip, time.Now())
	if !ok {
		s.metrics.logins.WithLabelValues("RATE_LIMITED").Inc()
		c.replyError(src, h.Serializer, h.Seq, codec.CodeRateLimited, "too many password attempts from this address", uint32(wait.Milliseconds())+1)
	}
	return ok
}

// handleRegister runs on a worker (it hashes the password).
func (s *Server) handleRegister(ctx context.Context, c *conn, h codec.Header, req *pb.RegisterRequest) {
	if c.loggedIn() {
		c.replyError(nil, h.Serializer, h.Seq, codec.CodeAlreadyLoggedIn, "already logged in", 0)
		return
	}
	if !validID(req.User) {
		c.replyError(nil, h.Serializer, h.Seq, codec.CodeInvalidArgument, "user must be 1..64 bytes of [A-Za-z0-9_.-]", 0)
		return
	}
	if err := checkPassword(req.Password); err != nil {
		s.replyFailure(nil, c, h, "register", err)
		return
	}
	if _, err := s.store.GetUser(ctx, req.User); err == nil {
		c.replyError(nil, h.Serializer, h.Seq, codec.CodeUserExists, "user exists", 0)
		return
	}
	hash, err := s.hash(ctx, func() (string, error) { return hashPassword(req.Password) })
	if err != nil {
		c.replyError(nil, h.Serializer, h.Seq, codec.CodeInternal, "hash password: "+err.Error(), 0)
		return
	}
	err = s.store.CreateUser(ctx, persist.User{ID: req.User, PasswordHash: hash, Created: time.Now().UnixMilli()})
	switch {
	case errors.Is(err, persist.ErrUserExists):
		c.replyError(nil, h.Serializer, h.Seq, codec.CodeUserExists, "user exists", 0)
	case err != nil:
		s.storeError(nil, c, h, "create user", err)
	default:
		s.users.Store(req.User, struct{}{})
		c.writeMsg(nil, h.Serializer, codec.CmdRegisterOK, h.Seq, &pb.RegisterOK{User: req.User})
	}
}

// hash runs fn (a password hash) under the hashing semaphore.
func (s *Server) hash(ctx context.Context, fn func() (string, error)) (string, error) {
	select {
	case s.hashSem <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-s.hashSem }()
	return fn()
}

// handleLogin runs on a worker, or on the loop (src) for a token login on a
// store that never blocks.
func (s *Server) handleLogin(ctx context.Context, src *loop, c *conn, h codec.Header, req *pb.LoginRequest) {
	fail := func(code codec.ErrorCode, msg string) {
		s.metrics.logins.WithLabelValues(code.String()).Inc()
		c.replyError(src, h.Serializer, h.Seq, code, msg, 0)
	}
	if c.loggedIn() {
		s.metrics.logins.WithLabelValues("ALREADY_LOGGED_IN").Inc()
		c.replyError(src, h.Serializer, h.Seq, codec.CodeAlreadyLoggedIn, "already logged in", 0)
		return
	}
	if s.shutting.Load() {
		fail(codec.CodeShuttingDown, "node is shutting down")
		return
	}
	if msg := loginArgs(req); msg != "" {
		fail(codec.CodeInvalidArgument, msg)
		return
	}
	user := req.User
	switch {
	case req.Token != "":
		if len(s.cfg.JWTSecret) == 0 {
			fail(codec.CodeAuthFailed, "token login is not enabled on this node")
			return
		}
		sub, err := verifyToken(s.cfg.JWTSecret, req.Token)
		if errors.Is(err, errTokenExpired) {
			fail(codec.CodeTokenExpired, err.Error())
			return
		}
		if err != nil {
			fail(codec.CodeAuthFailed, err.Error())
			return
		}
		if user != "" && user != sub {
			fail(codec.CodeInvalidArgument, "user does not match the token's subject")
			return
		}
		user = sub
		// An application's auth service vouches for the user: provision the
		// account on first login (it has no password, so password login
		// stays impossible).
		if err := s.ensureUser(ctx, user); errors.Is(err, errDisabled) {
			fail(codec.CodeAuthFailed, "account disabled")
			return
		} else if err != nil {
			s.metrics.logins.WithLabelValues("STORE_UNAVAILABLE").Inc()
			s.storeError(src, c, h, "provision user", err)
			return
		}
	default:
		u, err := s.store.GetUser(ctx, user)
		if errors.Is(err, persist.ErrNotFound) {
			fail(codec.CodeAuthFailed, "unknown user or wrong password")
			return
		}
		if err != nil {
			s.storeError(src, c, h, "read user", err)
			return
		}
		if u.Disabled() {
			fail(codec.CodeAuthFailed, "account disabled")
			return
		}
		var ok bool
		_, err = s.hash(ctx, func() (string, error) {
			var verr error
			ok, verr = verifyPassword(u.PasswordHash, req.Password)
			return "", verr
		})
		if err != nil || !ok {
			fail(codec.CodeAuthFailed, "unknown user or wrong password")
			return
		}
		s.users.Store(strings.Clone(user), struct{}{})
	}
	head, err := s.store.LastSeq(ctx, user)
	if err != nil {
		s.storeError(src, c, h, "read inbox head", err)
		return
	}
	cursor, err := s.store.Cursor(ctx, user, req.Device)
	if err != nil {
		s.storeError(src, c, h, "read cursor", err)
		return
	}
	hb := s.heartbeatInterval()
	// The identity is written under mu so that OnClose and the timeout
	// scan, which may run at the same moment, read it safely.
	c.mu.Lock()
	c.user, c.device, c.ser = user, req.Device, h.Serializer
	c.hbSec = uint16(min(hb/time.Second, 65535))
	c.mu.Unlock()
	c.cursor.Store(cursor)
	c.lastRecv.Store(now(src).UnixNano()) // the idle timer starts at the login
	if !c.state.CompareAndSwap(stateNew, stateLoggedIn) {
		return // closed (timeout, peer gone) while logging in
	}
	// The session becomes visible to senders and LOGIN_OK is queued under
	// the connection's lock, so no PUSH can overtake LOGIN_OK, and every
	// message stored from now on is pushed to this connection.
	var old *conn
	var encErr error
	idle := s.idleTimeout(c)
	c.queue(src, func(b []byte) []byte {
		old = s.sessions.add(c)
		out, err := codec.AppendFrame(b, h.Serializer, codec.CmdLoginOK, 0, h.Seq, &pb.LoginOK{
			User: user, Device: req.Device, NodeId: s.cfg.NodeID, SessionId: c.id, HeadSeq: head, Cursor: cursor,
			HeartbeatMs: uint32(hb.Milliseconds()), ServerTime: time.Now().UnixMilli(), IdleTimeoutMs: uint32(min(idle.Milliseconds(), 1<<32-1)),
		})
		if err != nil {
			encErr = err
			out, _ = codec.AppendFrame(b, h.Serializer, codec.CmdError, 0, h.Seq, errorMsg(codec.CodeInternal, "the server could not encode its login_ok reply", false, 0))
		}
		return out
	})
	if encErr != nil {
		// Never silence: the client got ERROR INTERNAL instead, and the
		// connection is back to not logged in (its LOGIN failed).
		s.sessions.remove(c)
		c.state.CompareAndSwap(stateLoggedIn, stateNew)
		s.metrics.encodeErrors.Inc()
		s.metrics.countError(codec.CodeInternal)
		s.log.Error("encode login_ok; answered INTERNAL", "err", encErr)
		return
	}
	if old != nil {
		old.kick(src, codec.CodeKickDuplicateLogin, "the same user and device logged in on another connection")
	}
	s.publishRoute(ctx, c)
	if c.state.Load() != stateLoggedIn {
		// Closed while logging in (timeout, peer gone): undo.
		s.sessions.remove(c)
	}
	s.metrics.logins.WithLabelValues("OK").Inc()
}

// loginArgs checks a LOGIN's fields (docs/protocol.md §4.3) and returns
// what is wrong with them, or "". A password outside 6..128 bytes can
// match no account (REGISTER refuses it), so it is refused before any
// store read or hashing.
func loginArgs(req *pb.LoginRequest) string {
	switch {
	case !validID(req.Device):
		return "device must be 1..64 bytes of [A-Za-z0-9_.-]"
	case req.Token != "" && req.Password != "":
		return "give a password or a token, not both"
	case req.Token == "" && req.Password == "":
		return "give a password or a token"
	case req.User != "" && !validID(req.User):
		return "user must be 1..64 bytes of [A-Za-z0-9_.-]"
	case req.Password != "" && req.User == "":
		return "user is required with a password"
	case req.Password != "" && (len(req.Password) < 6 || len(req.Password) > 128):
		return "password must be 6..128 bytes"
	}
	return ""
}

// ensureUser makes sure user exists in the store, and returns errDisabled
// for a disabled account. It reads the account every time (a disabled
// account must not log in with a token it was given before), which is also
// cheaper than the write that provisions a new one.
func (s *Server) ensureUser(ctx context.Context, user string) error {
	u, err := s.store.GetUser(ctx, user)
	if err == nil {
		if u.Disabled() {
			return errDisabled
		}
		return nil
	}
	if !errors.Is(err, persist.ErrNotFound) {
		return err
	}
	err = s.store.CreateUser(ctx, persist.User{ID: user, Created: time.Now().UnixMilli()})
	if err != nil && !errors.Is(err, persist.ErrUserExists) {
		return err
	}
	// Not cached: while the user is online userExists finds them in the
	// session map, and caching every login would cost ~100 bytes per
	// connection for ever.
	return nil
}

// userKnown reports whether user is known to exist without asking the
// store: online here, or cached.
func (s *Server) userKnown(user string) bool {
	if s.sessions.online(user) {
		return true
	}
	_, ok := s.users.Load(user)
	return ok
}

// userExists reports whether user is an account, from the cache or the store.
// user may point into a request buffer (the send path decodes in place):
// the cache keeps its own copy.
func (s *Server) userExists(ctx context.Context, user string) (bool, error) {
	if s.userKnown(user) {
		return true, nil
	}
	_, err := s.store.GetUser(ctx, user)
	if errors.Is(err, persist.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	s.users.Store(strings.Clone(user), struct{}{})
	return true, nil
}

// storeError answers a request whose store call failed: retryable, nothing
// acknowledged.
func (s *Server) storeError(src *loop, c *conn, h codec.Header, what string, err error) {
	code := ErrorCode(err)
	user, _ := c.identity()
	s.log.Warn("store error", "what", what, "user", user, "err", err)
	c.replyError(src, h.Serializer, h.Seq, code, what+": "+err.Error(), 200)
}

func (s *Server) handlePushAck(src *loop, c *conn, upTo uint64) {
	for {
		cur := c.cursor.Load()
		if upTo <= cur {
			return
		}
		if c.cursor.CompareAndSwap(cur, upTo) {
			break
		}
	}
	ctx := context.Background()
	if src == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	if err := s.store.SetCursor(ctx, c.user, c.device, upTo); err != nil {
		// A lost cursor only means messages are offered again, and clients
		// drop seqs they have shown; no reply exists for PUSH_ACK.
		s.log.Warn("store cursor", "user", c.user, "device", c.device, "err", err)
		return
	}
	s.observeDelivered(c.user, c.device, upTo)
}

func (s *Server) handleSync(ctx context.Context, src *loop, c *conn, h codec.Header, req *pb.SyncRequest) {
	limit := int(req.Limit)
	if limit <= 0 {
		limit = s.cfg.SyncLimit
	}
	if limit > s.cfg.SyncMaxLimit {
		limit = s.cfg.SyncMaxLimit
	}
	entries, err := s.store.ReadInbox(ctx, c.user, req.AfterSeq, limit+1)
	if err != nil {
		s.storeError(src, c, h, "read inbox", err)
		return
	}
	head, err := s.store.LastSeq(ctx, c.user)
	if err != nil {
		s.storeError(src, c, h, "read inbox head", err)
		return
	}
	out := &pb.SyncOK{HeadSeq: head, FirstSeq: s.removedBelow(ctx, c.user, req.AfterSeq, head, entries)}
	if len(entries) > limit {
		out.HasMore = true
		entries = entries[:limit]
	}
	out.Messages = make([]*pb.Message, len(entries))
	for i := range entries {
		out.Messages[i] = entryPB(&entries[i])
	}
	c.writeMsg(src, h.Serializer, codec.CmdSyncOK, h.Seq, out)
}

// removedBelow returns SyncOK.first_seq for a page read after afterSeq:
// the inbox's first kept seq when retention removed seqs after afterSeq,
// else 0. An inbox is a gap-free run from its first kept seq (see
// persist.Retention), so a page starting above afterSeq+1 starts there; an
// empty page below head means everything after afterSeq was removed, and
// the store says where the inbox starts now. A failure to read it leaves
// the field out: the page itself is still right.
func (s *Server) removedBelow(ctx context.Context, user string, afterSeq, head uint64, entries []persist.InboxEntry) uint64 {
	if len(entries) > 0 {
		if first := entries[0].Seq; first > afterSeq+1 {
			return first
		}
		return 0
	}
	r, ok := s.store.(persist.Retainer)
	if !ok || head <= afterSeq {
		return 0
	}
	first, err := r.FirstSeq(ctx, user)
	if err != nil || first <= afterSeq+1 {
		return 0
	}
	return first
}

// toPB is a stored message as SYNC_OK carries it. Strings are valid UTF-8
// since requests are checked at decode; a message stored before that was
// enforced gets its invalid bytes replaced, so that a SYNC over it is still
// answered in every serializer (the Protobuf encoder refuses invalid UTF-8).
func toPB(seq uint64, m *persist.Message) *pb.Message {
	pm := &pb.Message{Seq: seq, MsgId: m.ID, From: validText(m.From), To: validText(m.To), ClientMsgId: validText(m.ClientMsgID),
		Kind: m.Kind, Body: m.Body, Time: m.Timestamp, Event: m.Event, TargetMsgId: m.Target, Recalled: m.Recalled}
	if m.Group {
		pm.GroupId = pm.To
	}
	return pm
}

// validText returns s, or s with every invalid UTF-8 sequence replaced by
// U+FFFD. It allocates only for invalid s.
func validText(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func (s *Server) handlePresence(ctx context.Context, src *loop, c *conn, h codec.Header, req *pb.PresenceRequest) {
	if len(req.Users) > 500 {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeInvalidArgument, "at most 500 users per PRESENCE", 0)
		return
	}
	for i, u := range req.Users {
		if !validID(u) {
			c.replyError(src, h.Serializer, h.Seq, codec.CodeInvalidArgument, "users["+strconv.Itoa(i)+"] must be 1..64 bytes of [A-Za-z0-9_.-]", 0)
			return
		}
	}
	out := &pb.PresenceOK{Users: make([]*pb.UserPresence, len(req.Users))}
	for i, u := range req.Users {
		p := s.presence(ctx, u)
		if !p.Online {
			// Offline or no such account: say which (a store error
			// leaves it "offline", the weaker claim).
			if exists, err := s.userExists(ctx, u); err == nil && !exists {
				p.Unknown = true
			}
		}
		out.Users[i] = p
	}
	c.writeMsg(src, h.Serializer, codec.CmdPresenceOK, h.Seq, out)
}

// presence reports user's online devices (cluster-wide with a session
// store), sorted and without repeats.
func (s *Server) presence(ctx context.Context, user string) *pb.UserPresence {
	devs := s.presenceDevices(ctx, user)
	slices.Sort(devs)
	devs = slices.Compact(devs)
	return &pb.UserPresence{User: user, Online: len(devs) > 0, Devices: devs}
}
