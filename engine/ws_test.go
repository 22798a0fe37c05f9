package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/gobwas/ws"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// wsClientConn is a test WebSocket client as a net.Conn: Write sends one
// masked binary message, Read returns the payload of the server's binary
// messages as one stream, answers nothing by itself, and records the
// close frame that ends it. rawClient runs over it unchanged.
type wsClientConn struct {
	net.Conn
	br        *bufio.Reader
	pending   []byte
	closeCode ws.StatusCode // from the server's close frame
	closeText string
	gotClose  bool
	pongs     [][]byte
}

func dialWSConn(t *testing.T, addr string, header http.Header) *wsClientConn {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second}
	if header != nil {
		d.Header = ws.HandshakeHeaderHTTP(header)
	}
	nc, br, _, err := d.Dial(context.Background(), "ws://"+addr+"/ws")
	if err != nil {
		t.Fatalf("websocket dial: %v", err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	if br == nil {
		br = bufio.NewReader(nc)
	}
	return &wsClientConn{Conn: nc, br: br}
}

// dialWS is dial over WebSocket.
func dialWS(t *testing.T, s *Server, ser codec.SerializerID) *rawClient {
	t.Helper()
	c := dialWSConn(t, s.WSAddr().String(), nil)
	return &rawClient{t: t, nc: c, r: bufio.NewReaderSize(c, 64<<10), ser: ser}
}

func (c *wsClientConn) Write(b []byte) (int, error) {
	if err := c.writeFrame(ws.OpBinary, true, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// writeFrame writes one masked frame.
func (c *wsClientConn) writeFrame(op ws.OpCode, fin bool, payload []byte) error {
	f := ws.NewFrame(op, fin, append([]byte(nil), payload...))
	return ws.WriteFrame(c.Conn, ws.MaskFrameInPlace(f))
}

func (c *wsClientConn) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		if c.gotClose {
			return 0, io.EOF
		}
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			return 0, err
		}
		if h.Masked {
			return 0, errors.New("server frame is masked")
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, payload); err != nil {
			return 0, err
		}
		switch h.OpCode {
		case ws.OpBinary, ws.OpContinuation:
			c.pending = payload
		case ws.OpClose:
			c.gotClose = true
			if len(payload) >= 2 {
				c.closeCode = ws.StatusCode(binary.BigEndian.Uint16(payload))
				c.closeText = string(payload[2:])
			}
		case ws.OpPong:
			c.pongs = append(c.pongs, payload)
		default:
			return 0, fmt.Errorf("unexpected opcode %v", h.OpCode)
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// expectClose reads until the server's close frame and the end of the
// stream, and returns the close frame's code.
func (c *wsClientConn) expectClose(t *testing.T) ws.StatusCode {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var sink [4096]byte
	for {
		_, err := c.Read(sink[:])
		if err == nil {
			continue
		}
		if !c.gotClose {
			t.Fatalf("connection ended without a close frame: %v", err)
		}
		return c.closeCode
	}
}

func startWSServer(t *testing.T, mod func(*Config)) *Server {
	t.Helper()
	return startServer(t, func(c *Config) {
		c.Edge.WSAddr = "127.0.0.1:0"
		if mod != nil {
			mod(c)
		}
	})
}

func TestWebSocketSpeaksTheProtocolBothWays(t *testing.T) {
	s := startWSServer(t, nil)
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			alice := dialWS(t, s, ser)
			alice.login("wsalice"+ser.String(), "web")
			bob := dial(t, s, ser) // TCP and WebSocket meet in one node
			bob.login("wsbob"+ser.String(), "pc")
			var ack pb.SendAck
			alice.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "w1", To: "wsbob" + ser.String(), Body: []byte("over websocket")}, &ack)
			if p := bob.waitPushes(1); string(p[0].Body) != "over websocket" {
				t.Fatalf("bob got %q", p[0].Body)
			}
			bob.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "t1", To: "wsalice" + ser.String(), Body: []byte("over tcp")}, nil)
			if p := alice.waitPushes(1); string(p[0].Body) != "over tcp" {
				t.Fatalf("alice got %q", p[0].Body)
			}
		})
	}
}

