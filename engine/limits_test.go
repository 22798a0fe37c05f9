package engine

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist/memstore"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// errorsCounted reads imgn_errors_total{code} from the server's registry.
func errorsCounted(t *testing.T, s *Server, code codec.ErrorCode) float64 {
	t.Helper()
	return testutil.ToFloat64(s.metrics.errors[code])
}

func TestFramingErrorsCloseWithCode(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MaxBody = 1024 })
	good, _ := codec.AppendFrame(nil, codec.Protobuf, codec.CmdHeartbeat, 0, 9, &pb.Heartbeat{})
	tests := []struct {
		name    string
		frame   []byte
		code    codec.ErrorCode
		ser     codec.SerializerID
		wantSeq uint32
	}{
		// Nothing after a bad magic is trusted: JSON, seq 0 (§2.3).
		{"bad magic", append([]byte("HTTP"), good[4:]...), codec.CodeBadMagic, codec.JSON, 0},
		{"bad version", func() []byte { b := append([]byte{}, good...); b[4] = 7; return b }(), codec.CodeUnsupportedVersion, codec.Protobuf, 9},
		{"unknown serializer answered in JSON", func() []byte { b := append([]byte{}, good...); b[5] = 9; return b }(), codec.CodeUnknownSerializer, codec.JSON, 9},
		{"oversized body", func() []byte {
			b := append([]byte{}, good[:codec.HeaderSize]...)
			binary.BigEndian.PutUint32(b[12:], 1025)
			return b
		}(), codec.CodeFrameTooLarge, codec.Protobuf, 9},
		{"negative-looking length", func() []byte {
			b := append([]byte{}, good[:codec.HeaderSize]...)
			binary.BigEndian.PutUint32(b[12:], 0xFFFFFFFF)
			return b
		}(), codec.CodeFrameTooLarge, codec.Protobuf, 9},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := errorsCounted(t, s, tc.code)
			c := dial(t, s, codec.Protobuf)
			c.writeRaw(tc.frame)
			f, err := c.readFrame(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if f.Serializer != tc.ser || f.Seq != tc.wantSeq {
				t.Fatalf("error frame in %s seq %d", f.Serializer, f.Seq)
			}
			e := decodeError(t, f)
			if codec.ErrorCode(e.Code) != tc.code || !e.Fatal {
				t.Fatalf("got %s fatal=%v", codec.ErrorCode(e.Code), e.Fatal)
			}
			c.expectClosed()
			if got := errorsCounted(t, s, tc.code); got != before+1 {
				t.Fatalf("metric %s = %v, want %v", tc.code, got, before+1)
			}
		})
	}
}

