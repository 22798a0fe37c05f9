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
	"google.golang.org/protobuf/proto"
)

// requestTimeout bounds the store work of one request run by a worker.
const requestTimeout = 10 * time.Second

// execHeartbeat answers a HEARTBEAT on the loop, logged in or not: it is
// never queued behind other requests, so a busy connection is not timed out.
func (s *Server) execHeartbeat(src *loop, c *conn, h codec.Header, body []byte) {
	if _, err := codec.DecodeHeartbeat(h.Serializer, body); err != nil {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeBadBody, err.Error(), 0)
		return
	}
	ms := now(src).UnixMilli()
	c.queue(src, func(b []byte) []byte { return codec.AppendHeartbeatOKFrame(b, h.Serializer, h.Seq, ms) })
}

// execPushAck runs a PUSH_ACK, decoded in place: every receiver sends these
// all the time. It has no reply. One that gets here before a successful
// login (queued behind a LOGIN that failed) is NOT_LOGGED_IN, fatal, like
// every other command (docs/protocol.md §4.3), not silently dropped.
func (s *Server) execPushAck(src *loop, c *conn, h codec.Header, body []byte) {
	upTo, err := codec.DecodePushAck(h.Serializer, body)
	if err != nil {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeBadBody, err.Error(), 0)
		return
	}
	if !c.loggedIn() {
		c.fail(src, h.Serializer, h.Seq, codec.CodeNotLoggedIn, "log in first")
		return
	}
	s.handlePushAck(src, c, upTo)
}

// handleLogout answers LOGOUT_OK; the route closes the connection once it
// is written. The session goes first, so no PUSH follows LOGOUT_OK.
func (s *Server) handleLogout(r *request) (proto.Message, *codec.Error) {
	s.sessions.remove(r.c)
	return &pb.Empty{}, nil
}

// allowPasswordAttempt applies the per-address limit on password attempts;
// a refused attempt is RATE_LIMITED (retryable after the wait).
func (s *Server) allowPasswordAttempt(ip netip.Addr) *codec.Error {
	ok, wait := s.logins.allow(ip, time.Now())
	if ok {
		return nil
	}
	s.metrics.logins.WithLabelValues("RATE_LIMITED").Inc()
	return &codec.Error{Code: codec.CodeRateLimited, Message: "too many password attempts from this address",
		RetryAfterMs: uint32(wait.Milliseconds()) + 1}
}

// handleRegister runs on a worker (it hashes the password).
func (s *Server) handleRegister(r *request) (proto.Message, *codec.Error) {
	req := r.msg.(*pb.RegisterRequest)
	if r.c.loggedIn() {
		return nil, &codec.Error{Code: codec.CodeAlreadyLoggedIn, Message: "already logged in"}
	}
	if !validID(req.User) {
		return nil, &codec.Error{Code: codec.CodeInvalidArgument, Message: "user must be 1..64 bytes of [A-Za-z0-9_.-]"}
	}
	if err := checkPassword(req.Password); err != nil {
		return nil, s.failure(r.c, "register", err)
	}
	if _, err := s.store.GetUser(r.ctx, req.User); err == nil {
		return nil, &codec.Error{Code: codec.CodeUserExists, Message: "user exists"}
	}
	hash, err := s.hash(r.ctx, func() (string, error) { return hashPassword(req.Password) })
	switch {
	case errors.Is(err, errHashBusy):
		return nil, errHashBusy
	case err != nil:
		return nil, &codec.Error{Code: codec.CodeInternal, Message: "hash password: " + err.Error()}
	}
	err = s.store.CreateUser(r.ctx, persist.User{ID: req.User, PasswordHash: hash, Created: time.Now().UnixMilli()})
	switch {
	case errors.Is(err, persist.ErrUserExists):
		return nil, &codec.Error{Code: codec.CodeUserExists, Message: "user exists"}
	case err != nil:
		return nil, s.storeFailure(r.c, "create user", err)
	}
	s.users.Store(req.User, struct{}{})
	return &pb.RegisterOK{User: req.User}, nil
}

// errHashBusy answers a password attempt that found every hashing slot
// taken until its deadline: the node is overloaded and the password was
// never checked, so it is BUSY (retryable), not AUTH_FAILED or INTERNAL.
var errHashBusy = &Error{Code: codec.CodeBusy, Message: "every password hashing slot stayed busy: try again", RetryAfterMs: 200}

// hash runs fn (a password hash) under the hashing semaphore. It returns
// errHashBusy if ctx ends before a slot frees up, else what fn returns.
func (s *Server) hash(ctx context.Context, fn func() (string, error)) (string, error) {
	select {
	case s.hashSem <- struct{}{}:
	case <-ctx.Done():
		return "", errHashBusy
	}
	defer func() { <-s.hashSem }()
	return fn()
}

// handleLogin runs on a worker, or on the loop (r.src) for a token login on
// a store that never blocks. It writes LOGIN_OK itself (under the
// connection's lock, with the session: see loginOK); every failure is
// counted by its code.
func (s *Server) handleLogin(r *request) (proto.Message, *codec.Error) {
	e := s.login(r)
	if e != nil {
		s.metrics.logins.WithLabelValues(e.Code.String()).Inc()
	}
	return nil, e
}

