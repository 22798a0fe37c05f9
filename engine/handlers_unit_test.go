package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

// The protocol handlers, tested without sockets: every request goes through
// the frame reader, the route table and the handlers of a fake engine
// (fake_test.go), and the tests read back the exact frames the connection
// was given.

// unitClient is one connection of a fake engine, driven by the test.
type unitClient struct {
	t   *testing.T
	fe  *fakeEngine
	c   *conn
	ft  *fakeTransport
	ser codec.SerializerID
	seq uint32
	// Frames that were not the reply being waited for (pushes, receipts,
	// typing events), in arrival order.
	other []codec.Frame
}

// newUnit returns a fake engine with one loop and a memory store; mod may
// adjust the config.
func newUnit(t *testing.T, mod func(*Config)) *fakeEngine {
	return newFakeEngine(t, 1, mod)
}

// anon opens a connection that has not logged in.
func anon(t *testing.T, fe *fakeEngine, ser codec.SerializerID) *unitClient {
	c, ft := fe.conn(0, "", "", ser)
	return &unitClient{t: t, fe: fe, c: c, ft: ft, ser: ser}
}

// online opens a connection logged in as user (an account without a
// password), device "d1", in JSON.
func online(t *testing.T, fe *fakeEngine, user string) *unitClient {
	c, ft := fe.conn(0, user, "d1", codec.JSON)
	return &unitClient{t: t, fe: fe, c: c, ft: ft, ser: codec.JSON}
}

// settle runs the engine until c's requests are done (requests that need a
// worker run on the engine's pool) and what they queued is written.
func (u *unitClient) settle() {
	u.t.Helper()
	poll(u.t, "requests done", func() bool {
		u.fe.runLoops()
		return !u.c.hasWork()
	})
	u.fe.runLoops()
}

// raw sends a frame with body as it is and returns everything written to
// the connection once the request is done.
func (u *unitClient) raw(cmd codec.Command, body []byte) (seq uint32, frames []codec.Frame) {
	u.t.Helper()
	u.seq++
	u.ft.in = codec.AppendRawFrame(u.ft.in, u.ser, cmd, 0, u.seq, body)
	u.fe.feed(u.c)
	u.settle()
	return u.seq, u.ft.frames(u.t)
}

// send sends a request and returns everything written to the connection
// once it is done.
func (u *unitClient) send(cmd codec.Command, m proto.Message) (seq uint32, frames []codec.Frame) {
	u.t.Helper()
	u.seq++
	u.ft.in = append(u.ft.in, encodeFrame(u.t, u.ser, cmd, u.seq, m)...)
	u.fe.feed(u.c)
	u.settle()
	return u.seq, u.ft.frames(u.t)
}

// reply picks the frame answering seq out of frames (exactly one), keeping
// the others in u.other.
func (u *unitClient) reply(seq uint32, frames []codec.Frame) codec.Frame {
	u.t.Helper()
	var got []codec.Frame
	for _, f := range frames {
		if f.Seq == seq && f.Command != codec.CmdPush {
			got = append(got, f)
		} else {
			u.other = append(u.other, f)
		}
	}
	if len(got) != 1 {
		u.t.Fatalf("want one reply to seq %d, got %v", seq, got)
	}
	return got[0]
}

// ok sends a request and decodes its reply, which must be want, into out
// (when not nil).
func (u *unitClient) ok(cmd codec.Command, req proto.Message, want codec.Command, out proto.Message) {
	u.t.Helper()
	f := u.reply(u.send(cmd, req))
	if f.Command != want {
		if f.Command == codec.CmdError {
			e := decodeError(u.t, f)
			u.t.Fatalf("%s: want %s, got ERROR %s: %s", cmd, want, codec.ErrorCode(e.Code), e.Message)
		}
		u.t.Fatalf("%s: want %s, got %s", cmd, want, f.Command)
	}
	if out != nil {
		if err := codec.Unmarshal(f.Serializer, f.Body, out); err != nil {
			u.t.Fatalf("decode %s: %v", f.Command, err)
		}
	}
}

// refused sends a request that must be answered by a non-fatal ERROR with
// code, and returns it.
func (u *unitClient) refused(cmd codec.Command, req proto.Message, code codec.ErrorCode) *pb.Error {
	u.t.Helper()
	return u.wantError(u.reply(u.send(cmd, req)), code, false)
}

func (u *unitClient) wantError(f codec.Frame, code codec.ErrorCode, fatal bool) *pb.Error {
	u.t.Helper()
	e := decodeError(u.t, f)
	if codec.ErrorCode(e.Code) != code || e.Fatal != fatal || e.Retryable != code.Retryable() {
		u.t.Fatalf("want ERROR %s (fatal %v), got %s (fatal %v, retryable %v): %s",
			code, fatal, codec.ErrorCode(e.Code), e.Fatal, e.Retryable, e.Message)
	}
	if fatal != u.ft.closed {
		u.t.Fatalf("ERROR %s: connection closed %v, want %v", code, u.ft.closed, fatal)
	}
	return e
}

// drain returns, and forgets, the frames other than replies that u got,
// with what has been written since.
func (u *unitClient) drain() []codec.Frame {
	u.t.Helper()
	u.fe.runLoops()
	out := append(u.other, u.ft.frames(u.t)...)
	u.other = nil
	return out
}

