package engine

import (
	"bytes"
	"io"
	"testing"

	"github.com/gobwas/ws"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/wstest"
)

// fakeSocket is a fakeTransport with the Writev an edge transport needs.
type fakeSocket struct{ fakeTransport }

func (f *fakeSocket) Writev(bs [][]byte) (int, error) {
	n := 0
	for _, b := range bs {
		m, _ := f.Write(b)
		n += m
	}
	return n, nil
}

// wsConn opens an upgraded WebSocket connection on loop i of fe, logged
// in as user.
func (fe *fakeEngine) wsConn(i int, user string, ser codec.SerializerID) (*conn, *fakeSocket) {
	if fe.s.edge == nil {
		fe.s.edge = &edge{srv: fe.s, maxMessage: int64(fe.s.cfg.MaxBody) + codec.HeaderSize}
	}
	c, _ := fe.conn(i, user, "web", ser)
	sock := &fakeSocket{}
	c.tr = &wsTransport{sock: sock, edge: fe.s.edge, state: wsOpen, sc: fe.s.edge.scratchOf(fe.loops[i])}
	return c, sock
}

// feedWS runs what c's socket holds, as OnTraffic does with an edge.
func (fe *fakeEngine) feedWS(c *conn) {
	fe.s.edge.ingest(c)
	fe.feed(c)
}

// wsPayloads returns the concatenated payloads of the server's binary
// messages in out (unmasked, as a server sends them).
func wsPayloads(t testing.TB, out []byte) []byte {
	t.Helper()
	var payload []byte
	r := bytes.NewReader(out)
	for r.Len() > 0 {
		h, err := ws.ReadHeader(r)
		if err != nil {
			t.Fatal(err)
		}
		if h.OpCode != ws.OpBinary || h.Masked || !h.Fin || h.Length > int64(r.Len()) {
			t.Fatalf("server sent %+v", h)
		}
		start := len(payload)
		payload = append(payload, make([]byte, h.Length)...)
		if _, err := io.ReadFull(r, payload[start:]); err != nil {
			t.Fatal(err)
		}
	}
	return payload
}

// wsWire carries frames in masked binary messages, as a browser does.
var wsWire = sendWire{
	open: func(fe *fakeEngine, loop int, user string, ser codec.SerializerID) (*conn, *fakeTransport) {
		c, sock := fe.wsConn(loop, user, ser)
		return c, &sock.fakeTransport
	},
	put: func(in, frame []byte) []byte {
		return wstest.AppendMasked(in, ws.OpBinary, frame, [4]byte{0x12, 0x34, 0x56, 0x78})
	},
	feed: (*fakeEngine).feedWS,
	frames: func(t testing.TB, ft *fakeTransport) []codec.Frame {
		fs := (&fakeTransport{out: wsPayloads(t, ft.out)}).frames(t)
		ft.out = ft.out[:0]
		return fs
	},
}

// TestWebSocketSendPathAllocatesNothing is TestSendPathAllocatesNothing
// with both connections on WebSocket: unmasking the SEND, the ack and the
// push framed as binary messages.
func TestWebSocketSendPathAllocatesNothing(t *testing.T) { testSendPathAllocatesNothing(t, wsWire) }

func BenchmarkWebSocketSendPath(b *testing.B) { benchmarkSendPath(b, wsWire) }
