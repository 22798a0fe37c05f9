package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/client/clienttest"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/testutil"
)

const pw = "secret123"

// newServer starts a fake server with users alice, bob and carol.
func newServer(t *testing.T) *clienttest.Server {
	t.Helper()
	s := clienttest.Start(t)
	for _, u := range []string{"alice", "bob", "carol"} {
		s.AddUser(u, pw)
	}
	return s
}

// testConfig is a Config with timings shrunk for tests.
func testConfig(t *testing.T, s *clienttest.Server, user string) Config {
	return Config{
		Addr: s.Addr, User: user, Password: pw,
		RequestTimeout: 2 * time.Second, DialTimeout: 2 * time.Second,
		ReconnectBase: 5 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
		AckInterval: 10 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func dial(t *testing.T, cfg Config) *Client {
	t.Helper()
	// Spent only on a failure; a password login against a real engine
	// waits for an argon2id hash, slow on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// recv reads n messages or fails after 5 s.
func recv(t *testing.T, c *Client, n int) []*pb.Message {
	t.Helper()
	var out []*pb.Message
	timeout := time.After(5 * time.Second)
	for len(out) < n {
		select {
		case m, ok := <-c.Messages():
			if !ok {
				t.Fatalf("Messages closed after %d of %d (err %v)", len(out), n, c.Err())
			}
			out = append(out, m)
		case <-timeout:
			t.Fatalf("received %d of %d messages: %v", len(out), n, seqsOf(out))
		}
	}
	return out
}

// expectQuiet fails if a message arrives within d.
func expectQuiet(t *testing.T, c *Client, d time.Duration) {
	t.Helper()
	select {
	case m, ok := <-c.Messages():
		if ok {
			t.Fatalf("unexpected message seq %d", m.GetSeq())
		}
	case <-time.After(d):
	}
}

func ascending(from, n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(from + i)
	}
	return out
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSendReceiveEverySerializer(t *testing.T) {
	for _, ser := range []codec.SerializerID{codec.JSON, codec.Protobuf, codec.MsgPack} {
		t.Run(ser.String(), func(t *testing.T) {
			s := newServer(t)
			acfg := testConfig(t, s, "alice")
			acfg.Serializer = ser
			bcfg := testConfig(t, s, "bob")
			bcfg.Serializer = ser
			alice, bob := dial(t, acfg), dial(t, bcfg)
			if alice.User() != "alice" || alice.NodeID() != "fake1" || alice.Device() == bob.Device() {
				t.Fatalf("user %q node %q devices %q %q", alice.User(), alice.NodeID(), alice.Device(), bob.Device())
			}
			ack, err := alice.Send(ctx5(t), "bob", []byte("hi bob"), WithKind(3))
			if err != nil {
				t.Fatal(err)
			}
			if ack.GetSeq() != 1 || ack.GetMsgId() == 0 || ack.GetDuplicate() {
				t.Fatalf("ack %v", ack)
			}
			m := recv(t, bob, 1)[0]
			if m.GetSeq() != 1 || m.GetFrom() != "alice" || string(m.GetBody()) != "hi bob" || m.GetKind() != 3 || m.GetMsgId() != ack.GetMsgId() {
				t.Fatalf("bob got %v", m)
			}
			// The sender's own inbox entry comes back from the ack.
			own := recv(t, alice, 1)[0]
			if own.GetSeq() != ack.GetSeq() || own.GetFrom() != "alice" || own.GetTo() != "bob" || string(own.GetBody()) != "hi bob" {
				t.Fatalf("alice's own message %v", own)
			}
			testutil.Until(t, 5*time.Second, "bob's cursor", func() bool { return s.Cursor("bob", bob.Device()) == 1 })
			if bob.LastSeq() != 1 {
				t.Fatalf("LastSeq %d", bob.LastSeq())
			}
		})
	}
}

func TestDialErrors(t *testing.T) {
	s := newServer(t)
	cfg := testConfig(t, s, "alice")
	cfg.Password = "wrong-password"
	_, err := Dial(ctx5(t), cfg)
	var se *Error
	if !errors.As(err, &se) || se.Code != codec.CodeAuthFailed {
		t.Fatalf("wrong password: %v", err)
	}
	cfg = testConfig(t, s, "alice")
	cfg.Addr = "127.0.0.1:1" // nothing listens there
	if _, err := Dial(ctx5(t), cfg); err == nil || !strings.Contains(err.Error(), "dial") {
		t.Fatalf("dial to a closed port: %v", err)
	}
}

func TestRegister(t *testing.T) {
	s := newServer(t)
	for _, ser := range []codec.SerializerID{codec.JSON, codec.Protobuf, codec.MsgPack} {
		cfg := Config{Addr: s.Addr, User: "dave" + ser.String(), Password: pw, Serializer: ser}
		ok, err := Register(ctx5(t), cfg)
		if err != nil || ok.GetUser() != cfg.User {
			t.Fatalf("Register: %v %v", ok, err)
		}
		_, err = Register(ctx5(t), cfg)
		if !errors.Is(err, &Error{Code: codec.CodeUserExists}) {
			t.Fatalf("second Register: %v", err)
		}
		dcfg := testConfig(t, s, cfg.User)
		dial(t, dcfg)
	}
	if _, err := Register(ctx5(t), Config{Addr: s.Addr, User: "x"}); err == nil {
		t.Fatal("Register without a password")
	}
}

func TestTokenLogin(t *testing.T) {
	s := newServer(t)
	s.AddToken("tok-alice", "alice")
	cfg := testConfig(t, s, "")
	cfg.Password, cfg.Token = "", "tok-alice"
	c := dial(t, cfg)
	if c.User() != "alice" {
		t.Fatalf("User() = %q", c.User())
	}
	// TokenSource is asked again on every login.
	var calls atomic.Int32
	cfg.Token = ""
	cfg.TokenSource = func(context.Context) (string, error) { calls.Add(1); return "tok-alice", nil }
	c2 := dial(t, cfg)
	s.Disconnect("alice")
	testutil.Until(t, 5*time.Second, "reconnect", func() bool { return calls.Load() >= 2 && c2.NodeID() != "" })
}

func TestSendRetriesRetryableErrorsWithSameID(t *testing.T) {
	s := newServer(t)
	var mu sync.Mutex
	var seen []clienttest.Request
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
		if r.Command != codec.CmdSend {
			return false
		}
		mu.Lock()
		seen = append(seen, r)
		n := len(seen)
		mu.Unlock()
		switch n {
		case 1:
			c.Error(r, codec.CodeStoreUnavailable, "db down", 0)
			return true
		case 2:
			c.Error(r, codec.CodeRateLimited, "slow down", 60*time.Millisecond)
			return true
		}
		return false
	})
	alice := dial(t, testConfig(t, s, "alice"))
	start := time.Now()
	ack, err := alice.Send(ctx5(t), "bob", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 60*time.Millisecond {
		t.Fatalf("retry_after_ms not honoured: done after %s", time.Since(start))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("server saw %d SENDs, want 3", len(seen))
	}
	id := seen[0].Body.(*pb.SendRequest).GetClientMsgId()
	for i, r := range seen {
		if got := r.Body.(*pb.SendRequest).GetClientMsgId(); got != id || got != ack.GetClientMsgId() {
			t.Fatalf("attempt %d used client_msg_id %q, want %q", i, got, id)
		}
		if r.Seq != seen[0].Seq {
			t.Fatalf("attempt %d used seq %d, want %d", i, r.Seq, seen[0].Seq)
		}
		if resent := r.Flags&codec.FlagResent != 0; resent != (i > 0) {
			t.Fatalf("attempt %d: RESENT flag %v", i, resent)
		}
	}
	if n := len(s.Inbox("bob")); n != 1 {
		t.Fatalf("bob's inbox holds %d messages", n)
	}
}

// TestSendDeadlineKeepsTheServersAnswer: when the caller's deadline ends
// while a retryable error keeps coming back (an owner node down), or while
// a retry is in flight after one (the server slow to answer it), the error
// names both the deadline and the server's code, so the caller sees
// FORWARD_FAILED rather than a bare "context deadline exceeded".
func TestSendDeadlineKeepsTheServersAnswer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answers int32 // SENDs answered with FORWARD_FAILED; later ones get no answer
	}{
		{"between attempts", 1 << 30},
		{"during a retry", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t)
			var sends atomic.Int32
			s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
				if r.Command != codec.CmdSend {
					return false
				}
				if sends.Add(1) <= tc.answers {
					c.Error(r, codec.CodeForwardFailed, "node n3: link lost", 20*time.Millisecond)
				}
				return true
			})
			alice := dial(t, testConfig(t, s, "alice"))
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			_, err := alice.Send(ctx, "bob", []byte("x"))
			var se *Error
			if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &se) || se.Code != codec.CodeForwardFailed || !se.Retryable {
				t.Fatalf("Send = %v, want the deadline wrapping a retryable FORWARD_FAILED", err)
			}
			if n := sends.Load(); n < 2 {
				t.Fatalf("server saw %d SENDs, want retries", n)
			}
		})
	}
}