// sendTo sends a 1:1 message and returns its ack.
func (u *unitClient) sendTo(to, text string) *pb.SendAck {
	u.t.Helper()
	var ack pb.SendAck
	u.ok(codec.CmdSend, &pb.SendRequest{ClientMsgId: "m" + time.Now().Format("150405.000000000"), To: to, Body: []byte(text)}, codec.CmdSendAck, &ack)
	return &ack
}

// TestRoutesCoverTheClientCommands: the table has an entry for exactly the
// commands a client may send (those the codec has a request body for), and
// every typed route names a reply the codec knows.
func TestRoutesCoverTheClientCommands(t *testing.T) {
	for i := range 256 {
		cmd := codec.Command(i)
		_, err := codec.DecodeRequest(codec.JSON, cmd, nil)
		isRequest := err == nil || !strings.Contains(err.Error(), "not a client request")
		rt := &routes[cmd]
		if rt.known() != isRequest {
			t.Errorf("%s: route %v, client request %v", cmd, rt.known(), isRequest)
		}
		if rt.run != nil && rt.raw != nil {
			t.Errorf("%s: both a typed and a raw handler", cmd)
		}
		if rt.reply != 0 && (!rt.reply.Known() || rt.reply < 0x80 || rt.reply >= codec.MeshCommandMin) {
			t.Errorf("%s: reply %s is not a reply command", cmd, rt.reply)
		}
		if rt.anytime && rt.raw == nil {
			t.Errorf("%s: runs at once but has no raw handler", cmd)
		}
	}
	for _, cmd := range []codec.Command{codec.CmdLogin, codec.CmdRegister, codec.CmdHeartbeat} {
		if !routes[cmd].open {
			t.Errorf("%s must be allowed before the login", cmd)
		}
	}
}

func TestUnitUnknownCommand(t *testing.T) {
	fe := newUnit(t, nil)
	u := online(t, fe, "alice")
	for _, cmd := range []codec.Command{0x50, codec.CmdPush, codec.CmdLoginOK, codec.CmdError, 0xC1} {
		seq, fs := u.raw(cmd, nil)
		e := u.wantError(u.reply(seq, fs), codec.CodeUnknownCommand, false)
		if !strings.Contains(e.Message, cmd.String()) {
			t.Errorf("%s: message %q does not name the command", cmd, e.Message)
		}
	}
	// Before the login, any command but LOGIN, REGISTER and HEARTBEAT is
	// NOT_LOGGED_IN, and fatal: unknown ones too.
	a := anon(t, fe, codec.Protobuf)
	seq, fs := a.raw(0x50, nil)
	a.wantError(a.reply(seq, fs), codec.CodeNotLoggedIn, true)
}

func TestUnitNotLoggedIn(t *testing.T) {
	fe := newUnit(t, nil)
	for _, cmd := range []codec.Command{codec.CmdSync, codec.CmdLogout, codec.CmdSend, codec.CmdGroupCreate, codec.CmdRead, codec.CmdTyping} {
		a := anon(t, fe, codec.MsgPack)
		seq, fs := a.raw(cmd, nil)
		a.wantError(a.reply(seq, fs), codec.CodeNotLoggedIn, true)
	}
	// A HEARTBEAT is answered before the login.
	a := anon(t, fe, codec.JSON)
	var hb pb.Heartbeat
	a.ok(codec.CmdHeartbeat, &pb.Heartbeat{Time: 5}, codec.CmdHeartbeatOK, &hb)
	if hb.Time == 0 {
		t.Error("HEARTBEAT_OK without the server's time")
	}
}

// TestUnitPushAckAfterAFailedLogin: a PUSH_ACK before a successful login
// is NOT_LOGGED_IN and closes the connection, like every other command,
// whether it was queued behind the LOGIN that failed or sent after it.
func TestUnitPushAckAfterAFailedLogin(t *testing.T) {
	fe := newUnit(t, nil)
	login := &pb.LoginRequest{User: "ghost", Password: "not-the-password", Device: "d1"}
	ack := &pb.PushAck{UpToSeq: 5}

	// Pipelined: the PUSH_ACK waits behind the LOGIN (a password login
	// runs on a worker) and runs once it has failed.
	a := anon(t, fe, codec.JSON)
	a.ft.in = append(a.ft.in, encodeFrame(t, a.ser, codec.CmdLogin, 1, login)...)
	a.ft.in = append(a.ft.in, encodeFrame(t, a.ser, codec.CmdPushAck, 2, ack)...)
	a.seq = 2
	a.fe.feed(a.c)
	a.settle()
	fs := a.ft.frames(t)
	if len(fs) != 2 || fs[0].Seq != 1 || fs[1].Seq != 2 {
		t.Fatalf("pipelined LOGIN and PUSH_ACK answered %v, want one ERROR each, in order", fs)
	}
	if e := decodeError(t, fs[0]); codec.ErrorCode(e.Code) != codec.CodeAuthFailed || e.Fatal {
		t.Fatalf("LOGIN answered %v", e)
	}
	a.wantError(fs[1], codec.CodeNotLoggedIn, true)

	// Sent after the failed LOGIN was answered.
	b := anon(t, fe, codec.Protobuf)
	b.refused(codec.CmdLogin, login, codec.CodeAuthFailed)
	seq, fs := b.send(codec.CmdPushAck, ack)
	b.wantError(b.reply(seq, fs), codec.CodeNotLoggedIn, true)
}

