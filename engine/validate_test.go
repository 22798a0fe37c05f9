package engine

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// rawCall sends a hand-made body and returns the ERROR answering it (nil
// for another reply).
func (c *rawClient) rawCall(ser codec.SerializerID, cmd codec.Command, body string) *pb.Error {
	c.t.Helper()
	seq := c.seq.Add(1)
	c.writeRaw(codec.AppendRawFrame(nil, ser, cmd, 0, seq, []byte(body)))
	f := c.reply(seq)
	if f.Command != codec.CmdError {
		return nil
	}
	return decodeError(c.t, f)
}

// TestBodiesAreCheckedAtDecode: invalid UTF-8, MessagePack arrays and wrong
// Protobuf wire types are BAD_BODY for every request, before anything is
// stored; the connection stays.
func TestBodiesAreCheckedAtDecode(t *testing.T) {
	s := startServer(t, nil)
	bob := dial(t, s, codec.Protobuf)
	bob.login("bob", "pc")
	c := dial(t, s, codec.JSON)
	for _, tc := range []struct {
		ser  codec.SerializerID
		cmd  codec.Command
		body string
	}{
		{codec.JSON, codec.CmdHeartbeat, "null"},
		{codec.MsgPack, codec.CmdHeartbeat, "\x91\x01"},
		{codec.JSON, codec.CmdRegister, "{\"user\":\"u\xff\",\"password\":\"secret1\"}"},
		{codec.MsgPack, codec.CmdLogin, "\x94\xa5alice\xa0\xa0\xa5phone"},
		{codec.Protobuf, codec.CmdLogin, "\x22\x02\xff\xfe"},
	} {
		if e := c.rawCall(tc.ser, tc.cmd, tc.body); e == nil || codec.ErrorCode(e.Code) != codec.CodeBadBody || e.Fatal {
			t.Fatalf("%s %s %q: got %v, want BAD_BODY", tc.ser, tc.cmd, tc.body, e)
		}
	}
	c.login("alice", "pc")
	for _, tc := range []struct {
		ser  codec.SerializerID
		cmd  codec.Command
		body string
	}{
		// The poisoned inbox of the outside client's report.
		{codec.JSON, codec.CmdSend, "{\"client_msg_id\":\"\xff\xfe\",\"to\":\"bob\",\"body\":\"aGk=\"}"},
		{codec.MsgPack, codec.CmdSend, "\x82\xadclient_msg_id\xc4\x02\xff\xfe\xa2to\xa3bob"},
		{codec.MsgPack, codec.CmdSync, "\x92\x00\x02"},
		{codec.MsgPack, codec.CmdSend, "\x94\xa2c1\xa3bob\x00\xc4\x01x"},
		{codec.JSON, codec.CmdGroupCreate, "{\"name\":\"\xc0\xaf\"}"},
		{codec.JSON, codec.CmdGroupCreate, `{"members":["bob",null]}`},
		{codec.Protobuf, codec.CmdGroupJoin, "\x08\x01"},
		{codec.MsgPack, codec.CmdPresence, "\x81\xa5users\x91\xc4\x01\xff"},
		{codec.JSON, codec.CmdLogout, "[]"},
	} {
		if e := c.rawCall(tc.ser, tc.cmd, tc.body); e == nil || codec.ErrorCode(e.Code) != codec.CodeBadBody || e.Fatal {
			t.Fatalf("%s %s %q: got %v, want BAD_BODY", tc.ser, tc.cmd, tc.body, e)
		}
	}
	// Nothing was stored: bob's inbox is empty, and his SYNC is answered.
	var ok pb.SyncOK
	bob.mustCall(codec.CmdSync, &pb.SyncRequest{}, &ok)
	if ok.HeadSeq != 0 || len(ok.Messages) != 0 {
		t.Fatalf("bob's inbox: %v", &ok)
	}
	c.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
}

// TestLoginAndPresenceArguments: malformed ids and missing credentials are
// INVALID_ARGUMENT (§4.3, §4.6), not AUTH_FAILED or "offline".
func TestLoginAndPresenceArguments(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s, codec.Protobuf)
	for _, req := range []*pb.LoginRequest{
		{User: "bad id", Password: "secret1", Device: "pc"},
		{User: strings.Repeat("a", 65), Password: "secret1", Device: "pc"},
		{User: "alice", Device: "pc"},
		{Device: "pc", Password: "secret1"},
		{User: "alice", Password: "12345", Device: "pc"},
		{User: "alice", Password: strings.Repeat("p", 129), Device: "pc"},
		{User: "bad id", Token: "x.y.z", Device: "pc"},
		{User: "alice", Password: "secret1"},
	} {
		c.wantError(codec.CmdLogin, req, codec.CodeInvalidArgument)
	}
	c.wantError(codec.CmdLogin, &pb.LoginRequest{User: "nobody", Password: "secret1", Device: "pc"}, codec.CodeAuthFailed)
	c.login("alice", "pc")
	for _, users := range [][]string{{"bad id"}, {""}, {"ok", strings.Repeat("x", 65)}} {
		c.wantError(codec.CmdPresence, &pb.PresenceRequest{Users: users}, codec.CodeInvalidArgument)
	}
	var p pb.PresenceOK
	c.mustCall(codec.CmdPresence, &pb.PresenceRequest{Users: []string{"alice", "ghost"}}, &p)
	if len(p.Users) != 2 || !p.Users[0].Online || !p.Users[1].Unknown {
		t.Fatalf("presence: %v", &p)
	}
}

