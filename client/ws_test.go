package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/imgn/imgn/engine"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

// The client over WebSocket, against a real engine listening on
// WebSocket (engine.EdgeConfig.WSAddr), and against a hand-written
// misbehaving WebSocket server.

var wsSecret = []byte("ws-test-secret-0123456789")

// startWSEngine runs an engine on store with a WebSocket listener on
// wsAddr ("127.0.0.1:0" for a free port) and returns it with its
// "ws://host:port/" URL. stop shuts it down (also done at cleanup).
func startWSEngine(t *testing.T, store persist.Store, wsAddr string) (s *engine.Server, url string, stop func()) {
	t.Helper()
	cfg := engine.Config{Addr: "127.0.0.1:0", Store: store, JWTSecret: wsSecret, EventLoops: 2, Workers: 8,
		GoAwayWindow: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	cfg.Edge.WSAddr = wsAddr
	s, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}
	t.Cleanup(stop)
	return s, "ws://" + s.WSAddr().String() + "/", stop
}

// wsConfig is a client Config for url with test timings. The request
// timeout is only spent on a failure: a password REGISTER or LOGIN waits
// for an argon2id hash behind the node's few hash slots, and on a loaded
// 2-core machine running other packages' tests beside it that took over
// the 2 s this once was.
func wsConfig(url, user string) Config {
	return Config{Addr: url, User: user, Password: pw, RequestTimeout: 20 * time.Second, DialTimeout: 2 * time.Second,
		ReconnectBase: 10 * time.Millisecond, ReconnectMax: 100 * time.Millisecond, AckInterval: 10 * time.Millisecond}
}

func registerWS(t *testing.T, url string, users ...string) {
	t.Helper()
	for _, u := range users {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		_, err := Register(ctx, wsConfig(url, u))
		cancel()
		if err != nil {
			t.Fatalf("register %s over WebSocket: %v", u, err)
		}
	}
}

// TestWSLoginSendReceiveSync: register, log in, send and receive over
// WebSocket; a Client dialed later gets the backlog by SYNC, in order.
func TestWSLoginSendReceiveSync(t *testing.T) {
	store := memstore.New()
	t.Cleanup(func() { _ = store.Close() })
	_, url, _ := startWSEngine(t, store, "127.0.0.1:0")
	registerWS(t, url, "alice", "bob")

	var dials atomic.Int32
	acfg := wsConfig(url, "alice")
	acfg.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1) // the WebSocket's TCP connection still comes from DialContext
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	alice := dial(t, acfg)
	if dials.Load() != 1 {
		t.Fatalf("DialContext called %d times, want 1", dials.Load())
	}
	bob := dial(t, wsConfig(url, "bob"))
	for i := range 3 {
		if _, err := alice.Send(ctx5(t), "bob", []byte(fmt.Sprintf("m%d", i))); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	got := recv(t, bob, 3)
	for i, m := range got {
		if m.Seq != uint64(i+1) || m.From != "alice" || string(m.Body) != fmt.Sprintf("m%d", i) {
			t.Fatalf("bob's message %d: seq %d from %q body %q", i, m.Seq, m.From, m.Body)
		}
	}
	// A big message crosses as one WebSocket message each way.
	big := []byte(strings.Repeat("x", 60<<10))
	if _, err := bob.Send(ctx5(t), "alice", big); err != nil {
		t.Fatalf("send 60 KiB: %v", err)
	}
	if m := recv(t, alice, 4)[3]; string(m.Body) != string(big) { // alice's own 3 sends, then bob's
		t.Fatalf("alice got %d bytes, want %d", len(m.Body), len(big))
	}
	if m := recv(t, bob, 1)[0]; m.Seq != 4 || len(m.Body) != len(big) { // bob's own copy
		t.Fatalf("bob's copy: seq %d, %d bytes", m.Seq, len(m.Body))
	}
	if err := bob.SyncNow(ctx5(t)); err != nil {
		t.Fatalf("SyncNow: %v", err)
	}
	expectQuiet(t, bob, 100*time.Millisecond) // sync found nothing new: no duplicates

	// A new device of bob replays the whole inbox by SYNC.
	zero := uint64(0)
	cfg := wsConfig(url, "bob")
	cfg.Device, cfg.AfterSeq = "tablet", &zero
	tablet := dial(t, cfg)
	for i, m := range recv(t, tablet, 4) {
		if m.Seq != uint64(i+1) {
			t.Fatalf("tablet's message %d has seq %d", i, m.Seq)
		}
	}
}