// TestUnitUnknownCommandAfterAFailedLogin: once a queued LOGIN has failed
// the connection is back before the login, where every command but
// REGISTER, LOGIN and HEARTBEAT, defined or not, is NOT_LOGGED_IN and
// fatal; a retried LOGIN that succeeds is not mistaken for a failure.
func TestUnitUnknownCommandAfterAFailedLogin(t *testing.T) {
	fe := newUnit(t, nil)
	a := anon(t, fe, codec.JSON)
	a.ok(codec.CmdRegister, &pb.RegisterRequest{User: "alice", Password: "secret1"}, codec.CmdRegisterOK, nil)
	wrong := &pb.LoginRequest{User: "alice", Password: "not-the-password", Device: "d1"}
	a.refused(codec.CmdLogin, wrong, codec.CodeAuthFailed)
	seq, fs := a.raw(0x50, nil)
	a.wantError(a.reply(seq, fs), codec.CodeNotLoggedIn, true)

	b := anon(t, fe, codec.JSON)
	b.refused(codec.CmdLogin, wrong, codec.CodeAuthFailed)
	b.ok(codec.CmdLogin, &pb.LoginRequest{User: "alice", Password: "secret1", Device: "d2"}, codec.CmdLoginOK, nil)
	seq, fs = b.raw(0x50, nil)
	b.wantError(b.reply(seq, fs), codec.CodeUnknownCommand, false)
	b.ok(codec.CmdSync, &pb.SyncRequest{}, codec.CmdSyncOK, nil)
}

// TestUnitRequestBehindARegister: a request pipelined behind a REGISTER
// (queued for a worker: it hashes the password) is executed after it, as
// the protocol promises: a command that needs a login is refused with the
// fatal NOT_LOGGED_IN only once the REGISTER has been answered, so the
// client learns that its account was created before the connection
// closes. An unknown command behind it is NOT_LOGGED_IN too.
func TestUnitRequestBehindARegister(t *testing.T) {
	fe := newUnit(t, nil)
	for i, cmd := range []codec.Command{codec.CmdSend, codec.CmdSync, 0x50} {
		a := anon(t, fe, codec.JSON)
		user := fmt.Sprint("reg", i)
		a.ft.in = append(a.ft.in, encodeFrame(t, a.ser, codec.CmdRegister, 1, &pb.RegisterRequest{User: user, Password: "secret1"})...)
		a.ft.in = append(a.ft.in, encodeFrame(t, a.ser, cmd, 2, &pb.SyncRequest{})...)
		a.seq = 2
		a.fe.feed(a.c)
		a.settle()
		fs := a.ft.frames(t)
		if len(fs) != 2 || fs[0].Seq != 1 || fs[1].Seq != 2 {
			t.Fatalf("%s behind a REGISTER: answered %v, want REGISTER_OK then an ERROR", cmd, fs)
		}
		if fs[0].Command != codec.CmdRegisterOK {
			t.Fatalf("%s behind a REGISTER: the REGISTER got %s", cmd, fs[0].Command)
		}
		a.wantError(fs[1], codec.CodeNotLoggedIn, true)
	}
}

func TestUnitBadBody(t *testing.T) {
	fe := newUnit(t, nil)
	u := online(t, fe, "alice")
	for _, cmd := range []codec.Command{codec.CmdSync, codec.CmdSend, codec.CmdGroupSend, codec.CmdPushAck, codec.CmdHeartbeat,
		codec.CmdGroupAdd, codec.CmdRead, codec.CmdLogout} {
		seq, fs := u.raw(cmd, []byte(`[1,2]`))
		u.wantError(u.reply(seq, fs), codec.CodeBadBody, false)
	}
	seq, fs := u.raw(codec.CmdSync, []byte(`{"after_seq":"x"}`))
	u.wantError(u.reply(seq, fs), codec.CodeBadBody, false)
	// The connection still works.
	u.ok(codec.CmdSync, &pb.SyncRequest{}, codec.CmdSyncOK, nil)
}

func TestUnitRegisterAndPasswordLogin(t *testing.T) {
	fe := newUnit(t, nil)
	a := anon(t, fe, codec.JSON)
	var reg pb.RegisterOK
	a.ok(codec.CmdRegister, &pb.RegisterRequest{User: "alice", Password: "secret1"}, codec.CmdRegisterOK, &reg)
	if reg.User != "alice" {
		t.Fatalf("REGISTER_OK %v", &reg)
	}
	a.refused(codec.CmdRegister, &pb.RegisterRequest{User: "alice", Password: "secret2"}, codec.CodeUserExists)
	a.refused(codec.CmdRegister, &pb.RegisterRequest{User: "bad id", Password: "secret2"}, codec.CodeInvalidArgument)
	a.refused(codec.CmdRegister, &pb.RegisterRequest{User: "bob", Password: "short"}, codec.CodeInvalidArgument)

	a.refused(codec.CmdLogin, &pb.LoginRequest{User: "alice", Password: "wrong-password", Device: "d1"}, codec.CodeAuthFailed)
	e := a.refused(codec.CmdLogin, &pb.LoginRequest{User: "nobody", Password: "secret1", Device: "d1"}, codec.CodeAuthFailed)
	if e.Message != "unknown user or wrong password" {
		t.Errorf("unknown user answered %q: it must not tell the two apart", e.Message)
	}
	a.refused(codec.CmdLogin, &pb.LoginRequest{User: "alice", Password: "secret1"}, codec.CodeInvalidArgument) // no device
	// Failed logins leave the connection usable.
	var ok pb.LoginOK
	a.ok(codec.CmdLogin, &pb.LoginRequest{User: "alice", Password: "secret1", Device: "d1"}, codec.CmdLoginOK, &ok)
	if ok.User != "alice" || ok.Device != "d1" || ok.SessionId != a.c.id || ok.HeartbeatMs == 0 {
		t.Fatalf("LOGIN_OK %v", &ok)
	}
	if !fe.s.sessions.online("alice") {
		t.Fatal("alice is not online after LOGIN_OK")
	}
	a.refused(codec.CmdLogin, &pb.LoginRequest{User: "alice", Password: "secret1", Device: "d1"}, codec.CodeAlreadyLoggedIn)
	a.refused(codec.CmdRegister, &pb.RegisterRequest{User: "carol", Password: "secret1"}, codec.CodeAlreadyLoggedIn)
}