// TestLoginOKAnnouncesIdleTimeout: LOGIN_OK carries the idle timeout the
// connection is held to.
func TestLoginOKAnnouncesIdleTimeout(t *testing.T) {
	s := startServer(t, func(c *Config) { c.HeartbeatInterval = 2 * time.Second; c.IdleTimeout = 7 * time.Second })
	ok := dial(t, s, codec.MsgPack).login("alice", "pc")
	if ok.HeartbeatMs != 2000 || ok.IdleTimeoutMs != 7000 {
		t.Fatalf("heartbeat_ms %d idle_timeout_ms %d", ok.HeartbeatMs, ok.IdleTimeoutMs)
	}
}

// TestGroupCreateIsRateLimited: GROUP_CREATE spends the user's send budget.
func TestGroupCreateIsRateLimited(t *testing.T) {
	s := startServer(t, func(c *Config) { c.SendRate = 0.001; c.SendBurst = 2 })
	c := dial(t, s, codec.JSON)
	c.login("alice", "pc")
	c.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "a"}, nil)
	c.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "1", To: "alice"}, nil)
	e := c.wantError(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "b"}, codec.CodeRateLimited)
	if !e.Retryable || e.RetryAfterMs == 0 {
		t.Fatalf("%v", e)
	}
}

// TestUnencodableReplyAnswersInternal: a reply the server cannot encode is
// replaced by ERROR INTERNAL with the request's seq and counted.
func TestUnencodableReplyAnswersInternal(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s, codec.Protobuf)
	c.login("alice", "pc")
	var sc *conn
	s.sessions.each(func(x *conn) { sc = x })
	if sc.writeMsg(nil, codec.Protobuf, codec.CmdPresenceOK, 77, &pb.PresenceOK{Users: []*pb.UserPresence{{User: "\xff"}}}) {
		t.Fatal("an unencodable frame was reported queued")
	}
	e := decodeError(t, c.reply(77))
	if codec.ErrorCode(e.Code) != codec.CodeInternal || e.Fatal || !e.Retryable {
		t.Fatalf("%v", e)
	}
	poll(t, "encode error counted", func() bool { return testutil.ToFloat64(s.metrics.encodeErrors) == 1 })
	c.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
}

// TestLegacyInvalidUTF8StillSyncs: a message stored with invalid UTF-8
// (before requests were checked) no longer wedges a Protobuf reader: its
// SYNC is answered, the bad bytes replaced.
func TestLegacyInvalidUTF8StillSyncs(t *testing.T) {
	st := memstore.New()
	s := startServer(t, func(c *Config) { c.Store = st })
	c := dial(t, s, codec.Protobuf)
	c.login("bob", "pc")
	if _, err := st.Append(context.Background(), persist.Message{ID: 1, From: "alice", To: "bob", ClientMsgID: "\xff\xfe", Timestamp: 1}, []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	var ok pb.SyncOK
	c.mustCall(codec.CmdSync, &pb.SyncRequest{}, &ok)
	if len(ok.Messages) != 1 || ok.Messages[0].ClientMsgId != "\ufffd" {
		t.Fatalf("%v", &ok)
	}
}

// TestMaxConnsPerIP: connections from one address beyond the cap get
// TOO_MANY_CONNECTIONS at accept; closing one frees a slot.
func TestMaxConnsPerIP(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MaxConnsPerIP = 2 })
	a, b := dial(t, s, codec.JSON), dial(t, s, codec.JSON)
	a.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
	b.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
	before := errorsCounted(t, s, codec.CodeTooManyConnections)
	third := dial(t, s, codec.JSON)
	f, err := third.readFrame(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e := decodeError(t, f)
	if codec.ErrorCode(e.Code) != codec.CodeTooManyConnections || !e.Fatal || !e.Retryable || f.Seq != 0 {
		t.Fatalf("seq %d %v", f.Seq, e)
	}
	third.expectClosed()
	if got := errorsCounted(t, s, codec.CodeTooManyConnections); got != before+1 {
		t.Fatalf("counted %v", got-before)
	}
	_ = a.nc.Close()
	poll(t, "slot freed", func() bool { return s.conns.len() == 1 })
	dial(t, s, codec.JSON).mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
}

// TestAcceptDuringShutdownGetsGoAway: a connection accepted while the node
// stops is told GO_AWAY (JSON, seq 0) and closed, not sent an ERROR.
func TestAcceptDuringShutdownGetsGoAway(t *testing.T) {
	s := startServer(t, func(c *Config) { c.GoAwayWindow = 3 * time.Second })
	stay := dial(t, s, codec.JSON)
	stay.login("alice", "pc") // keeps the shutdown waiting for the window
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	poll(t, "shutting down", func() bool { return s.shutting.Load() })
	nc, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	late := &rawClient{t: t, nc: nc, r: bufio.NewReader(nc), ser: codec.JSON}
	defer nc.Close()
	f, err := late.readFrame(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var g pb.GoAway
	if f.Command != codec.CmdGoAway || f.Serializer != codec.JSON || f.Seq != 0 || codec.Unmarshal(f.Serializer, f.Body, &g) != nil ||
		g.Reason != "shutdown" || g.NodeId != s.cfg.NodeID || g.DelayMs > 3000 {
		t.Fatalf("%s %s seq %d %v", f.Command, f.Serializer, f.Seq, &g)
	}
	late.expectClosed()
	_ = stay.nc.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
