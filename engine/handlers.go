package engine

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
)

// requestTimeout bounds the store work of one request.
const requestTimeout = 10 * time.Second

// handle runs one request on a worker goroutine. Requests of one connection
// arrive here one at a time, in order.
func (s *Server) handle(c *conn, t task) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	h := t.h
	switch req := t.req.(type) {
	case *pb.RegisterRequest:
		if s.allowPasswordAttempt(c, t) {
			s.handleRegister(ctx, c, h, req)
		}
		return
	case *pb.LoginRequest:
		if req.Password == "" || s.allowPasswordAttempt(c, t) {
			s.handleLogin(ctx, c, h, req)
		}
		return
	}
	if !c.loggedIn() {
		// The LOGIN this request was queued behind failed.
		c.fail(h.Serializer, h.Seq, codec.CodeNotLoggedIn, "log in first")
		return
	}
	switch req := t.req.(type) {
	case *pb.Empty: // LOGOUT
		c.writeMsg(h.Serializer, codec.CmdLogoutOK, h.Seq, &pb.Empty{})
		s.sessions.remove(c)
		c.closeAfterFlush()
	case *pb.SendRequest:
		s.handleSend(ctx, c, h, req)
	case *pb.GroupSendRequest:
		s.handleGroupSend(ctx, c, h, req)
	case *pb.PushAck:
		s.handlePushAck(ctx, c, req)
	case *pb.SyncRequest:
		s.handleSync(ctx, c, h, req)
	case *pb.GroupCreateRequest:
		s.handleGroupCreate(ctx, c, h, req)
	case *pb.GroupRequest:
		s.handleGroup(ctx, c, h, req)
	case *pb.PresenceRequest:
		s.handlePresence(ctx, c, h, req)
	}
}

// allowPasswordAttempt applies the per-address limit on password attempts;
// a refused attempt is answered RATE_LIMITED (retryable after the wait).
func (s *Server) allowPasswordAttempt(c *conn, t task) bool {
	ok, wait := s.logins.allow(t.ip, time.Now())
	if !ok {
		s.metrics.logins.WithLabelValues("RATE_LIMITED").Inc()
		c.replyError(t.h.Serializer, t.h.Seq, codec.CodeRateLimited, "too many password attempts from this address", uint32(wait.Milliseconds())+1)
	}
	return ok
}