// TestWebSocketMessagesAndFramesAreIndependent: several IMGN frames in
// one message, one frame split over messages, and a message fragmented
// into continuation frames with a ping in between all decode the same.
func TestWebSocketMessagesAndFramesAreIndependent(t *testing.T) {
	s := startWSServer(t, nil)
	c := dialWSConn(t, s.WSAddr().String(), nil)
	rc := &rawClient{t: t, nc: c, r: bufio.NewReaderSize(c, 64<<10), ser: codec.JSON}
	rc.login("frag", "web")
	hb := func(seq uint32) []byte { return encodeFrame(t, codec.JSON, codec.CmdHeartbeat, seq, &pb.Heartbeat{}) }

	// Three frames in one message.
	if _, err := c.Write(append(append(hb(101), hb(102)...), hb(103)...)); err != nil {
		t.Fatal(err)
	}
	// One frame over two messages.
	f := hb(104)
	_, _ = c.Write(f[:5])
	_, _ = c.Write(f[5:])
	// One frame as a fragmented message, a ping between the fragments.
	f = hb(105)
	_ = c.writeFrame(ws.OpBinary, false, f[:3])
	_ = c.writeFrame(ws.OpPing, true, []byte("are you there"))
	_ = c.writeFrame(ws.OpContinuation, false, f[3:10])
	_ = c.writeFrame(ws.OpContinuation, true, f[10:])
	for seq := uint32(101); seq <= 105; seq++ {
		if r := rc.reply(seq); r.Command != codec.CmdHeartbeatOK {
			t.Fatalf("seq %d: got %s", seq, r.Command)
		}
	}
	if len(c.pongs) != 1 || string(c.pongs[0]) != "are you there" {
		t.Fatalf("pongs %q, want the ping's payload once", c.pongs)
	}
}