func TestUnitTokenLogin(t *testing.T) {
	fe := newUnit(t, nil)
	tok, err := auth.MintToken(testSecret, "dave", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a := anon(t, fe, codec.Protobuf)
	a.refused(codec.CmdLogin, &pb.LoginRequest{User: "eve", Token: tok, Device: "d1"}, codec.CodeInvalidArgument)
	a.refused(codec.CmdLogin, &pb.LoginRequest{Token: tok + "x", Device: "d1"}, codec.CodeAuthFailed)
	old, err := auth.MintTokenAt(testSecret, "dave", time.Now().Add(-2*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a.refused(codec.CmdLogin, &pb.LoginRequest{Token: old, Device: "d1"}, codec.CodeTokenExpired)
	var ok pb.LoginOK
	a.ok(codec.CmdLogin, &pb.LoginRequest{Token: tok, Device: "d1"}, codec.CmdLoginOK, &ok)
	if ok.User != "dave" {
		t.Fatalf("LOGIN_OK %v", &ok)
	}
	// The account was provisioned, and a second device of it takes over
	// nothing: the same device kicks the first connection.
	if _, err := fe.s.store.GetUser(context.Background(), "dave"); err != nil {
		t.Fatalf("token login did not provision the account: %v", err)
	}
	b := anon(t, fe, codec.JSON)
	b.ok(codec.CmdLogin, &pb.LoginRequest{Token: tok, Device: "d1"}, codec.CmdLoginOK, nil)
	fs := a.drain()
	if len(fs) != 1 || fs[0].Command != codec.CmdKick || !a.ft.closed {
		t.Fatalf("first connection got %v (closed %v), want a KICK and the close", fs, a.ft.closed)
	}
}

func TestUnitPasswordAttemptsAreLimited(t *testing.T) {
	fe := newUnit(t, func(c *Config) { c.LoginRatePerIP, c.LoginBurstPerIP = 0.001, 2 })
	a := anon(t, fe, codec.JSON)
	a.ok(codec.CmdRegister, &pb.RegisterRequest{User: "alice", Password: "secret1"}, codec.CmdRegisterOK, nil)
	a.refused(codec.CmdLogin, &pb.LoginRequest{User: "alice", Password: "wrong-password", Device: "d1"}, codec.CodeAuthFailed)
	e := a.refused(codec.CmdLogin, &pb.LoginRequest{User: "alice", Password: "secret1", Device: "d1"}, codec.CodeRateLimited)
	if e.RetryAfterMs == 0 {
		t.Error("RATE_LIMITED without retry_after_ms")
	}
	// A token login is no password attempt.
	tok, _ := auth.MintToken(testSecret, "alice", time.Hour)
	a.ok(codec.CmdLogin, &pb.LoginRequest{Token: tok, Device: "d1"}, codec.CmdLoginOK, nil)
}

// TestUnitPasswordWaitingForAHashSlotIsBusy: a password attempt that finds
// every hashing slot taken until its deadline is BUSY (retryable, with a
// wait), not a wrong password nor INTERNAL: the password was never checked.
// The handlers are called with a context already cancelled (the store's
// user reads ignore it), so the test does not wait out the request timeout.
func TestUnitPasswordWaitingForAHashSlotIsBusy(t *testing.T) {
	fe := newUnit(t, func(c *Config) {
		c.HashConcurrency = 1
		c.Store = userReadsIgnoreCtx{memstore.New()}
	})
	a := anon(t, fe, codec.JSON)
	a.ok(codec.CmdRegister, &pb.RegisterRequest{User: "alice", Password: "secret1"}, codec.CmdRegisterOK, nil)
	fe.s.hashSem <- struct{}{} // the only slot is taken
	defer func() { <-fe.s.hashSem }()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for cmd, m := range map[codec.Command]proto.Message{
		codec.CmdLogin:    &pb.LoginRequest{User: "alice", Password: "secret1", Device: "d1"},
		codec.CmdRegister: &pb.RegisterRequest{User: "bob", Password: "secret1"},
	} {
		r := &request{ctx: ctx, c: a.c, h: codec.Header{Serializer: codec.JSON, Command: cmd, Seq: 1}, msg: m}
		out, e := routes[cmd].run(fe.s, r)
		if out != nil || e == nil || e.Code != codec.CodeBusy || !e.Code.Retryable() || e.RetryAfterMs == 0 {
			t.Errorf("%s with no hashing slot: %v, %+v; want BUSY with retry_after_ms", cmd, out, e)
		}
	}
	if a.c.loggedIn() {
		t.Fatal("logged in without the password being checked")
	}
}

// userReadsIgnoreCtx is the memory store whose user reads ignore the
// request's context: a handler given one that has ended gets as far as the
// password hash.
type userReadsIgnoreCtx struct{ *memstore.Store }

func (s userReadsIgnoreCtx) GetUser(_ context.Context, id string) (persist.User, error) {
	return s.Store.GetUser(context.Background(), id)
}

func TestUnitSyncAndPushAck(t *testing.T) {
	fe := newUnit(t, nil)
	alice, bob := online(t, fe, "alice"), online(t, fe, "bob")
	for _, text := range []string{"one", "two", "three"} {
		alice.sendTo("bob", text)
	}
	if fs := bob.drain(); len(fs) != 3 || fs[0].Command != codec.CmdPush {
		t.Fatalf("bob got %v, want three pushes", fs)
	}
	var page pb.SyncOK
	bob.ok(codec.CmdSync, &pb.SyncRequest{AfterSeq: 0, Limit: 2}, codec.CmdSyncOK, &page)
	if len(page.Messages) != 2 || !page.HasMore || page.HeadSeq != 3 || string(page.Messages[0].Body) != "one" ||
		page.Messages[0].From != "alice" || page.Messages[1].Seq != 2 {
		t.Fatalf("SYNC_OK %v", &page)
	}
	bob.ok(codec.CmdSync, &pb.SyncRequest{AfterSeq: 2}, codec.CmdSyncOK, &page)
	if len(page.Messages) != 1 || page.HasMore || string(page.Messages[0].Body) != "three" {
		t.Fatalf("SYNC_OK %v", &page)
	}
	// PUSH_ACK has no reply; it moves the device's cursor.
	if _, fs := bob.send(codec.CmdPushAck, &pb.PushAck{UpToSeq: 2}); len(fs) != 0 {
		t.Fatalf("PUSH_ACK answered %v", fs)
	}
	if cur, err := fe.s.store.Cursor(context.Background(), "bob", "d1"); err != nil || cur != 2 {
		t.Fatalf("cursor %d, %v; want 2", cur, err)
	}
	// SEND refusals, answered by the raw handler.
	alice.refused(codec.CmdSend, &pb.SendRequest{ClientMsgId: "x", To: "nobody"}, codec.CodeUnknownRecipient)
	alice.refused(codec.CmdSend, &pb.SendRequest{To: "bob"}, codec.CodeInvalidArgument)
	alice.refused(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "x", GroupId: "gnone"}, codec.CodeUnknownGroup)
}

// failingInbox is the memory store whose inbox reads fail with err.
type failingInbox struct {
	*memstore.Store
	err error
}

func (s failingInbox) ReadInbox(context.Context, string, uint64, int) ([]persist.InboxEntry, error) {
	return nil, s.err
}

// TestUnitStoreFailureRetryHint: a failed store call is answered with the
// code ErrorCode gives it; a retryable one (STORE_UNAVAILABLE) carries a
// retry_after_ms, the store's ErrInvalid (INVALID_ARGUMENT, not
// retryable) none, and both name the step that failed.
func TestUnitStoreFailureRetryHint(t *testing.T) {
	for _, tc := range []struct {
		err   error
		code  codec.ErrorCode
		retry bool
	}{
		{errors.New("disk on fire"), codec.CodeStoreUnavailable, true},
		{fmt.Errorf("%w: limit 0", persist.ErrInvalid), codec.CodeInvalidArgument, false},
	} {
		fe := newUnit(t, func(c *Config) { c.Store = failingInbox{memstore.New(), tc.err} })
		u := online(t, fe, "alice")
		e := u.refused(codec.CmdSync, &pb.SyncRequest{}, tc.code)
		if (e.RetryAfterMs != 0) != tc.retry {
			t.Errorf("%s: retry_after_ms %d, want a hint %v", tc.code, e.RetryAfterMs, tc.retry)
		}
		if !strings.HasPrefix(e.Message, "read inbox: ") || !strings.Contains(e.Message, tc.err.Error()) {
			t.Errorf("%s: message %q does not name the step and the cause", tc.code, e.Message)
		}
	}
}

func TestUnitLogout(t *testing.T) {
	fe := newUnit(t, nil)
	u := online(t, fe, "alice")
	seq, fs := u.send(codec.CmdLogout, &pb.Empty{})
	if f := u.reply(seq, fs); f.Command != codec.CmdLogoutOK {
		t.Fatalf("LOGOUT answered %s", f.Command)
	}
	if !u.ft.closed {
		t.Fatal("connection open after LOGOUT_OK")
	}
	if fe.s.sessions.online("alice") {
		t.Fatal("alice's session outlived LOGOUT")
	}
}

func TestUnitPresence(t *testing.T) {
	fe := newUnit(t, nil)
	alice := online(t, fe, "alice")
	if err := fe.s.store.CreateUser(context.Background(), persist.User{ID: "bob"}); err != nil {
		t.Fatal(err)
	}
	var out pb.PresenceOK
	alice.ok(codec.CmdPresence, &pb.PresenceRequest{Users: []string{"alice", "bob", "nobody"}}, codec.CmdPresenceOK, &out)
	want := []*pb.UserPresence{
		{User: "alice", Online: true, Devices: []string{"d1"}},
		{User: "bob"},
		{User: "nobody", Unknown: true},
	}
	if len(out.Users) != len(want) {
		t.Fatalf("PRESENCE_OK %v", &out)
	}
	for i := range want {
		if !proto.Equal(out.Users[i], want[i]) {
			t.Errorf("users[%d] = %v, want %v", i, out.Users[i], want[i])
		}
	}
	e := alice.refused(codec.CmdPresence, &pb.PresenceRequest{Users: []string{"ok", "not ok"}}, codec.CodeInvalidArgument)
	if !strings.Contains(e.Message, "users[1]") {
		t.Errorf("message %q does not say which user", e.Message)
	}
	alice.refused(codec.CmdPresence, &pb.PresenceRequest{Users: make([]string, 501)}, codec.CodeInvalidArgument)
}

func TestUnitGroupsAndTheirACL(t *testing.T) {
	fe := newUnit(t, nil)
	alice, bob, carol, dan := online(t, fe, "alice"), online(t, fe, "bob"), online(t, fe, "carol"), online(t, fe, "dan")

	alice.refused(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "x", Members: []string{"nobody"}}, codec.CodeUnknownRecipient)
	alice.refused(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: strings.Repeat("n", 129)}, codec.CodeInvalidArgument)
	var g pb.GroupInfo
	alice.ok(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team", Members: []string{"bob"}}, codec.CmdGroupInfo, &g)
	if g.Owner != "alice" || !slices.Equal(g.Members, []string{"alice", "bob"}) || g.Open || g.Name != "team" {
		t.Fatalf("GROUP_INFO %v", &g)
	}
	id := g.GroupId

	// Invite-only; only members see the members.
	carol.refused(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: id}, codec.CodeGroupInviteOnly)
	carol.refused(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: id}, codec.CodeNotGroupMember)
	carol.refused(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: "gnone"}, codec.CodeUnknownGroup)
	carol.refused(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: "bad id"}, codec.CodeInvalidArgument)

	// A plain member adds nobody; only the owner names admins.
	bob.refused(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"carol"}}, codec.CodeNotGroupAdmin)
	bob.refused(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "bob", Admin: true}, codec.CodeNotGroupOwner)
	carol.refused(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"carol"}}, codec.CodeNotGroupMember)
	alice.refused(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id}, codec.CodeInvalidArgument)
	alice.refused(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"nobody"}}, codec.CodeUnknownRecipient)
	alice.refused(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "carol", Admin: true}, codec.CodeNotGroupMember)
	alice.refused(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "alice", Admin: true}, codec.CodeInvalidArgument)
	alice.ok(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "bob", Admin: true}, codec.CmdGroupInfo, &g)
	if !slices.Equal(g.Admins, []string{"bob"}) {
		t.Fatalf("admins %v, want [bob]", g.Admins)
	}

	// An admin adds and removes members, but not the owner or an admin.
	bob.ok(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"carol", "dan"}}, codec.CmdGroupInfo, &g)
	if !slices.Equal(g.Members, []string{"alice", "bob", "carol", "dan"}) {
		t.Fatalf("members %v", g.Members)
	}
	bob.refused(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: id, Users: []string{"alice"}}, codec.CodeNotGroupOwner)
	bob.refused(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: id, Users: []string{"bob"}}, codec.CodeInvalidArgument) // GROUP_LEAVE is for that
	bob.ok(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: id, Users: []string{"dan"}}, codec.CmdGroupInfo, &g)
	if slices.Contains(g.Members, "dan") {
		t.Fatalf("dan still a member: %v", g.Members)
	}

	// Only the owner transfers, to a member; the old owner stays an admin.
	carol.refused(codec.CmdGroupTransfer, &pb.GroupTransferRequest{GroupId: id, User: "carol"}, codec.CodeNotGroupOwner)
	alice.refused(codec.CmdGroupTransfer, &pb.GroupTransferRequest{GroupId: id, User: "dan"}, codec.CodeNotGroupMember)
	alice.ok(codec.CmdGroupTransfer, &pb.GroupTransferRequest{GroupId: id, User: "bob"}, codec.CmdGroupInfo, &g)
	if g.Owner != "bob" || !slices.Equal(g.Admins, []string{"alice"}) {
		t.Fatalf("after transfer: owner %q admins %v", g.Owner, g.Admins)
	}

	// GROUPS lists the caller's groups; GROUP_LEAVE answers the id only.
	var list pb.GroupsOK
	carol.ok(codec.CmdGroups, &pb.GroupsRequest{}, codec.CmdGroupsOK, &list)
	if len(list.Groups) != 1 || list.Groups[0].GroupId != id || list.Groups[0].Owner != "bob" || list.Groups[0].Size != 3 {
		t.Fatalf("GROUPS_OK %v", &list)
	}
	carol.refused(codec.CmdGroups, &pb.GroupsRequest{After: "bad id"}, codec.CodeInvalidArgument)
	carol.ok(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: id}, codec.CmdGroupInfo, &g)
	if !proto.Equal(&g, &pb.GroupInfo{GroupId: id}) {
		t.Fatalf("GROUP_LEAVE answered %v", &g)
	}

	// Every change was announced in the group: dan, removed, got the
	// events up to his removal as pushes.
	var kinds []uint32
	for _, f := range dan.drain() {
		var p pb.Push
		decodeAs(t, f, codec.CmdPush, &p)
		for _, m := range p.Messages {
			kinds = append(kinds, m.Kind)
		}
	}
	if len(kinds) == 0 || slices.ContainsFunc(kinds, func(k uint32) bool { return k != codec.KindGroupEvent }) {
		t.Fatalf("dan's pushes have kinds %v, want group events", kinds)
	}
}

