// Package clienttest provides Server, a small in-memory IMGN server on a
// loopback port for tests of code built on package client (and of the
// client itself). It speaks the real codec and follows docs/protocol.md
// closely enough for client tests — register, login (password or a
// registered token), heartbeat, send and group send with idempotent
// client_msg_id, per-user gap-free inboxes, push, push ack cursors per
// device, sync paging, groups (create, join under the join policy, leave,
// members; not roles, GROUP_ADD and the other access-control commands, nor
// membership events), presence, logout, duplicate-login kicks — and adds
// fault injection: a request Hook, a push filter, raw pushes,
// kicks, go-aways, notices and abrupt disconnects.
//
// It is not the server: no persistence, no rate limits, no auth hashing.
// Every method is safe for concurrent use.
package clienttest

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// Request is one decoded client frame, as seen by a Hook.
type Request struct {
	codec.Header
	// Body is the decoded body (*pb.SendRequest for SEND, ...); nil for a
	// command the server does not know.
	Body proto.Message
}

// Hook sees every frame before the server handles it. Returning true means
// the hook handled it: it may have answered (Conn.Reply, Conn.Error),
// closed the connection, or done nothing (the request is dropped, so the
// client times out). Returning false lets the server handle it normally.
// Hooks run on the connection's read goroutine.
type Hook func(c *Conn, r Request) bool

// Server is the fake server. Create it with Start.
type Server struct {
	// Addr is the listening address, 127.0.0.1:port.
	Addr string

	ln net.Listener
	wg sync.WaitGroup

	mu          sync.Mutex
	closed      bool
	nodeID      string
	heartbeatMs uint32
	syncMax     int
	users       map[string]string // user -> password
	tokens      map[string]string // token -> user
	inbox       map[string][]*pb.Message
	cursors     map[string]uint64 // user/device -> acked seq
	sent        map[string]*pb.SendAck
	groups      map[string]*pb.GroupInfo
	conns       map[*Conn]struct{}
	counts      map[codec.Command]int
	logins      int
	nextMsgID   uint64
	nextGroup   int
	nextSession uint64
	hook        Hook
	replyFilter func(c *Conn, r Request, cmd codec.Command) bool
	pushFilter  func(user string, m *pb.Message) bool
}

// Conn is one client connection of the Server.
type Conn struct {
	s   *Server
	nc  net.Conn
	wmu sync.Mutex

	mu       sync.Mutex
	ser      codec.SerializerID
	user     string
	device   string
	loggedIn bool
}

// Start listens on 127.0.0.1:0 and serves until t's cleanup (or Close).
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// New listens on 127.0.0.1:0 and serves until Close.
func New() (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("clienttest: listen: %w", err)
	}
	s := &Server{
		Addr: ln.Addr().String(), ln: ln, nodeID: "fake1", heartbeatMs: 30000, syncMax: 500,
		users: map[string]string{}, tokens: map[string]string{}, inbox: map[string][]*pb.Message{},
		cursors: map[string]uint64{}, sent: map[string]*pb.SendAck{}, groups: map[string]*pb.GroupInfo{},
		conns: map[*Conn]struct{}{}, counts: map[codec.Command]int{}, nextMsgID: 1000,
	}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Close stops listening, closes every connection and waits for the