func (s *Server) handleRegister(ctx context.Context, c *conn, h codec.Header, req *pb.RegisterRequest) {
	if c.loggedIn() {
		c.replyError(h.Serializer, h.Seq, codec.CodeAlreadyLoggedIn, "already logged in", 0)
		return
	}
	if !validID(req.User) {
		c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "user must be 1..64 bytes of [A-Za-z0-9_.-]", 0)
		return
	}
	if len(req.Password) < 6 || len(req.Password) > 128 {
		c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "password must be 6..128 bytes", 0)
		return
	}
	if _, err := s.store.GetUser(ctx, req.User); err == nil {
		c.replyError(h.Serializer, h.Seq, codec.CodeUserExists, "user exists", 0)
		return
	}
	hash, err := s.hash(ctx, func() (string, error) { return hashPassword(req.Password) })
	if err != nil {
		c.replyError(h.Serializer, h.Seq, codec.CodeInternal, "hash password: "+err.Error(), 0)
		return
	}
	err = s.store.CreateUser(ctx, persist.User{ID: req.User, PasswordHash: hash, Created: time.Now().UnixMilli()})
	switch {
	case errors.Is(err, persist.ErrUserExists):
		c.replyError(h.Serializer, h.Seq, codec.CodeUserExists, "user exists", 0)
	case err != nil:
		s.storeError(c, h, "create user", err)
	default:
		s.users.Store(req.User, struct{}{})
		c.writeMsg(h.Serializer, codec.CmdRegisterOK, h.Seq, &pb.RegisterOK{User: req.User})
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

func (s *Server) handleLogin(ctx context.Context, c *conn, h codec.Header, req *pb.LoginRequest) {
	fail := func(code codec.ErrorCode, msg string) {
		s.metrics.logins.WithLabelValues(code.String()).Inc()
		c.replyError(h.Serializer, h.Seq, code, msg, 0)
	}
	if c.loggedIn() {
		s.metrics.logins.WithLabelValues("ALREADY_LOGGED_IN").Inc()
		c.replyError(h.Serializer, h.Seq, codec.CodeAlreadyLoggedIn, "already logged in", 0)
		return
	}
	if s.shutting.Load() {
		fail(codec.CodeShuttingDown, "node is shutting down")
		return
	}
	if !validID(req.Device) {
		fail(codec.CodeInvalidArgument, "device must be 1..64 bytes of [A-Za-z0-9_.-]")
		return
	}
	user := req.User
	switch {
	case req.Token != "" && req.Password != "":
		fail(codec.CodeInvalidArgument, "give a password or a token, not both")
		return
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
		if err := s.ensureUser(ctx, user); err != nil {
			s.metrics.logins.WithLabelValues("STORE_UNAVAILABLE").Inc()
			s.storeError(c, h, "provision user", err)
			return
		}
	default:
		if !validID(user) {
			fail(codec.CodeAuthFailed, "unknown user or wrong password")
			return
		}
		u, err := s.store.GetUser(ctx, user)
		if errors.Is(err, persist.ErrNotFound) {
			fail(codec.CodeAuthFailed, "unknown user or wrong password")
			return
		}
		if err != nil {
			s.storeError(c, h, "read user", err)
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
		s.users.Store(user, struct{}{})
	}
	head, err := s.store.LastSeq(ctx, user)
	if err != nil {
		s.storeError(c, h, "read inbox head", err)
		return
	}
	cursor, err := s.store.Cursor(ctx, user, req.Device)
	if err != nil {
		s.storeError(c, h, "read cursor", err)
		return
	}
	c.user, c.device, c.ser = user, req.Device, h.Serializer
	c.cursor.Store(cursor)
	if !c.state.CompareAndSwap(stateNew, stateLoggedIn) {
		return // closed (timeout, peer gone) while logging in
	}
	// The session becomes visible to senders and LOGIN_OK is queued under
	// the connection's lock, so no PUSH can overtake LOGIN_OK, and every
	// message stored from now on is pushed to this connection.
	var old *conn
	c.writeMsgThen(h.Serializer, codec.CmdLoginOK, h.Seq, &pb.LoginOK{
		User: user, Device: req.Device, NodeId: s.cfg.NodeID, SessionId: c.id, HeadSeq: head, Cursor: cursor,
		HeartbeatMs: uint32(s.cfg.HeartbeatInterval.Milliseconds()), ServerTime: time.Now().UnixMilli(),
	}, func() { old = s.sessions.add(c) })
	if old != nil {
		old.kick(codec.CodeKickDuplicateLogin, "the same user and device logged in on another connection")
	}
	s.publishRoute(ctx, c)
	if c.state.Load() != stateLoggedIn {
		// Closed while logging in (timeout, peer gone): undo.
		s.sessions.remove(c)
	}
	s.metrics.logins.WithLabelValues("OK").Inc()
}

// ensureUser makes sure user exists in the store.
func (s *Server) ensureUser(ctx context.Context, user string) error {
	if _, ok := s.users.Load(user); ok {
		return nil
	}
	err := s.store.CreateUser(ctx, persist.User{ID: user, Created: time.Now().UnixMilli()})
	if err != nil && !errors.Is(err, persist.ErrUserExists) {
		return err
	}
	// Not cached: while the user is online userExists finds them in the
	// session map, and caching every login would cost ~100 bytes per
	// connection for ever.
	return nil
}

// userExists reports whether user is an account, from the cache or the store.
func (s *Server) userExists(ctx context.Context, user string) (bool, error) {
	if s.sessions.online(user) {
		return true, nil
	}
	if _, ok := s.users.Load(user); ok {
		return true, nil
	}
	_, err := s.store.GetUser(ctx, user)
	if errors.Is(err, persist.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	s.users.Store(user, struct{}{})
	return true, nil
}

// storeError answers a request whose store call failed: retryable, nothing
// acknowledged.
func (s *Server) storeError(c *conn, h codec.Header, what string, err error) {
	code := codec.CodeStoreUnavailable
	switch {
	case errors.Is(err, ErrForward):
		code = codec.CodeForwardFailed
	case errors.Is(err, persist.ErrInvalid):
		code = codec.CodeInvalidArgument
	case errors.Is(err, persist.ErrClosed):
		code = codec.CodeShuttingDown
	}
	s.log.Warn("store error", "what", what, "user", c.user, "err", err)
	c.replyError(h.Serializer, h.Seq, code, what+": "+err.Error(), 200)
}

// allowSend applies the per-user token bucket; when the bucket is empty it
// answers RATE_LIMITED with the wait and returns false.
func (s *Server) allowSend(c *conn, h codec.Header) bool {
	lim := s.sessions.limiter(c.user, s.newLimiter)
	if lim == nil {
		return true
	}
	r := lim.Reserve()
	if d := r.Delay(); d > 0 {
		r.Cancel()
		ms := uint32(d.Milliseconds()) + 1
		c.replyError(h.Serializer, h.Seq, codec.CodeRateLimited, "send rate exceeded", ms)
		return false
	}
	return true
}

func validMsgID(id string) bool { return len(id) > 0 && len(id) <= 64 }

func (s *Server) handleSend(ctx context.Context, c *conn, h codec.Header, req *pb.SendRequest) {
	start := time.Now()
	if !validMsgID(req.ClientMsgId) {
		c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "client_msg_id must be 1..64 bytes", 0)
		return
	}
	if !validID(req.To) {
		c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "to must be a user id", 0)
		return
	}
	if !s.allowSend(c, h) {
		return
	}
	ok, err := s.userExists(ctx, req.To)
	if err != nil {
		s.storeError(c, h, "read recipient", err)
		return
	}
	if !ok {
		c.replyError(h.Serializer, h.Seq, codec.CodeUnknownRecipient, "no such user: "+req.To, 0)
		return
	}
	msg := persist.Message{ID: s.ids.next(), From: c.user, To: req.To, ClientMsgID: req.ClientMsgId,
		Timestamp: start.UnixMilli(), Kind: req.Kind, Body: req.Body}
	inboxes := []string{c.user, req.To}
	if req.To == c.user {
		inboxes = inboxes[:1]
	}
	res, ok := s.appendMessage(ctx, c, h, msg, inboxes)
	if !ok {
		return
	}
	s.ackAndDeliver(c, h, res, inboxes, start)
}

// ackAndDeliver answers a stored send (inboxes[0] is the sender's inbox, so
// res.Seqs[0] is the ack's seq) and pushes the message to every inbox's
// online devices. It pushes even on a duplicate: the first attempt may have
// stored the message and died before pushing; clients drop seqs they have
// shown.
func (s *Server) ackAndDeliver(c *conn, h codec.Header, res persist.AppendResult, inboxes []string, start time.Time) {
	c.writeMsg(h.Serializer, codec.CmdSendAck, h.Seq, &pb.SendAck{ClientMsgId: res.Msg.ClientMsgID, MsgId: res.Msg.ID,
		Seq: res.Seqs[0], Time: res.Msg.Timestamp, Duplicate: res.Duplicate})
	s.deliver(&res.Msg, inboxes, res.Seqs, c)
	s.metrics.pushLatency.Observe(time.Since(start).Seconds())
}

// appendMessage stores msg in inboxes, answering the request on failure.
func (s *Server) appendMessage(ctx context.Context, c *conn, h codec.Header, msg persist.Message, inboxes []string) (persist.AppendResult, bool) {
	res, err := s.appendInboxes(ctx, msg, inboxes)
	if err != nil {
		s.storeError(c, h, "append", err)
		return res, false
	}
	if !res.Duplicate {
		s.metrics.messages.Inc()
	}
	return res, true
}

// pushTo pushes the message at seq of user's inbox to every device of user
// online on this node. The frame is encoded once per serializer in use.
//
// skip (may be nil) is not pushed: the connection that sent the message has
// its SEND_ACK instead.
func (s *Server) pushTo(user string, seq uint64, m *persist.Message, skip *conn) {
	var arr [8]*conn
	devs := s.sessions.devices(user, arr[:0])
	if len(devs) == 0 || len(devs) == 1 && devs[0] == skip {
		return
	}
	push := &pb.Push{Messages: []*pb.Message{toPB(seq, m)}}
	// Bodies are encoded into pooled buffers: writeRaw copies them into
	// each connection's queue.
	var bodies [4]*codec.Buffer
	defer func() {
		for _, b := range bodies {
			if b != nil {
				codec.PutBuffer(b)
			}
		}
	}()
	for _, d := range devs {
		if d == skip {
			continue
		}
		ser := d.ser
		if bodies[ser] == nil {
			enc, err := codec.Lookup(ser)
			if err != nil {
				continue
			}
			b := codec.GetBuffer()
			if b.B, err = enc.Append(b.B[:0], push); err != nil {
				codec.PutBuffer(b)
				s.log.Error("encode push", "err", err)
				continue
			}
			bodies[ser] = b
		}
		if d.writeRaw(ser, codec.CmdPush, 0, bodies[ser].B) {
			s.metrics.pushes.Inc()
		}
	}
}

func toPB(seq uint64, m *persist.Message) *pb.Message {
	pm := &pb.Message{Seq: seq, MsgId: m.ID, From: m.From, To: m.To, ClientMsgId: m.ClientMsgID, Kind: m.Kind, Body: m.Body, Time: m.Timestamp}
	if m.Group {
		pm.GroupId = m.To
	}
	return pm
}

func (s *Server) handleGroupSend(ctx context.Context, c *conn, h codec.Header, req *pb.GroupSendRequest) {
	start := time.Now()
	if !validMsgID(req.ClientMsgId) {
		c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "client_msg_id must be 1..64 bytes", 0)
		return
	}
	if !s.allowSend(c, h) {
		return
	}
	g, ok := s.loadGroup(ctx, c, h, req.GroupId)
	if !ok {
		return
	}
	if _, member := slices.BinarySearch(g.Members, c.user); !member {
		c.replyError(h.Serializer, h.Seq, codec.CodeNotGroupMember, "not a member of "+g.ID, 0)
		return
	}
	// The sender's inbox comes first so res.Seqs[0] is the ack's seq.
	inboxes := make([]string, 0, len(g.Members))
	inboxes = append(inboxes, c.user)
	for _, m := range g.Members {
		if m != c.user {
			inboxes = append(inboxes, m)
		}
	}
	msg := persist.Message{ID: s.ids.next(), From: c.user, To: g.ID, Group: true, ClientMsgID: req.ClientMsgId,
		Timestamp: start.UnixMilli(), Kind: req.Kind, Body: req.Body}
	res, ok := s.appendMessage(ctx, c, h, msg, inboxes)
	if !ok {
		return
	}
	s.ackAndDeliver(c, h, res, inboxes, start)
}