func TestUnitGroupChangesAreRateLimited(t *testing.T) {
	fe := newUnit(t, func(c *Config) { c.SendRate, c.SendBurst = 0.001, 1 })
	alice := online(t, fe, "alice")
	var g pb.GroupInfo
	alice.ok(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team"}, codec.CmdGroupInfo, &g)
	e := alice.refused(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: g.GroupId}, codec.CodeRateLimited)
	if e.RetryAfterMs == 0 {
		t.Error("RATE_LIMITED without retry_after_ms")
	}
}

func TestUnitChat(t *testing.T) {
	fe := newUnit(t, nil)
	alice, bob := online(t, fe, "alice"), online(t, fe, "bob")
	ack := alice.sendTo("bob", "hello")
	alice.sendTo("bob", "again")
	bob.drain()

	// READ answers the cursor and sends alice a RECEIPT in her seqs.
	var read pb.ReadOK
	bob.ok(codec.CmdRead, &pb.ReadRequest{Peer: "alice", UpToSeq: 1}, codec.CmdReadOK, &read)
	if !proto.Equal(&read, &pb.ReadOK{Peer: "alice", ReadSeq: 1, Unread: 1}) {
		t.Fatalf("READ_OK %v", &read)
	}
	fs := alice.drain()
	if len(fs) != 1 {
		t.Fatalf("alice got %v, want one RECEIPT", fs)
	}
	var rc pb.Receipt
	decodeAs(t, fs[0], codec.CmdReceipt, &rc)
	if rc.Peer != "bob" || rc.User != "bob" || rc.ReadSeq != ack.Seq || rc.MsgId != ack.MsgId {
		t.Fatalf("RECEIPT %v", &rc)
	}
	bob.refused(codec.CmdRead, &pb.ReadRequest{Peer: "alice", GroupId: "g1"}, codec.CodeInvalidArgument)
	bob.refused(codec.CmdRead, &pb.ReadRequest{Peer: "carol"}, codec.CodeUnknownMessage)

	// TYPING has no reply; the peer gets a TYPING_EVENT naming the
	// conversation as it sees it.
	if _, fs := alice.send(codec.CmdTyping, &pb.TypingRequest{Peer: "bob", On: true}); len(fs) != 0 {
		t.Fatalf("TYPING answered %v", fs)
	}
	fs = bob.drain()
	var te pb.TypingEvent
	if len(fs) != 1 {
		t.Fatalf("bob got %v, want one TYPING_EVENT", fs)
	}
	decodeAs(t, fs[0], codec.CmdTypingEvent, &te)
	if te.Peer != "alice" || te.User != "alice" || !te.On || te.ExpiresMs == 0 {
		t.Fatalf("TYPING_EVENT %v", &te)
	}
	alice.refused(codec.CmdTyping, &pb.TypingRequest{Peer: "nobody"}, codec.CodeUnknownRecipient)
	alice.refused(codec.CmdTyping, &pb.TypingRequest{}, codec.CodeInvalidArgument)
	alice.refused(codec.CmdTyping, &pb.TypingRequest{GroupId: "gnone"}, codec.CodeUnknownGroup)

	// RECALL: only the sender; RECALL_OK comes before the event's pushes.
	bob.refused(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId}, codec.CodeNotSender)
	bob.refused(codec.CmdRecall, &pb.MessageRequest{}, codec.CodeInvalidArgument)
	alice.refused(codec.CmdRecall, &pb.MessageRequest{MsgId: 12345}, codec.CodeUnknownMessage)
	seq, fs := alice.send(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId})
	if len(fs) == 0 || fs[0].Seq != seq || fs[0].Command != codec.CmdRecallOK {
		t.Fatalf("RECALL answered %v, want RECALL_OK first", fs)
	}
	var ev pb.EventOK
	decodeAs(t, fs[0], codec.CmdRecallOK, &ev)
	if ev.MsgId != ack.MsgId || ev.Seq == 0 || ev.Duplicate {
		t.Fatalf("RECALL_OK %v", &ev)
	}
	var push pb.Push
	fs = bob.drain()
	if len(fs) != 1 {
		t.Fatalf("bob got %v, want the recall event", fs)
	}
	decodeAs(t, fs[0], codec.CmdPush, &push)
	if len(push.Messages) != 1 {
		t.Fatalf("recall push %v", &push)
	}
	if pushed := push.Messages[0]; pushed.Event != persist.EventRecall || pushed.TargetMsgId != ack.MsgId {
		t.Fatalf("recall push %v", pushed)
	}

	// DELETE is for the caller's own inbox only.
	bob.ok(codec.CmdDelete, &pb.MessageRequest{MsgId: ack.MsgId}, codec.CmdDeleteOK, &ev)
	if ev.MsgId != ack.MsgId {
		t.Fatalf("DELETE_OK %v", &ev)
	}
	if fs := alice.drain(); slices.ContainsFunc(fs, func(f codec.Frame) bool { return f.Command == codec.CmdPush }) {
		t.Fatalf("a delete-for-me reached the sender: %v", fs)
	}

	// HISTORY, READ_COUNT, CONVERSATIONS.
	var hist pb.HistoryOK
	bob.ok(codec.CmdHistory, &pb.HistoryRequest{Peer: "alice"}, codec.CmdHistoryOK, &hist)
	if len(hist.Messages) == 0 || hist.HasMore {
		t.Fatalf("HISTORY_OK %v", &hist)
	}
	bob.refused(codec.CmdHistory, &pb.HistoryRequest{Peer: "alice", BeforeSeq: 1, BeforeMsgId: 1}, codec.CodeInvalidArgument)
	var rcnt pb.ReadCountOK
	alice.ok(codec.CmdReadCount, &pb.ReadCountRequest{Peer: "bob", Seq: 2}, codec.CmdReadCountOK, &rcnt)
	if rcnt.Seq != 2 || rcnt.Members != 1 {
		t.Fatalf("READ_COUNT_OK %v", &rcnt)
	}
	alice.refused(codec.CmdReadCount, &pb.ReadCountRequest{Peer: "bob", Seq: 999}, codec.CodeUnknownMessage)
	var convs pb.ConversationsOK
	alice.ok(codec.CmdConversations, &pb.ConversationsRequest{}, codec.CmdConversationsOK, &convs)
	if len(convs.Conversations) != 1 || convs.Conversations[0].Peer != "bob" {
		t.Fatalf("CONVERSATIONS_OK %v", &convs)
	}
}