func TestRequestErrorsKeepTheConnection(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s, codec.JSON)
	// Before login: heartbeats are fine, anything else closes.
	c.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
	c.wantError(codec.CmdLogin, &pb.LoginRequest{Token: "not.a.jwt", Device: "pc"}, codec.CodeAuthFailed)
	expired, _ := auth.MintToken(testSecret, "alice", -time.Minute)
	c.wantError(codec.CmdLogin, &pb.LoginRequest{Token: expired, Device: "pc"}, codec.CodeTokenExpired)
	forged, _ := auth.MintToken([]byte("another-secret"), "alice", time.Hour)
	c.wantError(codec.CmdLogin, &pb.LoginRequest{Token: forged, Device: "pc"}, codec.CodeAuthFailed)
	c.wantError(codec.CmdLogin, &pb.LoginRequest{User: "alice", Password: "x", Device: "bad device!"}, codec.CodeInvalidArgument)
	c.wantError(codec.CmdRegister, &pb.RegisterRequest{User: "bad user", Password: "secret1"}, codec.CodeInvalidArgument)
	c.wantError(codec.CmdRegister, &pb.RegisterRequest{User: "shorty", Password: "123"}, codec.CodeInvalidArgument)
	c.login("alice", "pc")
	c.wantError(codec.CmdLogin, &pb.LoginRequest{User: "alice", Password: "whatever", Device: "pc"}, codec.CodeAlreadyLoggedIn)
	c.wantError(codec.CmdRegister, &pb.RegisterRequest{User: "newbie", Password: "secret1"}, codec.CodeAlreadyLoggedIn)
	c.wantError(codec.CmdSend, &pb.SendRequest{ClientMsgId: "1", To: "nobody", Body: []byte("x")}, codec.CodeUnknownRecipient)
	c.wantError(codec.CmdSend, &pb.SendRequest{ClientMsgId: "", To: "alice", Body: []byte("x")}, codec.CodeInvalidArgument)
	c.wantError(codec.CmdSend, &pb.SendRequest{ClientMsgId: strings.Repeat("x", 65), To: "alice"}, codec.CodeInvalidArgument)
	c.wantError(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "2", GroupId: "gnone", Body: []byte("x")}, codec.CodeUnknownGroup)
	c.wantError(codec.CmdPresence, &pb.PresenceRequest{Users: make([]string, 501)}, codec.CodeInvalidArgument)
	// Unknown command, mesh command, undecodable body: error, connection stays.
	c.writeRaw(codec.AppendRawFrame(nil, codec.JSON, 0x66, 0, 100, nil))
	if e := decodeError(t, c.reply(100)); codec.ErrorCode(e.Code) != codec.CodeUnknownCommand || e.Fatal {
		t.Fatalf("unknown command: %v", e)
	}
	c.writeRaw(codec.AppendRawFrame(nil, codec.JSON, 0xC1, 0, 101, nil))
	if e := decodeError(t, c.reply(101)); codec.ErrorCode(e.Code) != codec.CodeUnknownCommand {
		t.Fatalf("mesh command on a client connection: %v", e)
	}
	c.writeRaw(codec.AppendRawFrame(nil, codec.JSON, codec.CmdSend, 0, 102, []byte("{not json")))
	if e := decodeError(t, c.reply(102)); codec.ErrorCode(e.Code) != codec.CodeBadBody || e.Fatal {
		t.Fatalf("bad body: %v", e)
	}
	c.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "ok", To: "alice", Body: []byte("to myself")}, nil)
}

func TestCommandBeforeLoginCloses(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s, codec.MsgPack)
	seq := c.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: "1", To: "bob"})
	e := decodeError(t, c.reply(seq))
	if codec.ErrorCode(e.Code) != codec.CodeNotLoggedIn || !e.Fatal {
		t.Fatalf("got %v", e)
	}
	c.expectClosed()
	// A command queued behind a failed login is refused too.
	c = dial(t, s, codec.MsgPack)
	c.send(codec.CmdLogin, &pb.LoginRequest{User: "ghost", Password: "nopenope", Device: "d"})
	seq = c.send(codec.CmdSync, &pb.SyncRequest{})
	if e := decodeError(t, c.reply(seq)); codec.ErrorCode(e.Code) != codec.CodeNotLoggedIn {
		t.Fatalf("queued after failed login: %v", e)
	}
	c.expectClosed()
}

func TestRateLimit(t *testing.T) {
	// One message back every 1000 s, so no token refills while the test
	// runs, however slow the machine (at 1/s, a second spent on the round
	// trips and the second device's login would refill one, and the send
	// that must be refused would go through).
	s := startServer(t, func(c *Config) { c.SendRate = 0.001; c.SendBurst = 3 })
	c := dial(t, s, codec.Protobuf)
	c.login("alice", "pc")
	for i := range 3 {
		c.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint(i), To: "alice"}, nil)
	}
	e := c.wantError(codec.CmdSend, &pb.SendRequest{ClientMsgId: "3", To: "alice"}, codec.CodeRateLimited)
	if !e.Retryable || e.RetryAfterMs == 0 || e.RetryAfterMs > 1000*1000+1 {
		t.Fatalf("rate limit error %v (want retry_after_ms within the 1000 s refill)", e)
	}
	// The limit is per user: a second device shares the bucket.
	c2 := dial(t, s, codec.Protobuf)
	c2.login("alice", "phone")
	c2.wantError(codec.CmdSend, &pb.SendRequest{ClientMsgId: "4", To: "alice"}, codec.CodeRateLimited)
	// The bucket lasts as long as the user has a session: when the first
	// device leaves, the second (which holds the limiter since its send)
	// and a device logging in afterwards still share the empty one.
	_ = c.nc.Close()
	poll(t, "pc's session to go", func() bool { return len(s.sessions.devices("alice", nil)) == 1 })
	c2.wantError(codec.CmdSend, &pb.SendRequest{ClientMsgId: "5", To: "alice"}, codec.CodeRateLimited)
	c3 := dial(t, s, codec.Protobuf)
	c3.login("alice", "pc")
	c3.wantError(codec.CmdSend, &pb.SendRequest{ClientMsgId: "6", To: "alice"}, codec.CodeRateLimited)
}