func (s *Server) loadGroup(ctx context.Context, c *conn, h codec.Header, id string) (persist.Group, bool) {
	if !validID(id) {
		c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "group_id must be a group id", 0)
		return persist.Group{}, false
	}
	g, err := s.store.GetGroup(ctx, id)
	if errors.Is(err, persist.ErrNotFound) {
		c.replyError(h.Serializer, h.Seq, codec.CodeUnknownGroup, "no such group: "+id, 0)
		return g, false
	}
	if err != nil {
		s.storeError(c, h, "read group", err)
		return g, false
	}
	return g, true
}

func (s *Server) handlePushAck(ctx context.Context, c *conn, req *pb.PushAck) {
	for {
		cur := c.cursor.Load()
		if req.UpToSeq <= cur {
			return
		}
		if c.cursor.CompareAndSwap(cur, req.UpToSeq) {
			break
		}
	}
	if err := s.store.SetCursor(ctx, c.user, c.device, req.UpToSeq); err != nil {
		// A lost cursor only means messages are offered again, and clients
		// drop seqs they have shown; no reply exists for PUSH_ACK.
		s.log.Warn("store cursor", "user", c.user, "device", c.device, "err", err)
	}
}

func (s *Server) handleSync(ctx context.Context, c *conn, h codec.Header, req *pb.SyncRequest) {
	limit := int(req.Limit)
	if limit <= 0 {
		limit = s.cfg.SyncLimit
	}
	if limit > s.cfg.SyncMaxLimit {
		limit = s.cfg.SyncMaxLimit
	}
	entries, err := s.store.ReadInbox(ctx, c.user, req.AfterSeq, limit+1)
	if err != nil {
		s.storeError(c, h, "read inbox", err)
		return
	}
	head, err := s.store.LastSeq(ctx, c.user)
	if err != nil {
		s.storeError(c, h, "read inbox head", err)
		return
	}
	out := &pb.SyncOK{HeadSeq: head}
	if len(entries) > limit {
		out.HasMore = true
		entries = entries[:limit]
	}
	out.Messages = make([]*pb.Message, len(entries))
	for i := range entries {
		out.Messages[i] = toPB(entries[i].Seq, &entries[i].Msg)
	}
	c.writeMsg(h.Serializer, codec.CmdSyncOK, h.Seq, out)
}