func (s *Server) login(r *request) *codec.Error {
	ctx, src, c, h, req := r.ctx, r.src, r.c, r.h, r.msg.(*pb.LoginRequest)
	if c.loggedIn() {
		return &codec.Error{Code: codec.CodeAlreadyLoggedIn, Message: "already logged in"}
	}
	if s.shutting.Load() {
		return &codec.Error{Code: codec.CodeShuttingDown, Message: "node is shutting down"}
	}
	if msg := loginArgs(req); msg != "" {
		return &codec.Error{Code: codec.CodeInvalidArgument, Message: msg}
	}
	user := req.User
	switch {
	case req.Token != "":
		if len(s.cfg.JWTSecret) == 0 {
			return &codec.Error{Code: codec.CodeAuthFailed, Message: "token login is not enabled on this node"}
		}
		sub, err := verifyToken(s.cfg.JWTSecret, req.Token)
		if errors.Is(err, errTokenExpired) {
			return &codec.Error{Code: codec.CodeTokenExpired, Message: err.Error()}
		}
		if err != nil {
			return &codec.Error{Code: codec.CodeAuthFailed, Message: err.Error()}
		}
		if user != "" && user != sub {
			return &codec.Error{Code: codec.CodeInvalidArgument, Message: "user does not match the token's subject"}
		}
		user = sub
		// An application's auth service vouches for the user: provision the
		// account on first login (it has no password, so password login
		// stays impossible).
		if err := s.ensureUser(ctx, user); errors.Is(err, errDisabled) {
			return errDisabled
		} else if err != nil {
			return s.storeFailure(c, "provision user", err)
		}
	default:
		u, err := s.store.GetUser(ctx, user)
		if errors.Is(err, persist.ErrNotFound) {
			return &codec.Error{Code: codec.CodeAuthFailed, Message: "unknown user or wrong password"}
		}
		if err != nil {
			return s.storeFailure(c, "read user", err)
		}
		if u.Disabled() {
			return errDisabled
		}
		var ok bool
		_, err = s.hash(ctx, func() (string, error) {
			var verr error
			ok, verr = verifyPassword(u.PasswordHash, req.Password)
			return "", verr
		})
		if errors.Is(err, errHashBusy) {
			return errHashBusy
		}
		if err != nil || !ok {
			return &codec.Error{Code: codec.CodeAuthFailed, Message: "unknown user or wrong password"}
		}
		s.users.Store(strings.Clone(user), struct{}{})
	}
	head, err := s.store.LastSeq(ctx, user)
	if err != nil {
		return s.storeFailure(c, "read inbox head", err)
	}
	cursor, err := s.store.Cursor(ctx, user, req.Device)
	if err != nil {
		return s.storeFailure(c, "read cursor", err)
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
		return nil // closed (timeout, peer gone) while logging in
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
		return nil
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
	return nil
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
	if src != nil && !s.inline && s.cursors != nil {
		// On the loop with a store that has a committer: hand the cursor
		// over and go on; the outcome arrives on the store's goroutine.
		// (A PUSH_ACK each second from every receiving connection used to
		// park one worker goroutine per connection until its batch synced,
		// and the wave of them woken together held the event loops up.)
		user, device := c.user, c.device
		s.cursors.SetCursorAsync(user, device, upTo, func(err error) {
			if err != nil {
				s.log.Warn("store cursor", "user", user, "device", device, "err", err)
				return
			}
			s.observeDelivered(user, device, upTo)
		})
		return
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

func (s *Server) handleSync(r *request) (proto.Message, *codec.Error) {
	req, user := r.msg.(*pb.SyncRequest), r.c.user
	limit := int(req.Limit)
	if limit <= 0 {
		limit = s.cfg.SyncLimit
	}
	if limit > s.cfg.SyncMaxLimit {
		limit = s.cfg.SyncMaxLimit
	}
	entries, err := s.store.ReadInbox(r.ctx, user, req.AfterSeq, limit+1)
	if err != nil {
		return nil, s.storeFailure(r.c, "read inbox", err)
	}
	head, err := s.store.LastSeq(r.ctx, user)
	if err != nil {
		return nil, s.storeFailure(r.c, "read inbox head", err)
	}
	out := &pb.SyncOK{HeadSeq: head, FirstSeq: s.removedBelow(r.ctx, user, req.AfterSeq, head, entries)}
	if len(entries) > limit {
		out.HasMore = true
		entries = entries[:limit]
	}
	out.Messages = make([]*pb.Message, len(entries))
	for i := range entries {
		out.Messages[i] = entryPB(&entries[i])
	}
	return out, nil
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

func (s *Server) handlePresence(r *request) (proto.Message, *codec.Error) {
	req := r.msg.(*pb.PresenceRequest)
	if len(req.Users) > 500 {
		return nil, &codec.Error{Code: codec.CodeInvalidArgument, Message: "at most 500 users per PRESENCE"}
	}
	for i, u := range req.Users {
		if !validID(u) {
			return nil, &codec.Error{Code: codec.CodeInvalidArgument, Message: "users[" + strconv.Itoa(i) + "] must be 1..64 bytes of [A-Za-z0-9_.-]"}
		}
	}
	out := &pb.PresenceOK{Users: make([]*pb.UserPresence, len(req.Users))}
	for i, u := range req.Users {
		p := s.presence(r.ctx, u)
		if !p.Online {
			// Offline or no such account: say which (a store error
			// leaves it "offline", the weaker claim).
			if exists, err := s.userExists(r.ctx, u); err == nil && !exists {
				p.Unknown = true
			}
		}
		out.Users[i] = p
	}
	return out, nil
}

// presence reports user's online devices (cluster-wide with a session
// store), sorted and without repeats.
func (s *Server) presence(ctx context.Context, user string) *pb.UserPresence {
	devs := s.presenceDevices(ctx, user)
	slices.Sort(devs)
	devs = slices.Compact(devs)
	return &pb.UserPresence{User: user, Online: len(devs) > 0, Devices: devs}
}