// TestUnitChatNeedsTheChatSeam: plainStore (chat_test.go) hides the memory
// store's chat seam, and its NonBlocking promise: requests run on workers.
func TestUnitChatNeedsTheChatSeam(t *testing.T) {
	fe := newUnit(t, func(c *Config) { c.Store = plainStore{memstore.New()} })
	alice := online(t, fe, "alice")
	for cmd, req := range map[codec.Command]proto.Message{
		codec.CmdConversations: &pb.ConversationsRequest{},
		codec.CmdRead:          &pb.ReadRequest{Peer: "bob"},
		codec.CmdRecall:        &pb.MessageRequest{MsgId: 1},
		codec.CmdDelete:        &pb.MessageRequest{MsgId: 1},
		codec.CmdHistory:       &pb.HistoryRequest{Peer: "bob"},
		codec.CmdReadCount:     &pb.ReadCountRequest{Peer: "bob", Seq: 1},
	} {
		alice.refused(cmd, req, codec.CodeUnsupported)
	}
	// TYPING needs no store of conversations; other requests run on a
	// worker with this store and are answered the same.
	bob := online(t, fe, "bob")
	if _, fs := alice.send(codec.CmdTyping, &pb.TypingRequest{Peer: "bob", On: true}); len(fs) != 0 {
		t.Fatalf("TYPING answered %v", fs)
	}
	if fs := bob.drain(); len(fs) != 1 || fs[0].Command != codec.CmdTypingEvent {
		t.Fatalf("bob got %v, want one TYPING_EVENT", fs)
	}
	alice.ok(codec.CmdSync, &pb.SyncRequest{}, codec.CmdSyncOK, nil)
}