// TestWSReconnectAfterServerCloses: the node shuts down (GO_AWAY, close
// 1001), another starts on the same WebSocket address and store; the
// Client reconnects by itself and receives what was sent meanwhile.
func TestWSReconnectAfterServerCloses(t *testing.T) {
	store := memstore.New()
	t.Cleanup(func() { _ = store.Close() })
	s1, url, stop1 := startWSEngine(t, store, "127.0.0.1:0")
	registerWS(t, url, "alice", "bob")
	bob := dial(t, wsConfig(url, "bob"))
	alice := dial(t, wsConfig(url, "alice"))
	if _, err := alice.Send(ctx5(t), "bob", []byte("before")); err != nil {
		t.Fatal(err)
	}
	recv(t, bob, 1)

	stop1()
	_, _, _ = startWSEngine(t, store, s1.WSAddr().String())
	// Send retries across the restart with the same client_msg_id.
	if _, err := alice.Send(ctx5(t), "bob", []byte("after")); err != nil {
		t.Fatalf("send across the restart: %v", err)
	}
	m := recv(t, bob, 1)[0]
	if m.Seq != 2 || string(m.Body) != "after" {
		t.Fatalf("after the restart bob got seq %d %q, want seq 2 \"after\"", m.Seq, m.Body)
	}
	if bob.Err() != nil {
		t.Fatalf("bob stopped: %v", bob.Err())
	}
}

// fakeWSServer accepts one WebSocket and runs serve on it.
func fakeWSServer(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := ws.Upgrade(c); err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		serve(c)
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return "ws://" + ln.Addr().String() + "/"
}

// readClientFrame reads the next frame the client sent, unmasked.
func readClientFrame(t *testing.T, r io.Reader) ws.Frame {
	t.Helper()
	var f ws.Frame
	h, err := ws.ReadHeader(r)
	if err == nil && h.Length > 1<<20 {
		err = fmt.Errorf("a %d-byte frame", h.Length)
	}
	if err == nil {
		f.Header, f.Payload = h, make([]byte, h.Length)
		_, err = io.ReadFull(r, f.Payload)
	}
	if err != nil {
		t.Errorf("read client frame: %v", err)
		return f
	}
	if !f.Header.Masked {
		t.Errorf("client frame %v not masked", f.Header.OpCode)
	}
	return ws.UnmaskFrameInPlace(f)
}