// server's goroutines. It is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	_ = s.ln.Close()
	for c := range s.conns {
		_ = c.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// ---- configuration and fault injection ----

// SetNodeID sets the node id announced in LOGIN_OK (default "fake1").
func (s *Server) SetNodeID(id string) { s.mu.Lock(); s.nodeID = id; s.mu.Unlock() }

// SetHeartbeat sets LOGIN_OK.heartbeat_ms (default 30000).
func (s *Server) SetHeartbeat(d time.Duration) {
	s.mu.Lock()
	s.heartbeatMs = uint32(d.Milliseconds())
	s.mu.Unlock()
}

// SetSyncMax caps SYNC pages (default 500), to test paging.
func (s *Server) SetSyncMax(n int) { s.mu.Lock(); s.syncMax = n; s.mu.Unlock() }

// SetHook installs h (nil removes it).
func (s *Server) SetHook(h Hook) { s.mu.Lock(); s.hook = h; s.mu.Unlock() }

// SetReplyFilter installs f: every reply (including ERROR answers) to
// request r is sent only if f returns true. Combined with Conn.Close it
// simulates a request that was processed but whose reply was lost. nil
// removes it.
func (s *Server) SetReplyFilter(f func(c *Conn, r Request, cmd codec.Command) bool) {
	s.mu.Lock()
	s.replyFilter = f
	s.mu.Unlock()
}

// SetPushFilter installs f: a push of m to user is sent only if f returns
// true (the message is stored either way, so sync finds it). nil removes it.
func (s *Server) SetPushFilter(f func(user string, m *pb.Message) bool) {
	s.mu.Lock()
	s.pushFilter = f
	s.mu.Unlock()
}

// AddUser creates an account.
func (s *Server) AddUser(user, password string) {
	s.mu.Lock()
	s.users[user] = password
	s.mu.Unlock()
}

// AddToken makes token log in as user (the user must exist).
func (s *Server) AddToken(token, user string) {
	s.mu.Lock()
	s.tokens[token] = user
	s.mu.Unlock()
}

// ---- observation ----

// Count returns how many frames with cmd the server received.
func (s *Server) Count(cmd codec.Command) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[cmd]
}

// Logins returns the number of successful logins.
func (s *Server) Logins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins
}

// Cursor returns the acknowledged seq of (user, device).
func (s *Server) Cursor(user, device string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cursors[user+"/"+device]
}

// SetCursor sets the acknowledged seq of (user, device).
func (s *Server) SetCursor(user, device string, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cursors[user+"/"+device] = seq
}

// Inbox returns a copy of user's inbox.
func (s *Server) Inbox(user string) []*pb.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*pb.Message, len(s.inbox[user]))
	for i, m := range s.inbox[user] {
		out[i] = proto.CloneOf(m)
	}
	return out
}

// Online returns the number of logged-in connections of user.
func (s *Server) Online(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.connsOf(user, nil))
}

// ---- server-initiated actions ----

// Deliver stores a message from `from` in to's inbox and pushes it to to's
// connections (subject to the push filter). It returns the stored message.
func (s *Server) Deliver(from, to string, body []byte) *pb.Message {
	s.mu.Lock()
	m := s.appendLocked(to, &pb.Message{MsgId: s.newMsgID(), From: from, To: to, Body: body, Time: time.Now().UnixMilli()})
	targets := s.pushTargetsLocked(to, m, nil)
	s.mu.Unlock()
	for _, c := range targets {
		c.push(m)
	}
	return m
}

// Store appends a message to user's inbox without pushing it.
func (s *Server) Store(user, from string, body []byte) *pb.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appendLocked(user, &pb.Message{MsgId: s.newMsgID(), From: from, To: user, Body: body, Time: time.Now().UnixMilli()})
}

// Push sends one PUSH frame holding msgs, as given, to every logged-in
// connection of user, ignoring the filter and the inbox (for reordering
// and duplicate tests). It returns the number of connections.
func (s *Server) Push(user string, msgs ...*pb.Message) int {
	s.mu.Lock()
	targets := s.connsOf(user, nil)
	s.mu.Unlock()
	for _, c := range targets {
		c.write(codec.CmdPush, 0, &pb.Push{Messages: msgs})
	}
	return len(targets)
}

// WriteRaw writes b, as is, to every logged-in connection of user (for
// malformed-frame tests). It returns the number of connections.
func (s *Server) WriteRaw(user string, b []byte) int {
	s.mu.Lock()
	targets := s.connsOf(user, nil)
	s.mu.Unlock()
	for _, c := range targets {
		c.wmu.Lock()
		_, _ = c.nc.Write(b)
		c.wmu.Unlock()
	}
	return len(targets)
}

// Kick sends KICK{code, reason} to user's connections and closes them.
func (s *Server) Kick(user string, code codec.ErrorCode, reason string) int {
	s.mu.Lock()
	targets := s.connsOf(user, nil)
	s.mu.Unlock()
	for _, c := range targets {
		c.write(codec.CmdKick, 0, &pb.Kick{Code: uint32(code), Reason: reason})
		c.Close()
	}
	return len(targets)
}