// TestHotCommandsAllocateNothing: the route table adds nothing to the cost
// of the commands every client sends all the time (SEND has its own test):
// a HEARTBEAT and a PUSH_ACK that moves the cursor.
func TestHotCommandsAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; the plain run asserts them")
	}
	const rounds = 2200 // warm-up, AllocsPerRun's own warm-up, and its runs
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			fe := newFakeEngine(t, 1, func(c *Config) { c.Store = boundedMemStore(t, 1000) })
			c, ft := fe.conn(0, "alice", "d1", ser)
			hb := encodeFrame(t, ser, codec.CmdHeartbeat, 1, &pb.Heartbeat{Time: 1})
			acks := make([][]byte, rounds)
			for i := range acks {
				acks[i] = encodeFrame(t, ser, codec.CmdPushAck, 2, &pb.PushAck{UpToSeq: uint64(i + 1)})
			}
			ft.in = make([]byte, 0, 256)
			i := 0
			run := func() {
				ft.in = append(append(ft.in, hb...), acks[i]...)
				i++
				fe.feed(c)
				fe.runLoops()
			}
			run()
			if fs := ft.frames(t); len(fs) != 1 || fs[0].Command != codec.CmdHeartbeatOK || fs[0].Seq != 1 {
				t.Fatalf("got %v, want one HEARTBEAT_OK", fs)
			}
			if c.cursor.Load() != 1 {
				t.Fatalf("cursor %d after PUSH_ACK 1", c.cursor.Load())
			}
			for range 100 {
				run()
				ft.out = ft.out[:0]
			}
			if n := testing.AllocsPerRun(1000, func() { run(); ft.out = ft.out[:0] }); n != 0 {
				t.Fatalf("%v allocations per HEARTBEAT and PUSH_ACK", n)
			}
			if cur, err := fe.s.store.Cursor(context.Background(), "alice", "d1"); err != nil || cur != uint64(i) {
				t.Fatalf("stored cursor %d, %v; want %d", cur, err, i)
			}
		})
	}
}