func (s *Server) handleGroupCreate(ctx context.Context, c *conn, h codec.Header, req *pb.GroupCreateRequest) {
	if len(req.Name) > 128 {
		c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "name must be at most 128 bytes", 0)
		return
	}
	members := append([]string{c.user}, req.Members...)
	slices.Sort(members)
	members = slices.Compact(members)
	if len(members) > s.cfg.MaxGroupSize {
		c.replyError(h.Serializer, h.Seq, codec.CodeGroupFull, "more members than the maximum group size "+strconv.Itoa(s.cfg.MaxGroupSize), 0)
		return
	}
	for _, m := range members {
		if !validID(m) {
			c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "bad member id", 0)
			return
		}
		ok, err := s.userExists(ctx, m)
		if err != nil {
			s.storeError(c, h, "read member", err)
			return
		}
		if !ok {
			c.replyError(h.Serializer, h.Seq, codec.CodeUnknownRecipient, "no such user: "+m, 0)
			return
		}
	}
	g := persist.Group{ID: "g" + strconv.FormatUint(s.ids.next(), 36), Name: req.Name, Owner: c.user, Members: members, Created: time.Now().UnixMilli()}
	if err := s.store.CreateGroup(ctx, g); err != nil {
		s.storeError(c, h, "create group", err)
		return
	}
	c.writeMsg(h.Serializer, codec.CmdGroupInfo, h.Seq, groupInfo(g))
}