// TestWSServerMisbehaves: what the node sends beyond binary messages. A
// text message or a frame breaking RFC 6455 ends the connection with an
// ErrWebSocket error and a close frame with the matching code; a close
// frame other than 1000/1001 ends it with an error naming the code; a
// ping is answered with a pong carrying its payload.
func TestWSServerMisbehaves(t *testing.T) {
	cases := []struct {
		name      string
		send      []byte // after the client's first message
		wantClose ws.StatusCode
		wantErr   string
	}{
		{"text", ws.MustCompileFrame(ws.NewTextFrame([]byte("hello"))), ws.StatusUnsupportedData, "text message"},
		{"masked", ws.MustCompileFrame(ws.MaskFrame(ws.NewBinaryFrame([]byte("x")))), ws.StatusProtocolError, "mask"},
		{"reserved opcode", []byte{0x83, 0}, ws.StatusProtocolError, "reserved op code"},
		{"stray continuation", []byte{0x80, 0}, ws.StatusProtocolError, "continuation"},
		{"close 4001", ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(4001, "go away please"))), 4001, `4001 "go away please"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			gotClose := make(chan ws.StatusCode, 1)
			url := fakeWSServer(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				if f := readClientFrame(t, br); f.Header.OpCode != ws.OpBinary || string(f.Payload) != "hi" {
					t.Errorf("first client frame %v %q", f.Header.OpCode, f.Payload)
				}
				if _, err := c.Write(tc.send); err != nil {
					t.Errorf("write: %v", err)
				}
				f := readClientFrame(t, br)
				if f.Header.OpCode != ws.OpClose || len(f.Payload) < 2 {
					t.Errorf("client answered with %v %q, want a close frame", f.Header.OpCode, f.Payload)
					return
				}
				gotClose <- ws.StatusCode(binary.BigEndian.Uint16(f.Payload))
			})
			nc, err := dialNode(ctx5(t), &Config{DialContext: (&net.Dialer{}).DialContext}, url)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if _, err := nc.Write([]byte("hi")); err != nil {
				t.Fatal(err)
			}
			_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := nc.Read(make([]byte, 16))
			if !errors.Is(err, ErrWebSocket) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Read = %d, %v; want an ErrWebSocket error mentioning %q", n, err, tc.wantErr)
			}
			if _, err2 := nc.Read(make([]byte, 16)); err2 != err {
				t.Fatalf("second Read = %v, want the same error", err2)
			}
			select {
			case code := <-gotClose:
				if code != tc.wantClose {
					t.Fatalf("client closed with %d, want %d", code, tc.wantClose)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no close frame from the client")
			}
		})
	}
}

// TestWSPingCloseAndFragments: a ping between the fragments of a binary
// message is answered with its payload, the fragments read as one
// stream, a normal close ends it with io.EOF, and Close after that sends
// no second close frame.
func TestWSPingCloseAndFragments(t *testing.T) {
	pong := make(chan string, 1)
	url := fakeWSServer(t, func(c net.Conn) {
		w := func(f ws.Frame) {
			if err := ws.WriteFrame(c, f); err != nil {
				t.Errorf("write: %v", err)
			}
		}
		first := ws.NewFrame(ws.OpBinary, false, []byte("abc"))
		w(first)
		w(ws.NewPingFrame([]byte("p1")))
		w(ws.NewFrame(ws.OpContinuation, true, []byte("def")))
		br := bufio.NewReader(c)
		f := readClientFrame(t, br)
		if f.Header.OpCode != ws.OpPong {
			t.Errorf("client answered the ping with %v", f.Header.OpCode)
		}
		pong <- string(f.Payload)
		w(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))
		if f := readClientFrame(t, br); f.Header.OpCode != ws.OpClose {
			t.Errorf("client answered the close with %v", f.Header.OpCode)
		}
		if _, _, err := wsutil.ReadClientData(c); err == nil {
			t.Error("the client sent something after its close frame")
		}
	})
	nc, err := dialNode(ctx5(t), &Config{DialContext: (&net.Dialer{}).DialContext}, url)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(nc)
	if err != nil || string(got) != "abcdef" {
		t.Fatalf("ReadAll = %q, %v; want \"abcdef\", nil (io.EOF after a normal close)", got, err)
	}
	if p := <-pong; p != "p1" {
		t.Fatalf("pong payload %q, want p1", p)
	}
	if err := nc.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWSDialErrors: wss:// is refused with a clear error, and a listener
// that does not speak WebSocket fails the handshake.
func TestWSDialErrors(t *testing.T) {
	cfg := Config{DialContext: (&net.Dialer{}).DialContext}
	if _, err := dialNode(ctx5(t), &cfg, "wss://127.0.0.1:1/"); !errors.Is(err, ErrWebSocket) || !strings.Contains(err.Error(), "wss") {
		t.Fatalf("wss dial: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = c.Write([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
			_ = c.Close()
		}
	}()
	_, err = Dial(ctx5(t), Config{Addr: "ws://" + ln.Addr().String() + "/", User: "alice", Password: pw, DisableReconnect: true})
	if err == nil || !strings.Contains(err.Error(), "websocket handshake") {
		t.Fatalf("Dial to a non-WebSocket listener: %v", err)
	}
}

// TestWSDialTextMessage: a node answering the login with a text message
// fails Dial with an error matching ErrWebSocket.
func TestWSDialTextMessage(t *testing.T) {
	url := fakeWSServer(t, func(c net.Conn) {
		if _, _, err := wsutil.ReadClientData(c); err != nil { // the LOGIN frame
			t.Errorf("read login: %v", err)
		}
		_ = wsutil.WriteServerText(c, []byte(`{"hello":"json"}`))
		_, _, _ = wsutil.ReadClientData(c) // the client's close frame ends this
	})
	cfg := Config{Addr: url, User: "alice", Password: pw, DisableReconnect: true, RequestTimeout: 5 * time.Second}
	_, err := Dial(ctx5(t), cfg)
	if !errors.Is(err, ErrWebSocket) || !strings.Contains(err.Error(), "text message") {
		t.Fatalf("Dial = %v; want an ErrWebSocket error about the text message", err)
	}
}

// discardConn is a net.Conn whose writes vanish.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error)      { return len(b), nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkWSWrite: the cost of wrapping one 200-byte frame in a masked
// binary message (the client's per-request overhead over TCP).
func BenchmarkWSWrite(b *testing.B) {
	c := &wsConn{Conn: discardConn{}}
	frame := make([]byte, 200)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		if _, err := c.Write(frame); err != nil {
			b.Fatal(err)
		}
	}
}