func TestSendRetriesAfterTimeout(t *testing.T) {
	s := newServer(t)
	var sends atomic.Int32
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
		return r.Command == codec.CmdSend && sends.Add(1) == 1 // drop the first: no reply
	})
	cfg := testConfig(t, s, "alice")
	// Short, so the dropped send times out soon; it also bounds the login
	// and the retry, which must each be answered within it (the retry
	// counts: exactly two sends), so not so short that a loaded machine's
	// slow round trip exceeds it (100 ms could).
	cfg.RequestTimeout = 500 * time.Millisecond
	alice := dial(t, cfg)
	ack, err := alice.Send(ctx5(t), "bob", []byte("x"), WithClientMsgID("fixed-id"))
	if err != nil {
		t.Fatal(err)
	}
	if ack.GetClientMsgId() != "fixed-id" || sends.Load() != 2 || len(s.Inbox("bob")) != 1 {
		t.Fatalf("ack %v after %d sends, inbox %d", ack, sends.Load(), len(s.Inbox("bob")))
	}
}

// The first SEND is stored but its ack is lost with the connection: the
// retry on the next connection gets the original ack (duplicate) and
// nothing is stored twice.
func TestSendSurvivesLostAck(t *testing.T) {
	s := newServer(t)
	var dropped atomic.Bool
	s.SetReplyFilter(func(c *clienttest.Conn, r clienttest.Request, cmd codec.Command) bool {
		if cmd == codec.CmdSendAck && dropped.CompareAndSwap(false, true) {
			c.Close()
			return false
		}
		return true
	})
	alice := dial(t, testConfig(t, s, "alice"))
	bob := dial(t, testConfig(t, s, "bob"))
	ack, err := alice.Send(ctx5(t), "bob", []byte("once"))
	if err != nil {
		t.Fatal(err)
	}
	if !ack.GetDuplicate() || ack.GetSeq() != 1 || s.Logins() != 3 {
		t.Fatalf("ack %v, logins %d", ack, s.Logins())
	}
	if len(s.Inbox("bob")) != 1 || len(s.Inbox("alice")) != 1 {
		t.Fatalf("stored %d/%d times", len(s.Inbox("bob")), len(s.Inbox("alice")))
	}
	if m := recv(t, bob, 1)[0]; string(m.GetBody()) != "once" {
		t.Fatalf("bob got %v", m)
	}
	if m := recv(t, alice, 1)[0]; m.GetSeq() != 1 {
		t.Fatalf("alice got %v", m)
	}
	expectQuiet(t, alice, 100*time.Millisecond)
}