// GoAway sends GO_AWAY to user's connections (they stay open; the client
// is expected to close them).
func (s *Server) GoAway(user string, delay time.Duration, reason string) int {
	s.mu.Lock()
	targets := s.connsOf(user, nil)
	node := s.nodeID
	s.mu.Unlock()
	for _, c := range targets {
		c.write(codec.CmdGoAway, 0, &pb.GoAway{Reason: reason, DelayMs: uint32(delay.Milliseconds()), NodeId: node})
	}
	return len(targets)
}

// Notice broadcasts a NOTICE to every logged-in connection.
func (s *Server) Notice(text string) int {
	s.mu.Lock()
	var targets []*Conn
	for c := range s.conns {
		if c.isLoggedIn() {
			targets = append(targets, c)
		}
	}
	s.mu.Unlock()
	for _, c := range targets {
		c.write(codec.CmdNotice, 0, &pb.Notice{Text: text, Time: time.Now().UnixMilli()})
	}
	return len(targets)
}

// Disconnect closes user's connections abruptly (no frame).
func (s *Server) Disconnect(user string) int {
	s.mu.Lock()
	targets := s.connsOf(user, nil)
	s.mu.Unlock()
	for _, c := range targets {
		c.Close()
	}
	return len(targets)
}

// ---- Conn ----

// User returns the logged-in user ("" before login).
func (c *Conn) User() string { c.mu.Lock(); defer c.mu.Unlock(); return c.user }

// Device returns the logged-in device.
func (c *Conn) Device() string { c.mu.Lock(); defer c.mu.Unlock(); return c.device }

// Close closes the connection abruptly.
func (c *Conn) Close() { _ = c.nc.Close() }

// Reply answers request r with cmd and body, in r's serializer.
func (c *Conn) Reply(r Request, cmd codec.Command, body proto.Message) {
	if c.replyAllowed(r, cmd) {
		c.writeSer(r.Serializer, cmd, r.Seq, body)
	}
}

func (c *Conn) replyAllowed(r Request, cmd codec.Command) bool {
	c.s.mu.Lock()
	f := c.s.replyFilter
	c.s.mu.Unlock()
	return f == nil || f(c, r, cmd)
}

// Error answers request r (or, with seq 0, the connection) with an ERROR.
func (c *Conn) Error(r Request, code codec.ErrorCode, msg string, retryAfter time.Duration) {
	ci, _ := code.Info()
	if r.Seq != 0 && !c.replyAllowed(r, codec.CmdError) {
		return
	}
	c.writeSer(r.Serializer, codec.CmdError, r.Seq, &pb.Error{
		Code: uint32(code), Message: msg, Retryable: ci.Retryable, Fatal: ci.Fatal,
		RetryAfterMs: uint32(retryAfter.Milliseconds()),
	})
	if ci.Fatal {
		c.Close()
	}
}

func (c *Conn) isLoggedIn() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.loggedIn }

// write sends a server-initiated frame in the login serializer.
func (c *Conn) write(cmd codec.Command, seq uint32, body proto.Message) {
	c.mu.Lock()
	ser := c.ser
	c.mu.Unlock()
	c.writeSer(ser, cmd, seq, body)
}

func (c *Conn) writeSer(ser codec.SerializerID, cmd codec.Command, seq uint32, body proto.Message) {
	if !ser.Known() {
		ser = codec.JSON
	}
	b, err := codec.AppendFrame(nil, ser, cmd, 0, seq, body)
	if err != nil {
		return
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.Close()
	}
}

func (c *Conn) push(msgs ...*pb.Message) { c.write(codec.CmdPush, 0, &pb.Push{Messages: msgs}) }

// ---- serving ----

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		c := &Conn{s: s, nc: nc}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = nc.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

func (c *Conn) serve() {
	s := c.s
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.nc.Close()
	}()
	fr := codec.FrameReader{R: bufio.NewReader(c.nc)}
	for {
		f, err := fr.Next()
		if err != nil {
			if code := codec.CodeOf(err); code != codec.CodeInternal {
				c.writeSer(codec.JSON, codec.CmdError, f.Seq, &pb.Error{Code: uint32(code), Fatal: true})
			}
			return
		}
		c.handle(f)
	}
}