// TestWebSocketBreachesCloseAsRFC6455Says sends each kind of bad input
// and checks the close frame's status code.
func TestWebSocketBreachesCloseAsRFC6455Says(t *testing.T) {
	s := startWSServer(t, func(c *Config) { c.MaxBody = 1024 })
	limit := 1024 + codec.HeaderSize
	cases := []struct {
		name string
		send func(c *wsClientConn) error
		want ws.StatusCode
	}{
		{"text message", func(c *wsClientConn) error { return c.writeFrame(ws.OpText, true, []byte("hello")) }, wsCloseUnsupported},
		{"unmasked frame", func(c *wsClientConn) error {
			return ws.WriteFrame(c.Conn, ws.NewBinaryFrame([]byte("x")))
		}, wsCloseProtocol},
		{"reserved bits", func(c *wsClientConn) error {
			f := ws.NewBinaryFrame([]byte("x"))
			f.Header.Rsv = 4
			return ws.WriteFrame(c.Conn, ws.MaskFrameInPlace(f))
		}, wsCloseProtocol},
		{"reserved opcode", func(c *wsClientConn) error { return c.writeFrame(ws.OpCode(0x3), true, []byte("x")) }, wsCloseProtocol},
		{"continuation without a message", func(c *wsClientConn) error {
			return c.writeFrame(ws.OpContinuation, true, []byte("x"))
		}, wsCloseProtocol},
		{"new message inside a fragmented one", func(c *wsClientConn) error {
			_ = c.writeFrame(ws.OpBinary, false, []byte("x"))
			return c.writeFrame(ws.OpBinary, true, []byte("y"))
		}, wsCloseProtocol},
		{"fragmented ping", func(c *wsClientConn) error { return c.writeFrame(ws.OpPing, false, []byte("x")) }, wsCloseProtocol},
		{"oversized message", func(c *wsClientConn) error {
			return c.writeFrame(ws.OpBinary, true, make([]byte, limit+1))
		}, wsCloseTooBig},
		{"fragments over the limit", func(c *wsClientConn) error {
			// The first fragment starts a valid frame of the largest
			// size, so the engine waits for the rest instead of failing
			// on its header; the second one takes the message over.
			first := encodeRawFrame(codec.JSON, codec.CmdHeartbeat, 1, make([]byte, 1024))[:limit/2+1]
			if err := c.writeFrame(ws.OpBinary, false, first); err != nil {
				return err
			}
			return c.writeFrame(ws.OpContinuation, true, make([]byte, limit/2+1))
		}, wsCloseTooBig},
		{"fragment declaring 2^63-1 bytes", func(c *wsClientConn) error {
			_ = c.writeFrame(ws.OpBinary, false, []byte("IMGN"))
			h := ws.Header{OpCode: ws.OpContinuation, Fin: true, Masked: true, Length: 1<<63 - 1, Mask: [4]byte{1, 2, 3, 4}}
			return ws.WriteHeader(c.Conn, h)
		}, wsCloseTooBig},
		{"close with a one-byte payload", func(c *wsClientConn) error { return c.writeFrame(ws.OpClose, true, []byte{3}) }, wsCloseProtocol},
		{"close with a reserved code", func(c *wsClientConn) error {
			return c.writeFrame(ws.OpClose, true, ws.NewCloseFrameBody(1005, ""))
		}, wsCloseProtocol},
		{"close reason not UTF-8", func(c *wsClientConn) error {
			return c.writeFrame(ws.OpClose, true, append(ws.NewCloseFrameBody(1000, ""), 0xff, 0xfe))
		}, wsCloseBadData},
		{"close is echoed", func(c *wsClientConn) error {
			return c.writeFrame(ws.OpClose, true, ws.NewCloseFrameBody(4001, "bye"))
		}, 4001},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialWSConn(t, s.WSAddr().String(), nil)
			if err := tc.send(c); err != nil {
				t.Fatal(err)
			}
			if got := c.expectClose(t); got != tc.want {
				t.Fatalf("close code %d (%q), want %d", got, c.closeText, tc.want)
			}
		})
	}
	// A message of exactly the limit is fine.
	c := dialWSConn(t, s.WSAddr().String(), nil)
	rc := &rawClient{t: t, nc: c, r: bufio.NewReaderSize(c, 64<<10), ser: codec.JSON}
	big := encodeFrame(t, codec.JSON, codec.CmdHeartbeat, 9, &pb.Heartbeat{})
	pad := codec.HeaderSize + 1024 - len(big)
	// Pad the body with white space up to MaxBody: still valid JSON.
	body := append(bytes.Repeat([]byte(" "), pad), big[codec.HeaderSize:]...)
	frame := encodeRawFrame(codec.JSON, codec.CmdHeartbeat, 9, body)
	if len(frame) != limit {
		t.Fatalf("frame of %d bytes, want %d", len(frame), limit)
	}
	_, _ = c.Write(frame)
	if r := rc.reply(9); r.Command != codec.CmdHeartbeatOK {
		t.Fatalf("got %s", r.Command)
	}
}

// encodeRawFrame builds a frame around an already encoded body.
func encodeRawFrame(ser codec.SerializerID, cmd codec.Command, seq uint32, body []byte) []byte {
	b := make([]byte, codec.HeaderSize, codec.HeaderSize+len(body))
	copy(b, "IMGN")
	b[4], b[5], b[6] = 1, byte(ser), byte(cmd)
	binary.BigEndian.PutUint32(b[8:], seq)
	binary.BigEndian.PutUint32(b[12:], uint32(len(body)))
	return append(b, body...)
}

