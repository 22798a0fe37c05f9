package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// WebSocket transport (docs/protocol.md §10). A node address written as a
// URL, "ws://host:port/path", makes the Client open a WebSocket instead of
// a raw TCP connection; the socket underneath is still opened with
// Config.DialContext, so fault-injecting dialers keep working. The
// WebSocket is wrapped as a net.Conn that carries the frame stream, and
// everything above it (frame reader, writer, heartbeats, reconnects,
// GO_AWAY) is the same as over TCP.

// wsSubprotocol is offered in the handshake; a node selects it (§10.2).
const wsSubprotocol = "imgn.v1"

// wsControlTimeout bounds the write of a pong or close frame, which can
// happen while no request deadline is set.
const wsControlTimeout = time.Second

// ErrWebSocket marks a WebSocket-level failure of a connection: a text
// message, a frame breaking RFC 6455, or a close frame from the node with
// a code other than normal closure or going away. Such a connection ends,
// and the Client reconnects as after any lost connection.
var ErrWebSocket = errors.New("client: websocket")

// isWSAddr reports whether addr names a WebSocket listener (a URL) rather
// than a TCP "host:port".
func isWSAddr(addr string) bool {
	return strings.HasPrefix(addr, "ws://") || strings.HasPrefix(addr, "wss://")
}

// dialNode opens the connection to a node: TCP for "host:port", a
// WebSocket for "ws://host:port/path". ctx bounds the TCP connect and
// the WebSocket handshake.
func dialNode(ctx context.Context, cfg *Config, addr string) (net.Conn, error) {
	if !isWSAddr(addr) {
		return cfg.DialContext(ctx, "tcp", addr)
	}
	if strings.HasPrefix(addr, "wss://") {
		return nil, fmt.Errorf("%w: %s: wss:// is not supported (the client has no TLS settings); use ws://", ErrWebSocket, addr)
	}
	d := ws.Dialer{NetDial: cfg.DialContext, Protocols: []string{wsSubprotocol}}
	nc, br, _, err := d.Dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("websocket handshake: %w", err)
	}
	var src io.Reader = nc
	if br != nil {
		src = io.MultiReader(br, nc) // bytes read past the handshake
	}
	return &wsConn{Conn: nc, br: bufio.NewReaderSize(src, 4096)}, nil
}

// wsConn is a client WebSocket as a byte stream. Read returns the
// payloads of the node's binary messages, in order, as one stream;
// pings are answered, pongs skipped. A close frame from the node is
// answered and ends the stream: io.EOF for normal closure or going away,
// otherwise an error matching ErrWebSocket with the code and reason. A
// text message or a frame breaking RFC 6455 sends a close frame (1003 or
// 1002) and ends the stream with an ErrWebSocket error. Write sends each
// call's bytes as one masked binary message. Close sends a close frame
// (1000) unless a write is in progress or a close was already sent, then
// closes the socket.
//
// As for a net.Conn, one goroutine may Read while others Write and Close;
// writes (data and control frames) are serialized by wmu. Deadlines pass
// through to the socket.
type wsConn struct {
	net.Conn
	br *bufio.Reader

	// Read side, owned by the reading goroutine.
	left   int64 // payload bytes of the current data frame still to read
	frag   bool  // inside a fragmented binary message
	rdErr  error // sticky: the stream has ended
	ctlBuf [ws.MaxControlFramePayloadSize]byte
	hdrBuf [ws.MaxHeaderSize - 2]byte // for ws.ReadHeaderBuffer

	wmu       sync.Mutex
	wbuf      frameBuf // the last frame written, kept for reuse
	hdr       [ws.MaxHeaderSize]byte
	wdl       time.Time // the write deadline last set by the caller
	closeSent bool      // a close frame was written (or the socket failed)
	closeOnce sync.Once
	closeErr  error
}

func (c *wsConn) Read(p []byte) (int, error) {
	if c.rdErr != nil {
		return 0, c.rdErr
	}
	n, err := c.read(p)
	if err != nil {
		c.rdErr = err
	}
	return n, err
}

func (c *wsConn) read(p []byte) (int, error) {
	for {
		if c.left > 0 {
			if int64(len(p)) > c.left {
				p = p[:c.left]
			}
			n, err := c.br.Read(p)
			c.left -= int64(n)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // the socket ended inside a frame
			}
			return n, err
		}
		h, err := ws.ReadHeaderBuffer(c.br, c.hdrBuf[:])
		if err != nil {
			if errors.Is(err, ws.ErrHeaderLengthMSB) || errors.Is(err, ws.ErrHeaderLengthUnexpected) {
				return 0, c.fail(ws.StatusProtocolError, fmt.Sprintf("bad frame header: %v", err))
			}
			return 0, err // the socket's error (io.EOF, a deadline, a reset)
		}
		st := ws.StateClientSide
		if c.frag {
			st |= ws.StateFragmented
		}
		if err := ws.CheckHeader(h, st); err != nil {
			return 0, c.fail(ws.StatusProtocolError, err.Error())
		}
		switch h.OpCode {
		case ws.OpBinary, ws.OpContinuation:
			c.frag = !h.Fin
			c.left = h.Length
		case ws.OpText:
			return 0, c.fail(ws.StatusUnsupportedData, "text message: the protocol is binary only")
		case ws.OpPing, ws.OpPong, ws.OpClose:
			payload := c.ctlBuf[:h.Length] // CheckHeader bounds control payloads to 125
			if _, err := io.ReadFull(c.br, payload); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return 0, err
			}
			switch h.OpCode {
			case ws.OpPing:
				if err := c.writeControl(ws.OpPing, payload); err != nil {
					return 0, fmt.Errorf("websocket pong: %w", err)
				}
			case ws.OpClose:
				return 0, c.closedByPeer(payload)
			}
		default:
			return 0, c.fail(ws.StatusProtocolError, fmt.Sprintf("opcode %d", h.OpCode))
		}
	}
}