func newRequest(cmd codec.Command) proto.Message {
	switch cmd {
	case codec.CmdRegister:
		return new(pb.RegisterRequest)
	case codec.CmdLogin:
		return new(pb.LoginRequest)
	case codec.CmdLogout:
		return new(pb.Empty)
	case codec.CmdHeartbeat:
		return new(pb.Heartbeat)
	case codec.CmdSend:
		return new(pb.SendRequest)
	case codec.CmdPushAck:
		return new(pb.PushAck)
	case codec.CmdSync:
		return new(pb.SyncRequest)
	case codec.CmdGroupCreate:
		return new(pb.GroupCreateRequest)
	case codec.CmdGroupJoin, codec.CmdGroupLeave, codec.CmdGroupMembers:
		return new(pb.GroupRequest)
	case codec.CmdGroupSend:
		return new(pb.GroupSendRequest)
	case codec.CmdPresence:
		return new(pb.PresenceRequest)
	}
	return nil
}

func (c *Conn) handle(f codec.Frame) {
	s := c.s
	r := Request{Header: f.Header, Body: newRequest(f.Command)}
	if r.Body != nil {
		if err := codec.Unmarshal(f.Serializer, f.Body, r.Body); err != nil {
			c.Error(r, codec.CodeBadBody, err.Error(), 0)
			return
		}
	}
	s.mu.Lock()
	s.counts[f.Command]++
	hook := s.hook
	s.mu.Unlock()
	if hook != nil && hook(c, r) {
		return
	}
	if r.Body == nil {
		c.Error(r, codec.CodeUnknownCommand, f.Command.String(), 0)
		return
	}
	c.mu.Lock()
	loggedIn := c.loggedIn
	c.mu.Unlock()
	switch f.Command {
	case codec.CmdRegister:
		c.register(r)
	case codec.CmdLogin:
		c.login(r)
	case codec.CmdHeartbeat:
		c.Reply(r, codec.CmdHeartbeatOK, &pb.Heartbeat{Time: time.Now().UnixMilli()})
	default:
		if !loggedIn {
			c.Error(r, codec.CodeNotLoggedIn, "log in first", 0)
			return
		}
		c.serveLoggedIn(r)
	}
}

func (c *Conn) register(r Request) {
	req := r.Body.(*pb.RegisterRequest)
	s := c.s
	if req.GetUser() == "" || len(req.GetPassword()) < 6 {
		c.Error(r, codec.CodeInvalidArgument, "user and password (6+ bytes) required", 0)
		return
	}
	s.mu.Lock()
	_, exists := s.users[req.GetUser()]
	if !exists {
		s.users[req.GetUser()] = req.GetPassword()
	}
	s.mu.Unlock()
	if exists {
		c.Error(r, codec.CodeUserExists, req.GetUser(), 0)
		return
	}
	c.Reply(r, codec.CmdRegisterOK, &pb.RegisterOK{User: req.GetUser()})
}

func (c *Conn) login(r Request) {
	req := r.Body.(*pb.LoginRequest)
	s := c.s
	if c.isLoggedIn() {
		c.Error(r, codec.CodeAlreadyLoggedIn, "", 0)
		return
	}
	s.mu.Lock()
	user := req.GetUser()
	ok := false
	if req.GetToken() != "" {
		tu, found := s.tokens[req.GetToken()]
		ok = found && (user == "" || user == tu)
		user = tu
	} else {
		pw, found := s.users[user]
		ok = found && pw == req.GetPassword()
	}
	if !ok {
		s.mu.Unlock()
		c.Error(r, codec.CodeAuthFailed, "bad credentials", 0)
		return
	}
	old := s.connsOf(user, func(o *Conn) bool { return o.Device() == req.GetDevice() && o != c })
	s.logins++
	s.nextSession++
	lok := &pb.LoginOK{
		User: user, Device: req.GetDevice(), NodeId: s.nodeID, SessionId: s.nextSession,
		HeadSeq: uint64(len(s.inbox[user])), Cursor: s.cursors[user+"/"+req.GetDevice()],
		HeartbeatMs: s.heartbeatMs, ServerTime: time.Now().UnixMilli(),
	}
	c.mu.Lock()
	c.user, c.device, c.loggedIn, c.ser = user, req.GetDevice(), true, r.Serializer
	c.mu.Unlock()
	s.mu.Unlock()
	for _, o := range old {
		o.write(codec.CmdKick, 0, &pb.Kick{Code: uint32(codec.CodeKickDuplicateLogin), Reason: "logged in elsewhere"})
		o.Close()
	}
	c.Reply(r, codec.CmdLoginOK, lok)
}

