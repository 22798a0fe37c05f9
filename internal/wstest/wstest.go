// Package wstest dials a node's WebSocket listener for tests and tools: the
// connection it returns carries the client protocol's byte stream in
// binary messages, so code written for a TCP connection runs over it
// unchanged.
package wstest

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Dial opens a WebSocket to url ("ws://host:port/" or "wss://..."; tlsConf
// is used for wss, nil for the system roots).
func Dial(ctx context.Context, url string, tlsConf *tls.Config) (net.Conn, error) {
	nc, br, _, err := ws.Dialer{TLSConfig: tlsConf}.Dial(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("websocket dial %s: %w", url, err)
	}
	var src io.Reader = nc
	if br != nil {
		src = io.MultiReader(br, nc) // bytes the handshake read ahead
	}
	return &Conn{Conn: nc, rd: &wsutil.Reader{Source: src, State: ws.StateClientSide}}, nil
}

// Conn is a client WebSocket as a stream: Write sends b as one masked
// binary message; Read returns the payloads of the server's binary
// messages, in order, as one stream (a text message is an error; the
// server's close frame ends the stream with io.EOF). Like net.Conn, one
// reader and one writer may use it at a time.
type Conn struct {
	net.Conn
	rd      *wsutil.Reader
	pending bool // rd is inside a binary message's payload
}

func (c *Conn) Write(b []byte) (int, error) {
	if err := wsutil.WriteClientBinary(c.Conn, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (c *Conn) Read(p []byte) (int, error) {
	for {
		if c.pending {
			n, err := c.rd.Read(p)
			if err == io.EOF {
				c.pending, err = false, nil
			}
			if n > 0 || err != nil {
				return n, err
			}
		}
		h, err := c.rd.NextFrame()
		if err != nil {
			return 0, err
		}
		switch h.OpCode {
		case ws.OpBinary:
			c.pending = true
		case ws.OpClose:
			return 0, io.EOF
		case ws.OpPing, ws.OpPong:
			if err := c.rd.Discard(); err != nil {
				return 0, err
			}
		default:
			return 0, fmt.Errorf("websocket: unexpected %v frame", h.OpCode)
		}
	}
}

// AppendMasked appends payload to dst as one final client frame of opcode
// op (RFC 6455 §5.2), masked with key as every client frame must be, and
// returns the extended slice. It allocates only when dst lacks room. The
// all-zero key leaves the payload's bytes as they are, so it is copied
// without a pass over it (what a load generator wants); a browser's random
// key exercises the server's unmasking.
func AppendMasked(dst []byte, op ws.OpCode, payload []byte, key [4]byte) []byte {
	dst = append(dst, 0x80|byte(op))
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
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	if key != ([4]byte{}) {
		ws.Cipher(dst[start:], key, 0)
	}
	return dst
}