func TestLoginAndIdleTimeouts(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.LoginTimeout = 500 * time.Millisecond
		c.HeartbeatInterval = 300 * time.Millisecond
		c.IdleTimeout = 900 * time.Millisecond
	})
	c := dial(t, s, codec.JSON)
	e := decodeError(t, c.waitFrame(codec.CmdError, 5*time.Second))
	if codec.ErrorCode(e.Code) != codec.CodeLoginTimeout || !e.Fatal {
		t.Fatalf("got %v", e)
	}
	c.expectClosed()

	idle := dial(t, s, codec.JSON)
	idle.login("idler", "pc")
	e = decodeError(t, idle.waitFrame(codec.CmdError, 5*time.Second))
	if codec.ErrorCode(e.Code) != codec.CodeIdleTimeout {
		t.Fatalf("got %v", e)
	}
	idle.expectClosed()

	// A client that heartbeats stays.
	live := dial(t, s, codec.JSON)
	live.login("live", "pc")
	for range 8 {
		time.Sleep(200 * time.Millisecond)
		live.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
	}
}

func TestMaxConnections(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MaxConns = 2 })
	a := dial(t, s, codec.JSON)
	a.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
	b := dial(t, s, codec.JSON)
	b.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
	c := dial(t, s, codec.JSON)
	e := decodeError(t, c.waitFrame(codec.CmdError, 5*time.Second))
	if codec.ErrorCode(e.Code) != codec.CodeTooManyConnections || !e.Fatal || !e.Retryable {
		t.Fatalf("got %v", e)
	}
	c.expectClosed()
	if got := testutil.ToFloat64(s.metrics.rejected); got != 1 {
		t.Fatalf("rejected metric %v", got)
	}
}

func TestConnQueueBackpressure(t *testing.T) {
	// Requests queue only for workers: a store that is not in memory. The
	// store holds every Append until the test lets go, and the rest are
	// sent only once the one worker is held in the first send's Append.
	// A queued request counts against the bound until a worker takes it:
	// pipelined at once, the first send could wait in the queue (a worker
	// late to run, or still finishing the LOGIN) while the loop answered
	// the next ones BUSY, and taken only then, freeing room for the 50th,
	// which waited behind the held Append with no reply.
	st := &flakyStore{Store: memstore.New()}
	s := startServer(t, func(c *Config) { c.MaxConnInbound = 300; c.Workers = 1; c.Store = st })
	c := dial(t, s, codec.Protobuf)
	c.login("alice", "pc")
	release := st.holdAppends(t)
	var seqs []uint32
	for i := range 50 {
		seqs = append(seqs, c.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint(i), To: "alice"}))
		if i == 0 {
			poll(t, "the worker held in the first send's Append", func() bool { return st.held.Load() == 1 })
		}
	}
	// The last request arrives behind a held worker and a full queue.
	checkBusy := func(f codec.Frame) {
		t.Helper()
		e := decodeError(t, f)
		if codec.ErrorCode(e.Code) != codec.CodeBusy || !e.Retryable || e.RetryAfterMs == 0 {
			t.Fatalf("got %v", e)
		}
	}
	last := c.reply(seqs[len(seqs)-1])
	if last.Command != codec.CmdError {
		t.Fatalf("the 50th pipelined request with a queue of 300 bytes and a held worker got %v, want BUSY", last.Command)
	}
	checkBusy(last)
	release()
	busy, acked := 1, 0
	for _, q := range seqs[:len(seqs)-1] {
		f := c.reply(q)
		if f.Command == codec.CmdError {
			checkBusy(f)
			busy++
		} else {
			acked++
		}
	}
	// The first send was with the worker and some fitted in the queue:
	// those are stored and acked once the store lets go.
	if acked == 0 || busy == 0 {
		t.Fatalf("%d acked, %d busy", acked, busy)
	}
}