func (c *Conn) serveLoggedIn(r Request) {
	s := c.s
	user := c.User()
	switch req := r.Body.(type) {
	case *pb.Empty: // LOGOUT
		c.Reply(r, codec.CmdLogoutOK, &pb.Empty{})
		c.Close()
	case *pb.SendRequest:
		s.mu.Lock()
		if _, ok := s.users[req.GetTo()]; !ok {
			s.mu.Unlock()
			c.Error(r, codec.CodeUnknownRecipient, req.GetTo(), 0)
			return
		}
		s.mu.Unlock()
		c.store(r, req.GetClientMsgId(), []string{req.GetTo()}, &pb.Message{From: user, To: req.GetTo(), ClientMsgId: req.GetClientMsgId(), Kind: req.GetKind(), Body: req.GetBody()})
	case *pb.GroupSendRequest:
		s.mu.Lock()
		g := s.groups[req.GetGroupId()]
		var members []string
		if g != nil {
			members = slices.Clone(g.GetMembers())
		}
		s.mu.Unlock()
		switch {
		case g == nil:
			c.Error(r, codec.CodeUnknownGroup, req.GetGroupId(), 0)
		case !slices.Contains(members, user):
			c.Error(r, codec.CodeNotGroupMember, req.GetGroupId(), 0)
		default:
			c.store(r, req.GetClientMsgId(), members, &pb.Message{From: user, To: req.GetGroupId(), GroupId: req.GetGroupId(), ClientMsgId: req.GetClientMsgId(), Kind: req.GetKind(), Body: req.GetBody()})
		}
	case *pb.PushAck:
		s.mu.Lock()
		k := user + "/" + c.Device()
		s.cursors[k] = max(s.cursors[k], req.GetUpToSeq())
		s.mu.Unlock()
	case *pb.SyncRequest:
		s.mu.Lock()
		in := s.inbox[user]
		limit := int(req.GetLimit())
		if limit == 0 {
			limit = 100
		}
		limit = min(limit, s.syncMax)
		start := min(int(req.GetAfterSeq()), len(in))
		end := min(start+limit, len(in))
		page := &pb.SyncOK{HasMore: end < len(in), HeadSeq: uint64(len(in))}
		for _, m := range in[start:end] {
			page.Messages = append(page.Messages, proto.CloneOf(m))
		}
		s.mu.Unlock()
		c.Reply(r, codec.CmdSyncOK, page)
	case *pb.GroupCreateRequest:
		s.mu.Lock()
		s.nextGroup++
		g := &pb.GroupInfo{GroupId: fmt.Sprintf("g%d", s.nextGroup), Name: req.GetName(), Owner: user, Members: []string{user}, Open: req.GetOpen()}
		for _, m := range req.GetMembers() {
			if _, ok := s.users[m]; !ok {
				s.mu.Unlock()
				c.Error(r, codec.CodeUnknownRecipient, m, 0)
				return
			}
			if !slices.Contains(g.Members, m) {
				g.Members = append(g.Members, m)
			}
		}
		s.groups[g.GroupId] = g
		out := proto.CloneOf(g)
		s.mu.Unlock()
		c.Reply(r, codec.CmdGroupInfo, out)
	case *pb.GroupRequest:
		s.mu.Lock()
		g := s.groups[req.GetGroupId()]
		if g == nil {
			s.mu.Unlock()
			c.Error(r, codec.CodeUnknownGroup, req.GetGroupId(), 0)
			return
		}
		member := slices.Contains(g.Members, user)
		switch r.Command {
		case codec.CmdGroupJoin:
			if !member && !g.GetOpen() {
				s.mu.Unlock()
				c.Error(r, codec.CodeGroupInviteOnly, req.GetGroupId(), 0)
				return
			}
			if !member {
				g.Members = append(g.Members, user)
			}
		case codec.CmdGroupLeave:
			// A former member sees nothing but the id.
			g.Members = slices.DeleteFunc(g.Members, func(m string) bool { return m == user })
			s.mu.Unlock()
			c.Reply(r, codec.CmdGroupInfo, &pb.GroupInfo{GroupId: g.GroupId})
			return
		case codec.CmdGroupMembers:
			if !member {
				s.mu.Unlock()
				c.Error(r, codec.CodeNotGroupMember, req.GetGroupId(), 0)
				return
			}
		}
		out := proto.CloneOf(g)
		s.mu.Unlock()
		c.Reply(r, codec.CmdGroupInfo, out)
	case *pb.PresenceRequest:
		resp := &pb.PresenceOK{}
		s.mu.Lock()
		for _, u := range req.GetUsers() {
			_, registered := s.users[u]
			p := &pb.UserPresence{User: u, Unknown: !registered}
			for _, o := range s.connsOf(u, nil) {
				p.Devices = append(p.Devices, o.Device())
			}
			p.Online = len(p.Devices) > 0
			resp.Users = append(resp.Users, p)
		}
		s.mu.Unlock()
		c.Reply(r, codec.CmdPresenceOK, resp)
	default:
		c.Error(r, codec.CodeUnknownCommand, r.Command.String(), 0)
	}
}