// TestWebSocketEngineErrorsArriveBeforeTheClose: a fatal protocol error
// (here FRAME_TOO_LARGE) is an IMGN ERROR frame in a binary message, then
// a normal close.
func TestWebSocketEngineErrorsArriveBeforeTheClose(t *testing.T) {
	s := startWSServer(t, nil)
	c := dialWSConn(t, s.WSAddr().String(), nil)
	rc := &rawClient{t: t, nc: c, r: bufio.NewReaderSize(c, 64<<10), ser: codec.JSON}
	h := encodeRawFrame(codec.JSON, codec.CmdLogin, 3, nil)
	binary.BigEndian.PutUint32(h[12:], 1<<20)
	_, _ = c.Write(h)
	e := decodeError(t, rc.reply(3))
	if codec.ErrorCode(e.Code) != codec.CodeFrameTooLarge || !e.Fatal {
		t.Fatalf("got %v", e)
	}
	if code := c.expectClose(t); code != wsCloseNormal {
		t.Fatalf("close code %d, want 1000", code)
	}
}

func TestWebSocketOrigins(t *testing.T) {
	cases := []struct {
		name    string
		allowed []string
		origin  string // "" sends none
		ok      bool
	}{
		{"no Origin (not a browser)", nil, "", true},
		{"same host by default", nil, "http://HOST", true},
		{"other host by default", nil, "http://evil.example", false},
		{"listed", []string{"https://chat.example.com"}, "https://chat.example.com", true},
		{"not listed", []string{"https://chat.example.com"}, "https://chat.example.com.evil.example", false},
		{"same host when a list is set", []string{"https://chat.example.com"}, "http://HOST", false},
		{"any", []string{"*"}, "http://evil.example", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := startWSServer(t, func(c *Config) { c.Edge.WSOrigins = tc.allowed })
			addr := s.WSAddr().String()
			h := http.Header{}
			if tc.origin != "" {
				h.Set("Origin", strings.Replace(tc.origin, "HOST", addr, 1))
			}
			d := ws.Dialer{Timeout: 5 * time.Second, Header: ws.HandshakeHeaderHTTP(h)}
			nc, _, _, err := d.Dial(context.Background(), "ws://"+addr+"/")
			if nc != nil {
				_ = nc.Close()
			}
			var se ws.StatusError
			switch {
			case tc.ok && err != nil:
				t.Fatalf("refused: %v", err)
			case !tc.ok && !errors.As(err, &se):
				t.Fatalf("want a refusal, got %v", err)
			case !tc.ok && int(se) != http.StatusForbidden:
				t.Fatalf("status %d, want 403", se)
			}
		})
	}
}