func TestSlowConsumerIsClosed(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MaxOutbound = 64 << 10; c.SendRate = 1e6; c.SendBurst = 1e6 })
	slow := dial(t, s, codec.JSON)
	slow.login("slow", "pc")
	sender := dial(t, s, codec.Protobuf)
	sender.login("sender", "pc")
	body := make([]byte, 8<<10)
	before := testutil.ToFloat64(s.metrics.slowConsumers)
	poll(t, "slow consumer closed", func() bool {
		for i := range 50 {
			seq := sender.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint(time.Now().UnixNano(), i), To: "slow", Body: body})
			sender.reply(seq)
		}
		sender.pushes = nil
		return testutil.ToFloat64(s.metrics.slowConsumers) > before
	})
	// The server has closed its end; the kernel may still hold megabytes
	// for the peer, so the test checks the node's view, not the socket's.
	poll(t, "slow session gone", func() bool { return len(s.Online("slow")) == 0 })
	// The node is fine and the messages are in the inbox for a later sync.
	again := dial(t, s, codec.JSON)
	if lok := again.login("slow", "pc"); lok.HeadSeq < 50 {
		t.Fatalf("inbox head %d", lok.HeadSeq)
	}
}

func TestAdminAPI(t *testing.T) {
	s := startServer(t, nil)
	h := httptest.NewServer(s.AdminHandler(AdminHooks{}))
	defer h.Close()
	a := dial(t, s, codec.JSON)
	a.login("alice", "pc")
	b := dial(t, s, codec.Protobuf)
	b.login("bob", "phone")

	get := func(path string, out any) int {
		resp, err := http.Get(h.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil {
			_ = json.NewDecoder(resp.Body).Decode(out)
		}
		return resp.StatusCode
	}
	post := func(path, body string, out any) int {
		resp, err := http.Post(h.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil {
			_ = json.NewDecoder(resp.Body).Decode(out)
		}
		return resp.StatusCode
	}
	var online struct {
		Online  bool     `json:"online"`
		Devices []string `json:"devices"`
	}
	if get("/admin/online?user=bob", &online) != 200 || !online.Online || online.Devices[0] != "phone" {
		t.Fatalf("online %+v", online)
	}
	if get("/admin/online?user=carol", &online) != 200 || online.Online {
		t.Fatalf("carol online %+v", online)
	}
	if get("/admin/online", nil) != 400 {
		t.Fatal("online without user")
	}
	var bc struct{ Delivered int }
	if post("/admin/broadcast", `{"text":"maintenance at noon"}`, &bc) != 200 || bc.Delivered != 2 {
		t.Fatalf("broadcast %+v", bc)
	}
	for _, c := range []*rawClient{a, b} {
		var n pb.Notice
		f := c.waitFrame(codec.CmdNotice, 5*time.Second)
		if err := codec.Unmarshal(f.Serializer, f.Body, &n); err != nil || n.Text != "maintenance at noon" {
			t.Fatalf("notice %v %v", &n, err)
		}
	}
	var sys struct {
		MsgID uint64 `json:"msg_id"`
		Seq   uint64 `json:"seq"`
	}
	if post("/admin/message", `{"to":"bob","text":"your invoice"}`, &sys) != 200 || sys.Seq != 1 || sys.MsgID == 0 {
		t.Fatalf("system message %+v", sys)
	}
	if p := b.waitPushes(1)[0]; p.From != "" || string(p.Body) != "your invoice" || p.Kind != 1 {
		t.Fatalf("system push %v", p)
	}
	if post("/admin/message", `{"to":"nobody","text":"x"}`, nil) != 404 {
		t.Fatal("system message to unknown user")
	}
	var kick struct{ Kicked int }
	if post("/admin/kick?user=bob", "", &kick) != 200 || kick.Kicked != 1 {
		t.Fatalf("kick %+v", kick)
	}
	f := b.waitFrame(codec.CmdKick, 5*time.Second)
	var k pb.Kick
	if err := codec.Unmarshal(f.Serializer, f.Body, &k); err != nil || codec.ErrorCode(k.Code) != codec.CodeKickAdmin {
		t.Fatalf("kick frame %v", &k)
	}
	b.expectClosed()
	if get("/healthz", nil) != 200 || get("/readyz", nil) != 200 {
		t.Fatal("health")
	}
	resp, err := http.Get(h.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	for _, want := range []string{"imgn_connections ", "imgn_frames_in_total{command=\"login\"}", "imgn_store_append_seconds_bucket", "imgn_errors_total{code=\"KICK_ADMIN\"}", "go_goroutines"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if get("/debug/pprof/", nil) != 200 {
		t.Fatal("pprof index")
	}
}

func TestShutdownSendsGoAway(t *testing.T) {
	s := startServer(t, func(c *Config) { c.GoAwayWindow = time.Second })
	c := dial(t, s, codec.Protobuf)
	c.login("alice", "pc")
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(t.Context()) }()
	f := c.waitFrame(codec.CmdGoAway, 5*time.Second)
	var g pb.GoAway
	if err := codec.Unmarshal(f.Serializer, f.Body, &g); err != nil || g.Reason != "shutdown" || g.NodeId != "n1" || g.DelayMs > 1000 {
		t.Fatalf("go away %v %v", &g, err)
	}
	c.expectClosed()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRebalanceAndDrainAdmin(t *testing.T) {
	s := startServer(t, nil)
	drained := false
	h := httptest.NewServer(s.AdminHandler(AdminHooks{Drain: func() error { drained = true; return nil }}))
	defer h.Close()
	a := dial(t, s, codec.JSON)
	a.login("alice", "pc")
	b := dial(t, s, codec.Protobuf)
	b.login("bob", "pc")
	post := func(path string) (int, map[string]any) {
		resp, err := http.Post(h.URL+path, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if code, _ := post("/admin/rebalance?fraction=0"); code != 400 {
		t.Fatalf("fraction 0: %d", code)
	}
	code, out := post("/admin/rebalance?fraction=1")
	if code != 200 || out["moved"] != float64(2) {
		t.Fatalf("rebalance %d %v", code, out)
	}
	for _, c := range []*rawClient{a, b} {
		var g pb.GoAway
		f := c.waitFrame(codec.CmdGoAway, 5*time.Second)
		if err := codec.Unmarshal(f.Serializer, f.Body, &g); err != nil || g.Reason != "rebalance" || g.DelayMs > 2000 {
			t.Fatalf("go away %v %v", &g, err)
		}
	}
	if code, _ := post("/admin/weight?weight=5"); code != 501 {
		t.Fatalf("weight without hook: %d", code)
	}
	if code, _ := post("/admin/drain"); code != 202 || !drained {
		t.Fatalf("drain: %d %v", code, drained)
	}
}

func TestDrainSaysDrainAndWaitsForClientsToLeave(t *testing.T) {
	s := startServer(t, func(c *Config) { c.GoAwayWindow = 3 * time.Second })
	c := dial(t, s, codec.Protobuf)
	c.login("alice", "pc")
	done := make(chan error, 1)
	go func() { done <- s.Drain(t.Context()) }()
	f := c.waitFrame(codec.CmdGoAway, 5*time.Second)
	var g pb.GoAway
	if err := codec.Unmarshal(f.Serializer, f.Body, &g); err != nil || g.Reason != "drain" {
		t.Fatalf("go away %v %v", &g, err)
	}
	// The client leaves as told; the drain then ends without waiting out
	// the whole window.
	_ = c.nc.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestPasswordAttemptsLimitedPerAddress(t *testing.T) {
	// One attempt back every 1000 s: the third attempt must find the bucket
	// still empty however long the two argon2id hashes before it take (at
	// 0.5/s a token came back whenever they took 2 s, which they do under
	// -race on a loaded machine).
	s := startServer(t, func(c *Config) { c.LoginRatePerIP = 0.001; c.LoginBurstPerIP = 2 })
	c := dial(t, s, codec.JSON)
	c.mustCall(codec.CmdRegister, &pb.RegisterRequest{User: "victim", Password: "right-pw"}, nil)
	c.wantError(codec.CmdLogin, &pb.LoginRequest{User: "victim", Password: "guess-1", Device: "d"}, codec.CodeAuthFailed)
	e := c.wantError(codec.CmdLogin, &pb.LoginRequest{User: "victim", Password: "guess-2", Device: "d"}, codec.CodeRateLimited)
	if !e.Retryable || e.RetryAfterMs == 0 {
		t.Fatalf("rate limit error %v", e)
	}
	// Token logins cost no hash and are not limited.
	c.login("victim", "d")
}

func TestTricklingBytesDoNotCountAsActivity(t *testing.T) {
	s := startServer(t, func(c *Config) { c.HeartbeatInterval = 200 * time.Millisecond; c.IdleTimeout = 600 * time.Millisecond })
	c := dial(t, s, codec.JSON)
	c.login("trickler", "pc")
	frame, _ := codec.AppendFrame(nil, codec.JSON, codec.CmdHeartbeat, 0, 99, &pb.Heartbeat{})
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; i < len(frame)-1 && time.Now().Before(deadline); i++ {
		if _, err := c.nc.Write(frame[i : i+1]); err != nil {
			break // closed: expected
		}
		time.Sleep(150 * time.Millisecond)
	}
	e := decodeError(t, c.waitFrame(codec.CmdError, 5*time.Second))
	if codec.ErrorCode(e.Code) != codec.CodeIdleTimeout {
		t.Fatalf("got %v", e)
	}
}

// TestHeartbeatGrowsWithConnections: the interval announced in LOGIN_OK is
// the configured one until connections/HeartbeatRate seconds exceeds it,
// then grows with the count up to MaxHeartbeatInterval; a connection's idle
// timeout stretches with the interval it was told.
func TestHeartbeatGrowsWithConnections(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.HeartbeatInterval = time.Second
		c.IdleTimeout = 3 * time.Second
		c.HeartbeatRate = 2
		c.MaxHeartbeatInterval = 8 * time.Second
	})
	first := dial(t, s, codec.Protobuf)
	if ok := first.login("u0", "pc"); ok.HeartbeatMs != 1000 {
		t.Fatalf("one connection: heartbeat %d ms, want the configured 1000", ok.HeartbeatMs)
	}
	for range 9 { // 10 connections at 2/s: 5 s
		dial(t, s, codec.Protobuf)
	}
	poll(t, "10 connections", func() bool { return s.conns.len() == 10 })
	c := dial(t, s, codec.Protobuf) // the 11th logs in: 11/2 = 5.5 s, whole seconds
	if ok := c.login("u1", "pc"); ok.HeartbeatMs != 5000 {
		t.Fatalf("11 connections at 2 heartbeats/s: heartbeat %d ms, want 5000", ok.HeartbeatMs)
	}
	var srvConn *conn
	s.sessions.each(func(x *conn) {
		if x.user == "u1" {
			srvConn = x
		}
	})
	if got := s.idleTimeout(srvConn); got != 15*time.Second {
		t.Fatalf("idle timeout %s, want 3 s x 5 = 15 s", got)
	}
	for range 20 {
		dial(t, s, codec.Protobuf)
	}
	poll(t, "31 connections", func() bool { return s.conns.len() == 31 })
	if ok := dial(t, s, codec.Protobuf).login("u2", "pc"); ok.HeartbeatMs != 8000 {
		t.Fatalf("32 connections: heartbeat %d ms, want the 8000 cap", ok.HeartbeatMs)
	}
}

// TestNodeInboundBound: requests queued for workers count against one
// node-wide byte bound; beyond it a request is answered BUSY at once.
func TestNodeInboundBound(t *testing.T) {
	st := newAsyncStore()
	s := startServer(t, func(c *Config) {
		c.Store = &flakyStore{Store: st, slowDelay: 0}
		c.MaxNodeInbound = 2000
		c.Workers = 1
	})
	a := dial(t, s, codec.Protobuf)
	a.login("alice", "pc")
	release := st.holdCommits(t) // the one worker blocks in its first append
	// The rest are sent once the worker is in that append: until a worker
	// takes it, the first send counts against the bound too, and taken
	// late it would free room for the 40th (see TestConnQueueBackpressure).
	base := st.handed.Load()
	var seqs []uint32
	for i := range 40 {
		seqs = append(seqs, a.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint(i), To: "alice", Body: make([]byte, 100)}))
		if i == 0 {
			poll(t, "the worker in the first send's append", func() bool { return st.handed.Load() == base+1 })
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node inbound bytes %d, appends handed to the store %d", s.inBytes.Load(), st.handed.Load())
		}
	})
	f := a.reply(seqs[len(seqs)-1])
	e := decodeError(t, f)
	if codec.ErrorCode(e.Code) != codec.CodeBusy || !e.Retryable {
		t.Fatalf("last of 40 queued sends over a 2000-byte node bound: %v", e)
	}
	if n := s.inBytes.Load(); n > 2000 {
		t.Fatalf("node holds %d queued bytes over its 2000 bound", n)
	}
	release()
	poll(t, "queue drained", func() bool { return s.inBytes.Load() == 0 })
}