// store appends m to every recipient's inbox and the sender's (once),
// idempotently by (sender, client_msg_id), acks, and pushes.
func (c *Conn) store(r Request, clientMsgID string, recipients []string, m *pb.Message) {
	s := c.s
	sender := m.GetFrom()
	if clientMsgID == "" {
		c.Error(r, codec.CodeInvalidArgument, "client_msg_id", 0)
		return
	}
	key := sender + "/" + clientMsgID
	s.mu.Lock()
	if ack, ok := s.sent[key]; ok {
		dup := proto.CloneOf(ack)
		dup.Duplicate = true
		s.mu.Unlock()
		c.Reply(r, codec.CmdSendAck, dup)
		return
	}
	m.MsgId = s.newMsgID()
	m.Time = time.Now().UnixMilli()
	type delivery struct {
		m       *pb.Message
		targets []*Conn
	}
	var ds []delivery
	ack := &pb.SendAck{ClientMsgId: clientMsgID, MsgId: m.MsgId, Time: m.Time}
	users := slices.Clone(recipients)
	if !slices.Contains(users, sender) {
		users = append(users, sender)
	}
	for _, u := range users {
		e := s.appendLocked(u, proto.CloneOf(m))
		if u == sender {
			ack.Seq = e.Seq
		}
		ds = append(ds, delivery{e, s.pushTargetsLocked(u, e, c)})
	}
	s.sent[key] = ack
	out := proto.CloneOf(ack)
	s.mu.Unlock()
	c.Reply(r, codec.CmdSendAck, out)
	for _, d := range ds {
		for _, t := range d.targets {
			t.push(d.m)
		}
	}
}

// ---- helpers (s.mu held) ----

func (s *Server) newMsgID() uint64 { s.nextMsgID++; return s.nextMsgID }

func (s *Server) appendLocked(user string, m *pb.Message) *pb.Message {
	m.Seq = uint64(len(s.inbox[user])) + 1
	s.inbox[user] = append(s.inbox[user], m)
	return m
}

// connsOf lists user's logged-in connections accepted by keep (nil = all).
func (s *Server) connsOf(user string, keep func(*Conn) bool) []*Conn {
	var out []*Conn
	for c := range s.conns {
		if c.isLoggedIn() && c.User() == user && (keep == nil || keep(c)) {
			out = append(out, c)
		}
	}
	return out
}

// pushTargetsLocked lists the connections m should be pushed to: user's,
// except the sending connection, subject to the push filter.
func (s *Server) pushTargetsLocked(user string, m *pb.Message, except *Conn) []*Conn {
	if s.pushFilter != nil && !s.pushFilter(user, m) {
		return nil
	}
	return s.connsOf(user, func(c *Conn) bool { return c != except })
}