// closedByPeer answers the node's close frame (echoing its code) and
// returns how the stream ends.
func (c *wsConn) closedByPeer(payload []byte) error {
	var code ws.StatusCode
	reason := ""
	if len(payload) >= 2 {
		code = ws.StatusCode(binary.BigEndian.Uint16(payload))
		reason = string(payload[2:])
	}
	var echo []byte
	if len(payload) >= 2 {
		echo = payload[:2]
	}
	_ = c.writeControl(ws.OpClose, echo)
	switch {
	case len(payload) == 1:
		return fmt.Errorf("%w: close frame with a 1-byte payload", ErrWebSocket)
	case len(payload) == 0, code == ws.StatusNormalClosure, code == ws.StatusGoingAway:
		return io.EOF
	}
	return fmt.Errorf("%w: closed by the node: %d %q", ErrWebSocket, code, reason)
}

// fail sends a close frame with code for a breach by the node and returns
// the error that ends the stream.
func (c *wsConn) fail(code ws.StatusCode, reason string) error {
	_ = c.writeControl(ws.OpClose, closePayload(code, reason))
	return fmt.Errorf("%w: from the node: %s (closing with %d)", ErrWebSocket, reason, code)
}

func closePayload(code ws.StatusCode, reason string) []byte {
	if len(reason) > ws.MaxControlFramePayloadSize-2 {
		reason = reason[:ws.MaxControlFramePayloadSize-2]
	}
	b := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(b, uint16(code))
	return append(b, reason...)
}

// writeControl writes a pong (for op OpPing) or a close frame; after a
// close frame nothing more is written. The write has its own short
// deadline; the caller's write deadline is restored after it.
func (c *wsConn) writeControl(op ws.OpCode, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeControlLocked(op, payload)
}

func (c *wsConn) writeControlLocked(op ws.OpCode, payload []byte) error {
	if c.closeSent {
		return nil
	}
	if op == ws.OpPing {
		op = ws.OpPong
	} else {
		c.closeSent = true
	}
	b := c.frame(op, payload)
	_ = c.Conn.SetWriteDeadline(time.Now().Add(wsControlTimeout))
	_, err := c.Conn.Write(b)
	_ = c.Conn.SetWriteDeadline(c.wdl)
	return err
}

// Write sends b as one masked binary message.
func (c *wsConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closeSent {
		return 0, fmt.Errorf("%w: write after close", net.ErrClosed)
	}
	// One write per message: header and masked copy (b is the caller's).
	if _, err := c.Conn.Write(c.frame(ws.OpBinary, b)); err != nil {
		c.closeSent = true // a partial frame may be out: nothing more can follow it
		return 0, err
	}
	return len(b), nil
}

// maxKeptWSBuf: a write buffer grown past this (one large frame) is not
// kept after the next write.
const maxKeptWSBuf = 64<<10 + ws.MaxHeaderSize + 16

// frameBuf collects a frame for a single write to the socket.
type frameBuf []byte

func (b *frameBuf) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}

// frame sets c.wbuf to a final frame with op and payload, masked with a
// fresh key as a client must (RFC 6455 section 5.3). wmu is held.
func (c *wsConn) frame(op ws.OpCode, payload []byte) []byte {
	h := ws.Header{Fin: true, OpCode: op, Masked: true, Mask: ws.NewMask(), Length: int64(len(payload))}
	if cap(c.wbuf) > maxKeptWSBuf {
		c.wbuf = nil // one large frame grew it: do not keep that
	}
	c.wbuf = c.wbuf[:0]
	_ = ws.WriteHeaderBuffer(&c.wbuf, h, c.hdr[:]) // cannot fail: frameBuf takes all, hdr is large enough
	start := len(c.wbuf)
	c.wbuf = append(c.wbuf, payload...)
	ws.Cipher(c.wbuf[start:], h.Mask, 0)
	return c.wbuf
}

func (c *wsConn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wdl = t
	return c.Conn.SetWriteDeadline(t)
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetReadDeadline(t)
}

// Close sends a close frame (1000) and closes the socket. A write blocked
// in progress is not waited for: the socket is closed under it (that is
// how a stuck connection is torn down), without a close frame.
func (c *wsConn) Close() error {
	c.closeOnce.Do(func() {
		if c.wmu.TryLock() {
			_ = c.writeControlLocked(ws.OpClose, closePayload(ws.StatusNormalClosure, ""))
			c.wmu.Unlock()
		}
		c.closeErr = c.Conn.Close()
	})
	return c.closeErr
}