func TestSendErrors(t *testing.T) {
	s := newServer(t)
	alice := dial(t, testConfig(t, s, "alice"))
	_, err := alice.Send(ctx5(t), "nobody", []byte("x"))
	var se *Error
	if !errors.As(err, &se) || se.Code != codec.CodeUnknownRecipient || se.Retryable {
		t.Fatalf("send to unknown user: %v", err)
	}
	if _, err := alice.Send(ctx5(t), "", nil); !errors.Is(err, &Error{Code: codec.CodeInvalidArgument}) {
		t.Fatalf("empty recipient: %v", err)
	}
	// A retryable error forever: the caller's deadline ends the retries.
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
		if r.Command == codec.CmdSend {
			c.Error(r, codec.CodeBusy, "", 10*time.Millisecond)
			return true
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	_, err = alice.Send(ctx, "bob", []byte("x"))
	if !errors.Is(err, context.DeadlineExceeded) || s.Count(codec.CmdSend) < 3 {
		t.Fatalf("err %v after %d attempts", err, s.Count(codec.CmdSend))
	}
}

func TestPushDeliveryInOrderWithCoalescedAcks(t *testing.T) {
	s := newServer(t)
	bob := dial(t, testConfig(t, s, "bob"))
	const n = 300
	for i := range n {
		s.Deliver("alice", "bob", fmt.Appendf(nil, "m%d", i+1))
	}
	got := recv(t, bob, n)
	if !slices.Equal(seqsOf(got), ascending(1, n)) {
		t.Fatalf("seqs %v", seqsOf(got))
	}
	for i, m := range got {
		if string(m.GetBody()) != fmt.Sprintf("m%d", i+1) {
			t.Fatalf("message %d body %q", i, m.GetBody())
		}
	}
	testutil.Until(t, 5*time.Second, "cursor at n", func() bool { return s.Cursor("bob", bob.Device()) == n })
	if acks := s.Count(codec.CmdPushAck); acks >= n/4 {
		t.Fatalf("%d PUSH_ACKs for %d messages: not coalesced", acks, n)
	}
	expectQuiet(t, bob, 50*time.Millisecond)
}

func TestReorderedAndDuplicatedPushes(t *testing.T) {
	s := newServer(t)
	cfg := testConfig(t, s, "bob")
	cfg.GapGrace = time.Hour // the gap must close by pushes alone
	bob := dial(t, cfg)
	testutil.Until(t, 5*time.Second, "login sync", func() bool { return s.Count(codec.CmdSync) == 1 })
	var ms []*pb.Message
	for range 6 {
		ms = append(ms, s.Store("bob", "alice", []byte("x")))
	}
	s.Push("bob", ms[3], ms[4])
	s.Push("bob", ms[2])
	s.Push("bob", ms[1], ms[1], ms[5])
	s.Push("bob", ms[0])
	s.Push("bob", ms[0], ms[5]) // late duplicates
	if got := recv(t, bob, 6); !slices.Equal(seqsOf(got), ascending(1, 6)) {
		t.Fatalf("seqs %v", seqsOf(got))
	}
	expectQuiet(t, bob, 50*time.Millisecond)
	if n := s.Count(codec.CmdSync); n != 1 {
		t.Fatalf("%d SYNCs, want only the login sync", n)
	}
}

func TestGapFilledBySync(t *testing.T) {
	s := newServer(t)
	s.SetPushFilter(func(user string, m *pb.Message) bool { return m.GetSeq() < 2 || m.GetSeq() > 4 })
	cfg := testConfig(t, s, "bob")
	cfg.GapGrace = 20 * time.Millisecond
	bob := dial(t, cfg)
	testutil.Until(t, 5*time.Second, "login sync", func() bool { return s.Count(codec.CmdSync) == 1 })
	for range 6 {
		s.Deliver("alice", "bob", []byte("x"))
	}
	if got := recv(t, bob, 6); !slices.Equal(seqsOf(got), ascending(1, 6)) {
		t.Fatalf("seqs %v", seqsOf(got))
	}
	if n := s.Count(codec.CmdSync); n < 2 {
		t.Fatalf("%d SYNCs: the gap was not synced", n)
	}
	expectQuiet(t, bob, 50*time.Millisecond)
}

func TestSyncPaging(t *testing.T) {
	s := newServer(t)
	s.SetSyncMax(100)
	const n = 1234
	for range n {
		s.Store("bob", "alice", []byte("x"))
	}
	bob := dial(t, testConfig(t, s, "bob"))
	if got := recv(t, bob, n); !slices.Equal(seqsOf(got), ascending(1, n)) {
		t.Fatalf("seqs out of order")
	}
	if pages := s.Count(codec.CmdSync); pages < n/100 {
		t.Fatalf("%d SYNC pages for %d messages", pages, n)
	}
	expectQuiet(t, bob, 50*time.Millisecond)
}

func TestResumeFromCursorAndAfterSeq(t *testing.T) {
	s := newServer(t)
	for range 10 {
		s.Store("bob", "alice", []byte("x"))
	}
	cfg := testConfig(t, s, "bob")
	cfg.Device = "phone"
	bob := dial(t, cfg)
	recv(t, bob, 10)
	testutil.Until(t, 5*time.Second, "cursor", func() bool { return s.Cursor("bob", "phone") == 10 })
	if err := bob.Close(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		s.Store("bob", "alice", []byte("y"))
	}
	bob2 := dial(t, cfg)
	if got := recv(t, bob2, 3); !slices.Equal(seqsOf(got), ascending(11, 3)) {
		t.Fatalf("resumed at %v, want 11..13", seqsOf(got))
	}
	// AfterSeq overrides the cursor: 0 replays everything.
	zero := uint64(0)
	cfg.Device, cfg.AfterSeq = "tablet", &zero
	s.SetCursor("bob", "tablet", 12)
	bob3 := dial(t, cfg)
	if got := recv(t, bob3, 13); !slices.Equal(seqsOf(got), ascending(1, 13)) {
		t.Fatalf("replay got %v", seqsOf(got))
	}
	seven := uint64(7)
	cfg.Device, cfg.AfterSeq = "watch", &seven
	bob4 := dial(t, cfg)
	if got := recv(t, bob4, 6); !slices.Equal(seqsOf(got), ascending(8, 6)) {
		t.Fatalf("AfterSeq 7 got %v", seqsOf(got))
	}
}

// TestStartAtHead: the stream starts after the inbox head at login,
// whatever the cursor or AfterSeq say.
func TestStartAtHead(t *testing.T) {
	s := newServer(t)
	for range 5 {
		s.Store("bob", "alice", []byte("old"))
	}
	cfg := testConfig(t, s, "bob")
	zero := uint64(0)
	cfg.StartAtHead, cfg.AfterSeq = true, &zero
	bob := dial(t, cfg)
	if bob.LastSeq() != 5 {
		t.Fatalf("starts at %d, want the head 5", bob.LastSeq())
	}
	testutil.Until(t, 5*time.Second, "online", func() bool { return s.Online("bob") == 1 })
	s.Deliver("alice", "bob", []byte("new"))
	if got := recv(t, bob, 1); got[0].GetSeq() != 6 || string(got[0].GetBody()) != "new" {
		t.Fatalf("got %v", got)
	}
	expectQuiet(t, bob, 50*time.Millisecond)
}

// TestTokenLoginErrorNamesTheAttempt: a refused token login says it was
// one (the user id is not known before LOGIN_OK).
func TestTokenLoginErrorNamesTheAttempt(t *testing.T) {
	s := newServer(t)
	_, err := Dial(context.Background(), Config{Addr: s.Addr, Token: "not-a-token"})
	if err == nil || !strings.Contains(err.Error(), "client: login with a token at "+s.Addr+": ") {
		t.Fatalf("err %v", err)
	}
}

func TestKickStopsWithoutReconnect(t *testing.T) {
	s := newServer(t)
	bob := dial(t, testConfig(t, s, "bob"))
	s.Kick("bob", codec.CodeKickAdmin, "operator")
	select {
	case <-bob.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("kicked client did not stop")
	}
	err := bob.Err()
	var se *Error
	if !errors.Is(err, ErrKicked) || !errors.As(err, &se) || se.Code != codec.CodeKickAdmin || se.Message != "operator" {
		t.Fatalf("Err() = %v", err)
	}
	if _, ok := <-bob.Messages(); ok {
		t.Fatal("Messages not closed")
	}
	if _, err := bob.Send(ctx5(t), "alice", nil); !errors.Is(err, ErrKicked) {
		t.Fatalf("Send after kick: %v", err)
	}
	if s.Logins() != 1 {
		t.Fatalf("%d logins: a kicked client reconnected", s.Logins())
	}
}

func TestDuplicateLoginKicksOlder(t *testing.T) {
	s := newServer(t)
	cfg := testConfig(t, s, "bob")
	cfg.Device = "phone"
	old := dial(t, cfg)
	newer := dial(t, cfg)
	<-old.Done()
	if !errors.Is(old.Err(), &Error{Code: codec.CodeKickDuplicateLogin}) {
		t.Fatalf("old Err() = %v", old.Err())
	}
	// The fake server drops the old connection from its count when its
	// read loop sees the close, which may come after the client's Done.
	testutil.Until(t, 5*time.Second, "one session left", func() bool { return s.Online("bob") == 1 })
	if newer.Err() != nil {
		t.Fatalf("newer err %v", newer.Err())
	}
}

func TestGoAwayReconnectsAvoidingNode(t *testing.T) {
	s := newServer(t)
	var mu sync.Mutex
	var excludes [][]string
	cfg := testConfig(t, s, "bob")
	cfg.Resolver = func(ctx context.Context, exclude []string) (string, string, error) {
		mu.Lock()
		excludes = append(excludes, slices.Clone(exclude))
		mu.Unlock()
		return s.Addr, "", nil
	}
	bob := dial(t, cfg)
	s.Deliver("alice", "bob", []byte("before"))
	recv(t, bob, 1)
	start := time.Now()
	s.GoAway("bob", 80*time.Millisecond, "drain")
	testutil.Until(t, 5*time.Second, "reconnect", func() bool { return s.Logins() == 2 })
	if d := time.Since(start); d < 80*time.Millisecond {
		t.Fatalf("reconnected after %s, before delay_ms", d)
	}
	mu.Lock()
	if len(excludes) != 2 || len(excludes[0]) != 0 || !slices.Equal(excludes[1], []string{"fake1"}) {
		t.Fatalf("resolver excludes %v", excludes)
	}
	mu.Unlock()
	s.Deliver("alice", "bob", []byte("after"))
	if m := recv(t, bob, 1)[0]; m.GetSeq() != 2 {
		t.Fatalf("after go-away got %v", m)
	}
	if _, err := bob.Send(ctx5(t), "alice", []byte("still works")); err != nil {
		t.Fatal(err)
	}
}

func TestReconnectSyncsMissedMessages(t *testing.T) {
	s := newServer(t)
	bob := dial(t, testConfig(t, s, "bob"))
	s.Deliver("alice", "bob", []byte("1"))
	recv(t, bob, 1)
	s.Disconnect("bob")
	s.Store("bob", "alice", []byte("2"))
	s.Store("bob", "alice", []byte("3"))
	if got := recv(t, bob, 2); !slices.Equal(seqsOf(got), []uint64{2, 3}) {
		t.Fatalf("after reconnect got %v", seqsOf(got))
	}
	if s.Logins() < 2 {
		t.Fatal("no reconnect")
	}
}

func TestSendsInFlightDuringDisconnect(t *testing.T) {
	s := newServer(t)
	// Every 5th SEND closes the connection without an answer.
	var n atomic.Int32
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
		if r.Command == codec.CmdSend && n.Add(1)%5 == 0 {
			c.Close()
			return true
		}
		return false
	})
	alice := dial(t, testConfig(t, s, "alice"))
	const senders = 20
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := range senders {
		wg.Go(func() {
			if _, err := alice.Send(ctx5(t), "bob", fmt.Appendf(nil, "%d", i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := len(s.Inbox("bob")); got != senders {
		t.Fatalf("bob's inbox holds %d, want %d", got, senders)
	}
	// alice's own stream: every sent message exactly once, in seq order.
	if got := recv(t, alice, senders); !slices.Equal(seqsOf(got), ascending(1, senders)) {
		t.Fatalf("alice's stream %v", seqsOf(got))
	}
	expectQuiet(t, alice, 50*time.Millisecond)
}

func TestHeartbeats(t *testing.T) {
	s := newServer(t)
	s.SetHeartbeat(20 * time.Millisecond) // announced in LOGIN_OK
	dial(t, testConfig(t, s, "bob"))
	testutil.Until(t, 5*time.Second, "heartbeats at the server's interval", func() bool { return s.Count(codec.CmdHeartbeat) >= 3 })

	s2 := newServer(t)
	cfg := testConfig(t, s2, "bob")
	cfg.Heartbeat = 15 * time.Millisecond // override
	dial(t, cfg)
	testutil.Until(t, 5*time.Second, "heartbeats at the configured interval", func() bool { return s2.Count(codec.CmdHeartbeat) >= 3 })
}

func TestUnansweredHeartbeatReconnects(t *testing.T) {
	s := newServer(t)
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool { return r.Command == codec.CmdHeartbeat })
	cfg := testConfig(t, s, "bob")
	cfg.Heartbeat = 20 * time.Millisecond
	// The unanswered heartbeat times out after RequestTimeout, which also
	// bounds Dial's login: at 50 ms a loaded machine's slow login round
	// trip failed the Dial. Half a second still ends the dead heartbeat
	// well within the wait below.
	cfg.RequestTimeout = 500 * time.Millisecond
	bob := dial(t, cfg)
	testutil.Until(t, 5*time.Second, "reconnect after a dead heartbeat", func() bool { return s.Logins() >= 2 })
	if bob.Err() != nil {
		t.Fatal(bob.Err())
	}
}

func TestFatalServerErrorReconnects(t *testing.T) {
	s := newServer(t)
	var once atomic.Bool
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
		if r.Command == codec.CmdHeartbeat && once.CompareAndSwap(false, true) {
			r.Seq = 0 // unsolicited
			c.Error(r, codec.CodeIdleTimeout, "idle", 0)
			return true
		}
		return false
	})
	cfg := testConfig(t, s, "bob")
	cfg.Heartbeat = 20 * time.Millisecond
	bob := dial(t, cfg)
	testutil.Until(t, 5*time.Second, "reconnect after IDLE_TIMEOUT", func() bool { return s.Logins() == 2 })
	s.Deliver("alice", "bob", nil)
	recv(t, bob, 1)
}

func TestNotices(t *testing.T) {
	s := newServer(t)
	bob := dial(t, testConfig(t, s, "bob"))
	s.Notice("maintenance at noon")
	select {
	case n := <-bob.Notices():
		if n.GetText() != "maintenance at noon" || n.GetTime() == 0 {
			t.Fatalf("notice %v", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no notice")
	}
}

// A reader that does not read: pushes overflow every bound, are dropped
// and come back by sync; nothing is lost or doubled.
func TestSlowReaderLosesNothing(t *testing.T) {
	s := newServer(t)
	cfg := testConfig(t, s, "bob")
	cfg.ReceiveBuffer, cfg.InboundQueue, cfg.ReorderBuffer = 1, 2, 4
	bob := dial(t, cfg)
	const n = 500
	for range n {
		s.Deliver("alice", "bob", []byte("x"))
	}
	time.Sleep(20 * time.Millisecond) // let the queues overflow
	if got := recv(t, bob, n); !slices.Equal(seqsOf(got), ascending(1, n)) {
		t.Fatalf("seqs %v", seqsOf(got))
	}
	expectQuiet(t, bob, 50*time.Millisecond)
}

func TestCloseUnblocksCalls(t *testing.T) {
	s := newServer(t)
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool { return r.Command == codec.CmdSend })
	alice := dial(t, testConfig(t, s, "alice"))
	errc := make(chan error, 1)
	go func() {
		_, err := alice.Send(context.Background(), "bob", nil)
		errc <- err
	}()
	testutil.Until(t, 5*time.Second, "send on the wire", func() bool { return s.Count(codec.CmdSend) == 1 })
	_ = alice.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Send after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Send still blocked after Close")
	}
	if !errors.Is(alice.Err(), ErrClosed) {
		t.Fatalf("Err() = %v", alice.Err())
	}
	_ = alice.Close() // idempotent
	if err := alice.SyncNow(ctx5(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("SyncNow after Close: %v", err)
	}
}

func TestLogoutFlushesAck(t *testing.T) {
	s := newServer(t)
	cfg := testConfig(t, s, "bob")
	cfg.AckInterval = time.Hour // only Logout's flush can ack
	cfg.AckEvery = 1000
	bob := dial(t, cfg)
	s.Deliver("alice", "bob", nil)
	s.Deliver("alice", "bob", nil)
	recv(t, bob, 2)
	if err := bob.Logout(ctx5(t)); err != nil {
		t.Fatal(err)
	}
	if s.Count(codec.CmdLogout) != 1 || s.Cursor("bob", bob.Device()) != 2 || !errors.Is(bob.Err(), ErrClosed) {
		t.Fatalf("logouts %d cursor %d err %v", s.Count(codec.CmdLogout), s.Cursor("bob", bob.Device()), bob.Err())
	}
	if s.Logins() != 1 {
		t.Fatal("reconnected after logout")
	}
}

func TestDisableReconnect(t *testing.T) {
	s := newServer(t)
	cfg := testConfig(t, s, "bob")
	cfg.DisableReconnect = true
	bob := dial(t, cfg)
	s.Disconnect("bob")
	<-bob.Done()
	if !errors.Is(bob.Err(), ErrConnectionLost) {
		t.Fatalf("Err() = %v", bob.Err())
	}
}

func TestPermanentLoginFailureOnReconnect(t *testing.T) {
	s := newServer(t)
	bob := dial(t, testConfig(t, s, "bob"))
	s.AddUser("bob", "changed-password")
	s.Disconnect("bob")
	select {
	case <-bob.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client kept reconnecting with a rejected password")
	}
	if !errors.Is(bob.Err(), &Error{Code: codec.CodeAuthFailed}) {
		t.Fatalf("Err() = %v", bob.Err())
	}
}

func TestSendOnly(t *testing.T) {
	s := newServer(t)
	for range 5 {
		s.Store("alice", "bob", nil)
	}
	cfg := testConfig(t, s, "alice")
	cfg.SendOnly = true
	alice := dial(t, cfg)
	if _, err := alice.Send(ctx5(t), "bob", []byte("x")); err != nil {
		t.Fatal(err)
	}
	s.Deliver("bob", "alice", nil)
	_ = alice.Close()
	if _, ok := <-alice.Messages(); ok {
		t.Fatal("SendOnly client delivered a message")
	}
	if s.Count(codec.CmdSync) != 0 || s.Count(codec.CmdPushAck) != 0 {
		t.Fatalf("SendOnly client synced (%d) or acked (%d)", s.Count(codec.CmdSync), s.Count(codec.CmdPushAck))
	}
}

func TestSyncNow(t *testing.T) {
	s := newServer(t)
	bob := dial(t, testConfig(t, s, "bob"))
	s.Store("bob", "alice", nil) // no push: only a sync finds it
	if err := bob.SyncNow(ctx5(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-bob.Messages():
		if m.GetSeq() != 1 {
			t.Fatalf("got %v", m)
		}
	default:
		t.Fatal("SyncNow returned before delivering")
	}
}

func TestGroupsAndPresence(t *testing.T) {
	s := newServer(t)
	alice := dial(t, testConfig(t, s, "alice"))
	bob := dial(t, testConfig(t, s, "bob"))
	carol := dial(t, testConfig(t, s, "carol"))
	ctx := ctx5(t)
	g, err := alice.CreateGroup(ctx, "private", "bob")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := carol.JoinGroup(ctx, g.GetGroupId()); !errors.Is(err, &Error{Code: codec.CodeGroupInviteOnly}) {
		t.Fatalf("join of an invite-only group: %v", err)
	}
	g, err = alice.CreateOpenGroup(ctx, "team", "bob")
	if err != nil {
		t.Fatal(err)
	}
	if g.GetOwner() != "alice" || !slices.Equal(g.GetMembers(), []string{"alice", "bob"}) || !g.GetOpen() {
		t.Fatalf("created %v", g)
	}
	if _, err := carol.GroupMembers(ctx, g.GetGroupId()); !errors.Is(err, &Error{Code: codec.CodeNotGroupMember}) {
		t.Fatalf("members by non-member: %v", err)
	}
	if g, err = carol.JoinGroup(ctx, g.GetGroupId()); err != nil || len(g.GetMembers()) != 3 {
		t.Fatalf("join: %v %v", g, err)
	}
	ack, err := alice.SendGroup(ctx, g.GetGroupId(), []byte("hello team"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Client{bob, carol} {
		m := recv(t, c, 1)[0]
		if m.GetGroupId() != g.GetGroupId() || m.GetFrom() != "alice" || string(m.GetBody()) != "hello team" || m.GetMsgId() != ack.GetMsgId() {
			t.Fatalf("%s got %v", c.User(), m)
		}
	}
	if own := recv(t, alice, 1)[0]; own.GetGroupId() != g.GetGroupId() || own.GetSeq() != ack.GetSeq() {
		t.Fatalf("alice's own group message %v", own)
	}
	if g, err = carol.LeaveGroup(ctx, g.GetGroupId()); err != nil || g.GetGroupId() == "" || len(g.GetMembers()) != 0 {
		t.Fatalf("leave: %v %v", g, err)
	}
	if _, err := carol.SendGroup(ctx, g.GetGroupId(), nil); !errors.Is(err, &Error{Code: codec.CodeNotGroupMember}) {
		t.Fatalf("send by non-member: %v", err)
	}
	if _, err := alice.JoinGroup(ctx, "nope"); !errors.Is(err, &Error{Code: codec.CodeUnknownGroup}) {
		t.Fatalf("join unknown: %v", err)
	}
	ps, err := alice.Presence(ctx, "bob", "dave")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || !ps[0].GetOnline() || !slices.Equal(ps[0].GetDevices(), []string{bob.Device()}) || ps[1].GetOnline() {
		t.Fatalf("presence %v", ps)
	}
}

// A client that cannot reach any node keeps trying (with backoff) and
// stops promptly on Close.
func TestCloseWhileReconnecting(t *testing.T) {
	s := newServer(t)
	var fail atomic.Bool
	cfg := testConfig(t, s, "bob")
	cfg.Resolver = func(context.Context, []string) (string, string, error) {
		if fail.Load() {
			return "", "", errors.New("no node")
		}
		return s.Addr, "", nil
	}
	bob := dial(t, cfg)
	fail.Store(true)
	s.Disconnect("bob")
	testutil.Until(t, 5*time.Second, "disconnected", func() bool { return bob.NodeID() == "" })
	errc := make(chan error, 1)
	go func() {
		_, err := bob.Send(context.Background(), "alice", nil) // waits for a connection
		errc <- err
	}()
	time.Sleep(30 * time.Millisecond)
	_ = bob.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("Send: %v", err)
	}
}

func TestMalformedFramesFromServer(t *testing.T) {
	s := newServer(t)
	cfg := testConfig(t, s, "bob")
	cfg.GapGrace = time.Hour // only the undecodable push may trigger the sync
	bob := dial(t, cfg)
	testutil.Until(t, 5*time.Second, "login sync", func() bool { return s.Count(codec.CmdSync) == 1 })
	s.Store("bob", "alice", []byte("hidden"))
	// A PUSH whose body does not decode: its messages are lost, so sync.
	s.WriteRaw("bob", codec.AppendRawFrame(nil, codec.Protobuf, codec.CmdPush, 0, 0, []byte{0xff, 0xff, 0xff}))
	if m := recv(t, bob, 1)[0]; string(m.GetBody()) != "hidden" {
		t.Fatalf("got %v", m)
	}
	// Unknown server commands are ignored; a frame that breaks the framing
	// (bad magic) makes the client reconnect.
	s.WriteRaw("bob", codec.AppendRawFrame(nil, codec.JSON, codec.Command(0x55), 0, 0, []byte("{}")))
	s.WriteRaw("bob", []byte("XXXXXXXXXXXXXXXXXXXX"))
	testutil.Until(t, 5*time.Second, "reconnect after bad framing", func() bool { return s.Logins() == 2 })
	s.Deliver("alice", "bob", []byte("after"))
	if m := recv(t, bob, 1)[0]; m.GetSeq() != 2 {
		t.Fatalf("got %v", m)
	}
}

func TestWrongReplyTypeIsProtocolError(t *testing.T) {
	s := newServer(t)
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
		switch r.Command {
		case codec.CmdPresence:
			c.Reply(r, codec.CmdGroupInfo, &pb.GroupInfo{})
			return true
		case codec.CmdGroupMembers:
			c.Reply(r, codec.CmdError, &pb.Push{Messages: []*pb.Message{{Seq: 1}}}) // not an Error body
			return true
		}
		return false
	})
	alice := dial(t, testConfig(t, s, "alice"))
	if _, err := alice.Presence(ctx5(t), "bob"); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Presence: %v", err)
	}
	if _, err := alice.GroupMembers(ctx5(t), "g1"); err == nil {
		t.Fatal("GroupMembers accepted a garbled error")
	}
	if _, err := alice.Send(ctx5(t), "bob", nil); err != nil { // the connection is still usable
		t.Fatal(err)
	}
}

func TestDialRetriesRetryableLoginErrors(t *testing.T) {
	s := newServer(t)
	var logins atomic.Int32
	s.SetHook(func(c *clienttest.Conn, r clienttest.Request) bool {
		if r.Command != codec.CmdLogin {
			return false
		}
		if logins.Add(1) <= 2 {
			c.Error(r, codec.CodeStoreUnavailable, "db down", 0)
			return true
		}
		return false
	})
	c := dial(t, testConfig(t, s, "alice"))
	if logins.Load() != 3 || c.User() != "alice" {
		t.Fatalf("logins %d", logins.Load())
	}
	// A final error is not retried.
	var wrong atomic.Int32
	s.SetHook(func(_ *clienttest.Conn, r clienttest.Request) bool {
		if r.Command == codec.CmdLogin {
			wrong.Add(1)
		}
		return false
	})
	cfg := testConfig(t, s, "alice")
	cfg.Password = "wrong-password"
	if _, err := Dial(t.Context(), cfg); !errors.Is(err, &Error{Code: codec.CodeAuthFailed}) {
		t.Fatalf("wrong password: %v", err)
	}
	if wrong.Load() != 1 {
		t.Fatalf("AUTH_FAILED was tried %d times, want once", wrong.Load())
	}
}