func groupInfo(g persist.Group) *pb.GroupInfo {
	return &pb.GroupInfo{GroupId: g.ID, Name: g.Name, Owner: g.Owner, Members: g.Members}
}

func (s *Server) handleGroup(ctx context.Context, c *conn, h codec.Header, req *pb.GroupRequest) {
	if !validID(req.GroupId) {
		c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "group_id must be a group id", 0)
		return
	}
	var err error
	switch h.Command {
	case codec.CmdGroupJoin:
		err = s.store.AddMember(ctx, req.GroupId, c.user, s.cfg.MaxGroupSize)
	case codec.CmdGroupLeave:
		err = s.store.RemoveMember(ctx, req.GroupId, c.user)
	}
	switch {
	case errors.Is(err, persist.ErrNotFound):
		c.replyError(h.Serializer, h.Seq, codec.CodeUnknownGroup, "no such group: "+req.GroupId, 0)
		return
	case errors.Is(err, persist.ErrGroupFull):
		c.replyError(h.Serializer, h.Seq, codec.CodeGroupFull, "group is full", 0)
		return
	case err != nil:
		s.storeError(c, h, "update group", err)
		return
	}
	g, ok := s.loadGroup(ctx, c, h, req.GroupId)
	if !ok {
		return
	}
	if h.Command == codec.CmdGroupMembers {
		if _, member := slices.BinarySearch(g.Members, c.user); !member {
			c.replyError(h.Serializer, h.Seq, codec.CodeNotGroupMember, "not a member of "+g.ID, 0)
			return
		}
	}
	c.writeMsg(h.Serializer, codec.CmdGroupInfo, h.Seq, groupInfo(g))
}

func (s *Server) handlePresence(ctx context.Context, c *conn, h codec.Header, req *pb.PresenceRequest) {
	if len(req.Users) > 500 {
		c.replyError(h.Serializer, h.Seq, codec.CodeInvalidArgument, "at most 500 users per PRESENCE", 0)
		return
	}
	out := &pb.PresenceOK{Users: make([]*pb.UserPresence, len(req.Users))}
	for i, u := range req.Users {
		out.Users[i] = s.presence(ctx, u)
	}
	c.writeMsg(h.Serializer, codec.CmdPresenceOK, h.Seq, out)
}

// presence reports user's online devices (cluster-wide with a session
// store), sorted and without repeats.
func (s *Server) presence(ctx context.Context, user string) *pb.UserPresence {
	devs := s.presenceDevices(ctx, user)
	slices.Sort(devs)
	devs = slices.Compact(devs)
	return &pb.UserPresence{User: user, Online: len(devs) > 0, Devices: devs}
}
