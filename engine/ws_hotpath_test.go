package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"testing"

	"github.com/gobwas/ws"
	"github.com/imgn/imgn/codec"
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

// appendMasked appends payload as one masked binary message, as a
// browser sends it, without allocating when dst has room.
func appendMasked(dst, payload []byte, mask [4]byte) []byte {
	dst = append(dst, 0x82)
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
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

// TestWebSocketSendPathAllocatesNothing is TestSendPathAllocatesNothing
// with both connections on WebSocket: unmasking the SEND, the ack and the
// push framed as binary messages.
func TestWebSocketSendPathAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; the plain run asserts them")
	}
	for _, ser := range serializers {
		for _, where := range []string{"same loop", "other loop"} {
			t.Run(fmt.Sprint(ser, "/", where), func(t *testing.T) {
				fe := newFakeEngine(t, 2, func(c *Config) { c.Store = boundedMemStore(t, 1000) })
				a, at := fe.wsConn(0, "alice", ser)
				bl := 0
				if where == "other loop" {
					bl = 1
				}
				_, bt := fe.wsConn(bl, "bob", ser)
				frame, next := sendFrame(t, ser, "bob")
				mask := [4]byte{0x12, 0x34, 0x56, 0x78}
				at.in = make([]byte, 0, len(frame)+16)
				round := func() {
					next()
					at.in = appendMasked(at.in, frame, mask)
					fe.feedWS(a)
					fe.runLoops()
				}
				round()
				check := func(name string, out []byte, want codec.Command) {
					ft := &fakeTransport{out: wsPayloads(t, out)}
					if fs := ft.frames(t); len(fs) != 1 || fs[0].Command != want {
						t.Fatalf("%s got %v", name, fs)
					}
				}
				check("sender", at.out, codec.CmdSendAck)
				check("receiver", bt.out, codec.CmdPush)
				run := func() {
					round()
					at.out, bt.out = at.out[:0], bt.out[:0]
				}
				for range 3000 {
					run()
				}
				if n := testing.AllocsPerRun(1000, run); n != 0 {
					t.Fatalf("%v allocations per message", n)
				}
			})
		}
	}
}

func BenchmarkWebSocketSendPath(b *testing.B) {
	for _, ser := range serializers {
		b.Run(ser.String(), func(b *testing.B) {
			fe := newFakeEngine(b, 2, func(c *Config) { c.Store = boundedMemStore(b, 1000) })
			a, at := fe.wsConn(0, "alice", ser)
			_, bt := fe.wsConn(1, "bob", ser)
			frame, next := sendFrame(b, ser, "bob")
			mask := [4]byte{1, 2, 3, 4}
			at.in = make([]byte, 0, len(frame)+16)
			b.ReportAllocs()
			for b.Loop() {
				next()
				at.in = appendMasked(at.in, frame, mask)
				fe.feedWS(a)
				fe.runLoops()
				at.out, bt.out = at.out[:0], bt.out[:0]
			}
		})
	}
}