// httpGet sends one request line on a fresh connection and returns the
// parsed response.
func httpGet(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(nc, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func TestWebSocketListenerServesTheWebApp(t *testing.T) {
	files := fstest.MapFS{
		"index.html":    {Data: []byte("<!doctype html><title>imgn</title>")},
		"assets/app.js": {Data: []byte("console.log('hi')")},
	}
	s := startWSServer(t, func(c *Config) { c.Edge.WebFiles = files })
	addr := s.WSAddr().String()

	resp := httpGet(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != 200 || string(body) != "<!doctype html><title>imgn</title>" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("missing security headers: %v", resp.Header)
	}

	// Keep-alive: two requests on one connection, then a 404.
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(nc, "GET /assets/app.js HTTP/1.1\r\nHost: x\r\n\r\nHEAD /assets/app.js HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(nc)
	for i, want := range []struct {
		code int
		body string
	}{{200, "console.log('hi')"}, {200, ""}, {404, "not found\n"}} {
		method := "GET"
		if i == 1 {
			method = "HEAD"
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want.code || string(b) != want.body {
			t.Fatalf("response %d: %d %q, want %d %q", i, resp.StatusCode, b, want.code, want.body)
		}
	}

	// A POST, a request head over the limit, and a non-WebSocket request
	// without web files are refused and closed.
	if r := httpGet(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("POST: %d", r.StatusCode)
	}
	if r := httpGet(t, addr, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 9000)+"\r\n\r\n"); r.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("big head: %d", r.StatusCode)
	}
	plain := startWSServer(t, nil)
	if r := httpGet(t, plain.WSAddr().String(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); r.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("no web files: %d", r.StatusCode)
	}
}

// remoteOf returns the client address the engine sees for the only
// connection of s. Call it after a reply on that connection: the loop
// set the address before it queued the reply under c.mu, so reading it
// under c.mu is ordered after the write.
func remoteOf(t *testing.T, s *Server) string {
	t.Helper()
	var addrs []string
	s.conns.each(func(c *conn) {
		c.mu.Lock()
		addrs = append(addrs, c.tr.RemoteAddr().String())
		c.mu.Unlock()
	})
	if len(addrs) != 1 {
		t.Fatalf("%d connections, want 1", len(addrs))
	}
	return addrs[0]
}

func TestProxyProtocolGivesTheClientAddress(t *testing.T) {
	v2 := func(ip [4]byte, port uint16) []byte {
		b := append([]byte(nil), proxyV2Sig...)
		b = append(b, 0x21, 0x11, 0, 12)
		b = append(b, ip[:]...)
		b = append(b, 127, 0, 0, 1)
		b = binary.BigEndian.AppendUint16(b, port)
		return binary.BigEndian.AppendUint16(b, 9090)
	}
	cases := []struct {
		name   string
		header []byte
		want   string // "" : the socket's own address
	}{
		{"v1 TCP4", []byte("PROXY TCP4 203.0.113.7 127.0.0.1 51000 9090\r\n"), "203.0.113.7:51000"},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::1 ::1 51001 9090\r\n"), "[2001:db8::1]:51001"},
		{"v1 UNKNOWN", []byte("PROXY UNKNOWN\r\n"), ""},
		{"v2 TCP4", v2([4]byte{198, 51, 100, 9}, 40000), "198.51.100.9:40000"},
		{"v2 LOCAL", append(append([]byte(nil), proxyV2Sig...), 0x20, 0x00, 0, 0), ""},
	}
	for _, tc := range cases {
		for _, overWS := range []bool{false, true} {
			t.Run(fmt.Sprint(tc.name, " websocket=", overWS), func(t *testing.T) {
				s := startWSServer(t, func(c *Config) { c.Edge.ProxyProtocol = true })
				addr := s.Addr().String()
				if overWS {
					addr = s.WSAddr().String()
				}
				nc, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer nc.Close()
				// The header arrives in two pieces, the first longer than a
				// frame header when the header is: the engine waits for all
				// of it and decodes nothing before.
				cut := len(tc.header) - 2
				_, _ = nc.Write(tc.header[:cut])
				time.Sleep(10 * time.Millisecond)
				_, _ = nc.Write(tc.header[cut:])
				var rc *rawClient
				if overWS {
					d := ws.Dialer{Timeout: 5 * time.Second, NetDial: func(context.Context, string, string) (net.Conn, error) { return nc, nil }}
					wc, br, _, err := d.Dial(context.Background(), "ws://"+addr+"/")
					if err != nil {
						t.Fatal(err)
					}
					if br == nil {
						br = bufio.NewReader(wc)
					}
					c := &wsClientConn{Conn: wc, br: br}
					rc = &rawClient{t: t, nc: c, r: bufio.NewReader(c), ser: codec.JSON}
				} else {
					rc = &rawClient{t: t, nc: nc, r: bufio.NewReader(nc), ser: codec.JSON}
				}
				rc.login("proxied", "d1")
				want := tc.want
				if want == "" {
					want = nc.LocalAddr().String()
				}
				if got := remoteOf(t, s); got != want {
					t.Fatalf("engine sees %s, want %s", got, want)
				}
			})
		}
	}
	t.Run("missing header closes", func(t *testing.T) {
		s := startWSServer(t, func(c *Config) { c.Edge.ProxyProtocol = true })
		rc := dial(t, s, codec.JSON)
		rc.send(codec.CmdHeartbeat, &pb.Heartbeat{})
		rc.expectClosed()
	})
}

func TestParseProxyHeaderRejectsJunk(t *testing.T) {
	for _, b := range []string{
		"GET / HTTP/1.1\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 0123 80\r\n",
		"PROXY TCP4 ::1 5.6.7.8 1 80\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n",
		"PROXY " + strings.Repeat("A", 120),
		"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x00",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcd",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",
	} {
		if n, _, err := parseProxyHeader([]byte(b)); err == nil {
			t.Errorf("%q: accepted (%d bytes)", b, n)
		}
	}
	// Partial headers wait.
	for _, b := range []string{"PRO", "PROXY TCP4 1.2.3.4", "\r\n\r\n\x00", "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x01"} {
		if n, _, err := parseProxyHeader([]byte(b)); n != 0 || err != nil {
			t.Errorf("%q: n=%d err=%v, want wait", b, n, err)
		}
	}
}

// TestWebSocketShutdownGoesAway: on shutdown a WebSocket client gets
// GO_AWAY in a binary message, then a close frame with 1001.
func TestWebSocketShutdownGoesAway(t *testing.T) {
	s := startWSServer(t, func(c *Config) { c.GoAwayWindow = 100 * time.Millisecond })
	c := dialWSConn(t, s.WSAddr().String(), nil)
	rc := &rawClient{t: t, nc: c, r: bufio.NewReaderSize(c, 64<<10), ser: codec.JSON}
	rc.login("wsleaving", "web")
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(t.Context()) }()
	rc.waitFrame(codec.CmdGoAway, 5*time.Second)
	if code := c.expectClose(t); code != wsCloseGoingAway {
		t.Fatalf("close code %d (%q), want 1001", code, c.closeText)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// dialWSContext is a client.Config.DialContext that opens a WebSocket to
// addr: the Go client library's protocol then runs over it unchanged.
func dialWSContext(ctx context.Context, _, addr string) (net.Conn, error) {
	nc, br, _, err := ws.Dialer{}.Dial(ctx, "ws://"+addr+"/")
	if err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReader(nc)
	}
	return &wsClientConn{Conn: nc, br: br}, nil
}

// TestClientOverWebSocketSurvivesNodeRestart: the delivery guarantees of
// TestClientSurvivesNodeRestart (no loss, no duplicate, in order, across
// GO_AWAY and a new node) hold with both clients on WebSocket.
func TestClientOverWebSocketSurvivesNodeRestart(t *testing.T) { clientSurvivesNodeRestart(t, true) }

// TestProxyProtocolCapsTheClientAddress: behind a proxy every connection
// comes from the proxy's address; the per-address cap counts the client
// addresses in the PROXY headers instead, and a refused one is not
// released twice.
func TestProxyProtocolCapsTheClientAddress(t *testing.T) {
	s := startWSServer(t, func(c *Config) { c.Edge.ProxyProtocol = true; c.MaxConnsPerIP = 1 })
	open := func(client string) *rawClient {
		nc, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nc.Close() })
		_, _ = fmt.Fprintf(nc, "PROXY TCP4 %s 127.0.0.1 40000 9090\r\n", client)
		return &rawClient{t: t, nc: nc, r: bufio.NewReader(nc), ser: codec.JSON}
	}
	a := open("198.51.100.1")
	a.login("capa", "d")
	b := open("198.51.100.2") // another client through the same proxy
	b.login("capb", "d")
	over := open("198.51.100.1")
	over.send(codec.CmdHeartbeat, &pb.Heartbeat{})
	f, err := over.readFrame(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeError(t, f); codec.ErrorCode(e.Code) != codec.CodeTooManyConnections || !e.Fatal {
		t.Fatalf("got %v", e)
	}
	over.expectClosed()
	// a's slot is still held: its address is still full.
	again := open("198.51.100.1")
	again.send(codec.CmdHeartbeat, &pb.Heartbeat{})
	if f, err := again.readFrame(10 * time.Second); err != nil || codec.ErrorCode(decodeError(t, f).Code) != codec.CodeTooManyConnections {
		t.Fatalf("a second refusal: %v %v", f, err)
	}
	// Closing a frees its address.
	_ = a.nc.Close()
	poll(t, "capa gone", func() bool { return len(s.Online("capa")) == 0 })
	open("198.51.100.1").login("capa2", "d")
}
