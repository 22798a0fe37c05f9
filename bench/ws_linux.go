package bench

import (
	"bytes"
	"encoding/binary"

	"github.com/gobwas/ws"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/wstest"
)

// WebSocket for the generator (--ws): each connection sends an HTTP
// upgrade, waits for the 101, then carries its frames in binary messages
// (docs/protocol.md §10). Client messages are masked, as RFC 6455 requires,
// with the all-zero key: the payload goes out unchanged, so wrapping costs
// one header and no pass over the bytes. The node sends whole frames in
// unfragmented binary messages.

// wsUpgrade is the upgrade request every connection sends. No Origin: the
// generator is not a browser, so the node's origin check does not apply.
const wsUpgrade = "GET / HTTP/1.1\r\nHost: imbench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: aW1iZW5jaC13cy1rZXkhIQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: imgn.v1\r\n\r\n"

// maxWSPayload bounds a message from the node (a SYNC_OK page can be big).
const maxWSPayload = 16 << 20

func (l *loop) wsUpgradeRequest(*gconn) []byte {
	return append(l.wbuf[:0], wsUpgrade...)
}

// appendWSMessage appends one final, masked (zero key) client frame of
// opcode op carrying payload.
func appendWSMessage(dst []byte, op ws.OpCode, payload []byte) []byte {
	return wstest.AppendMasked(dst, op, payload, [4]byte{})
}

// wsFrames is frames for --ws: the upgrade response first, then
// WebSocket messages whose payloads hold whole frames.
func (l *loop) wsFrames(c *gconn, data []byte, owned bool) {
	if !c.wsUp {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 {
			if len(data) > 8<<10 {
				l.lost(c, "ws: upgrade response over 8 KiB")
				return
			}
			l.keepTail(c, data, owned)
			return
		}
		if !bytes.HasPrefix(data, []byte("HTTP/1.1 101 ")) {
			line, _, _ := bytes.Cut(data, []byte("\r\n"))
			l.lost(c, "ws: upgrade refused: "+string(line))
			return
		}
		c.wsUp = true
		l.sendLogin(c)
		data = data[end+4:]
	}
	var dec codec.Decoder
	dec.MaxBody = maxWSPayload
	for len(data) >= 2 && c.state != stClosed {
		op := data[0] & 0x0f
		if data[1]&0x80 != 0 {
			l.lost(c, "ws: masked message from the node")
			return
		}
		n, hl := uint64(data[1]&0x7f), 2
		if n == 126 {
			if len(data) < 4 {
				break
			}
			n, hl = uint64(binary.BigEndian.Uint16(data[2:])), 4
		} else if n == 127 {
			if len(data) < 10 {
				break
			}
			n, hl = binary.BigEndian.Uint64(data[2:]), 10
		}
		if n > maxWSPayload {
			l.lost(c, "ws: message over 16 MiB")
			return
		}
		if uint64(len(data)-hl) < n {
			break
		}
		payload := data[hl : hl+int(n)]
		data = data[hl+int(n):]
		switch op {
		case 0x2: // binary: whole frames
			for len(payload) > 0 && c.state != stClosed {
				f, ok, err := dec.ParseFrame(payload)
				if err != nil || !ok {
					l.lost(c, "ws: bad frame in a message")
					return
				}
				l.onFrame(c, f.Header, f.Body)
				payload = payload[f.FrameSize():]
			}
		case 0x8:
			l.lost(c, "ws: closed by server")
			return
		case 0x9: // ping
			l.sendRaw(c, appendWSMessage(l.wsbuf[:0], ws.OpPong, payload))
		case 0xA: // pong
		default:
			l.lost(c, "ws: unexpected opcode "+itoa(int64(op)))
			return
		}
	}
	l.keepTail(c, data, owned)
}
