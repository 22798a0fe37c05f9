package engine

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// WebSocket on the event loops. A connection accepted on a WebSocket
// listener gets a wsTransport: it answers the HTTP request (the upgrade
// handshake, or a static file of the browser app), then reads RFC 6455
// frames straight from gnet's inbound buffer on the loop, unmasks the
// payload of binary messages into its own buffer, and offers that buffer
// to the frame decoder through Peek and Discard: the engine sees the same
// byte stream of IMGN frames as on TCP (a message may carry several
// frames, a frame may span messages). Control frames are answered on the
// loop. Output is wrapped in one binary frame per write.
//
// Nothing here starts a goroutine; every method runs on the connection's
// loop. An idle upgraded connection holds no buffer: the payload buffer is
// pooled and returned once the engine has consumed it.

// wsState is where a WebSocket connection is in its life.
type wsState uint8

const (
	wsHTTP wsState = iota // reading HTTP requests: the upgrade, or static files
	wsOpen                // upgraded: binary messages both ways
	wsDone                // closing: nothing more is read or written
)

// Status codes of the close frames the node sends (RFC 6455 section 7.4.1).
const (
	wsCloseNormal      = ws.StatusNormalClosure           // 1000: the engine closed the connection
	wsCloseGoingAway   = ws.StatusGoingAway               // 1001: the node is shutting down
	wsCloseProtocol    = ws.StatusProtocolError           // 1002: a frame broke RFC 6455
	wsCloseUnsupported = ws.StatusUnsupportedData         // 1003: a text message
	wsCloseBadData     = ws.StatusInvalidFramePayloadData // 1007: a close reason not in UTF-8
	wsCloseTooBig      = ws.StatusMessageTooBig           // 1009: a message over the limit
)

// wsSubprotocol is the subprotocol the node accepts when a client offers
// it (optional: a client that offers none gets the same protocol).
const wsSubprotocol = "imgn.v1"

// wsTransport is the transport of a WebSocket connection (see above).
type wsTransport struct {
	sock   socket
	edge   *edge
	remote *net.TCPAddr // from a PROXY header or the TLS socket; nil: the socket's

	in  *[]byte // unmasked payload not yet consumed by the engine; nil when none
	off int     // (*in)[:off] has been consumed

	left     int64   // payload bytes of the current data frame still to read
	msgLen   int64   // payload bytes of the current message so far
	mask     [4]byte // the current data frame's masking key
	maskOff  int     // bytes of the current frame unmasked so far
	state    wsState
	frag     bool // inside a fragmented message
	proxy    bool // a PROXY header is expected and not read yet
	closeSet bool // closeCode and closeText are chosen

	closeCode ws.StatusCode
	closeText string
	sc        *wsScratch // the loop's (see wsScratch)
}

// wsScratch is the room a WebSocket transport needs while it writes: the
// frame header and the vector handed to Writev must outlive the call
// (they go through an interface, so they cannot live on the stack), and
// keeping them in every connection would cost 60-odd bytes each. One
// wsScratch per event loop serves all its connections, since a
// transport's methods run on its loop only.
type wsScratch struct {
	hdr  [ws.MaxHeaderSize]byte
	iov  [2][]byte
	ctrl [ws.MaxHeaderSize + ws.MaxControlFramePayloadSize]byte
}

var wsBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// maxPooledWS: a payload buffer grown past this (a burst of big frames)
// is left to the garbage collector.
const maxPooledWS = 256 << 10

func (w *wsTransport) RemoteAddr() net.Addr {
	if w.remote != nil {
		return w.remote
	}
	return w.sock.RemoteAddr()
}

// Peek returns the next n bytes of unmasked payload. The slice is valid
// until the next Discard or ingest.
func (w *wsTransport) Peek(n int) ([]byte, error) {
	if w.in == nil || n > len(*w.in)-w.off {
		return nil, io.ErrShortBuffer
	}
	return (*w.in)[w.off : w.off+n], nil
}

// Discard consumes n bytes of unmasked payload; the buffer goes back to
// the pool once it is all consumed.
func (w *wsTransport) Discard(n int) (int, error) {
	if w.in == nil {
		return 0, nil
	}
	n = min(n, len(*w.in)-w.off)
	w.off += n
	if w.off == len(*w.in) {
		w.release()
	}
	return n, nil
}

func (w *wsTransport) release() {
	b := w.in
	w.in, w.off = nil, 0
	if cap(*b) <= maxPooledWS {
		*b = (*b)[:0]
		wsBufPool.Put(b)
	}
}

// InboundBuffered is the unmasked payload not yet consumed.
func (w *wsTransport) InboundBuffered() int {
	if w.in == nil {
		return 0
	}
	return len(*w.in) - w.off
}

func (w *wsTransport) OutboundBuffered() int { return w.sock.OutboundBuffered() }

// Write sends b (whole IMGN frames) as one binary message. Before the
// upgrade and after a close frame, output is dropped: the peer is not
// speaking WebSocket (yet, or any more).
func (w *wsTransport) Write(b []byte) (int, error) {
	if w.state != wsOpen {
		return len(b), nil
	}
	sc := w.sc
	sc.iov[0], sc.iov[1] = appendHeader(sc.hdr[:0], ws.OpBinary, len(b)), b
	_, err := w.sock.Writev(sc.iov[:])
	sc.iov[0], sc.iov[1] = nil, nil
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// appendHeader appends the header of an unmasked final frame to dst. It
// is written out here (RFC 6455 section 5.2) rather than with gobwas/ws's
// writer, which takes an io.Writer and so costs an allocation per frame.
func appendHeader(dst []byte, op ws.OpCode, n int) []byte {
	dst = append(dst, 0x80|byte(op))
	switch {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xffff:
		dst = append(dst, 126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return dst
}

// Close sends a close frame (the code chosen by fail or by the peer's
// close, else 1000, or 1001 while the node shuts down) and closes the
// socket once what is queued is written.
func (w *wsTransport) Close() error {
	if w.state == wsOpen {
		code := w.closeCode
		if !w.closeSet {
			code = wsCloseNormal
			if w.edge.srv.shutting.Load() {
				code = wsCloseGoingAway
			}
		}
		w.writeControl(ws.OpClose, closeBody(code, w.closeText, w.closeSet && code == 0))
	}
	w.state = wsDone
	if w.in != nil {
		w.release()
	}
	return w.sock.Close()
}

// closeBody is the payload of a close frame: the code and reason, or
// nothing when the peer's close had no code (empty).
func closeBody(code ws.StatusCode, reason string, empty bool) []byte {
	if empty {
		return nil
	}
	if len(reason) > 123 {
		reason = reason[:123]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	b := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(b, uint16(code))
	copy(b[2:], reason)
	return b
}

// writeControl writes one control frame (payload at most 125 bytes) in a
// single write.
func (w *wsTransport) writeControl(op ws.OpCode, payload []byte) {
	b := append(appendHeader(w.sc.ctrl[:0], op, len(payload)), payload...)
	_, _ = w.sock.Write(b)
}

// fail closes the connection for a breach of RFC 6455: a close frame with
// code is written by Close once the engine flushes, and nothing more is
// read.
func (w *wsTransport) fail(l *loop, c *conn, code ws.StatusCode, reason string) {
	if !w.closeSet {
		w.closeCode, w.closeText, w.closeSet = code, reason, true
	}
	_, _ = w.sock.Discard(w.sock.InboundBuffered())
	if w.state == wsHTTP {
		w.state = wsDone
	}
	c.closeAfterFlush(l)
}

// ingest reads what gnet has buffered: the PROXY header, HTTP requests
// before the upgrade, frames after it. It returns false when nothing more
// is to be decoded (the connection is closing).
func (w *wsTransport) ingest(l *loop, c *conn) bool {
	if w.proxy {
		done, err := takeProxyHeader(l, w.sock, &w.remote)
		if err != nil {
			w.state = wsDone
			w.fail(l, c, 0, "")
			return false
		}
		if !done {
			return false
		}
		w.proxy = false
	}
	if w.state == wsHTTP && !w.serveHTTP(l, c) {
		return false
	}
	for w.state == wsOpen && c.state.Load() != stateClosing {
		avail := w.sock.InboundBuffered()
		if avail == 0 {
			break
		}
		if w.left > 0 {
			n := int(min(w.left, int64(avail)))
			b, err := w.sock.Peek(n)
			if err != nil {
				break
			}
			w.appendPayload(b)
			_, _ = w.sock.Discard(n)
			w.left -= int64(n)
			continue
		}
		if !w.readHeader(l, c, avail) {
			break
		}
	}
	return w.state == wsOpen && c.state.Load() != stateClosing
}

// appendPayload unmasks b (the next bytes of the current data frame) onto
// the payload buffer.
func (w *wsTransport) appendPayload(b []byte) {
	if w.in == nil {
		w.in = wsBufPool.Get().(*[]byte)
	} else if w.off > 0 {
		// Move the unconsumed tail (a partial IMGN frame) to the front.
		n := copy(*w.in, (*w.in)[w.off:])
		*w.in, w.off = (*w.in)[:n], 0
	}
	start := len(*w.in)
	*w.in = append(*w.in, b...)
	ws.Cipher((*w.in)[start:], w.mask, w.maskOff)
	w.maskOff += len(b)
}

// readHeader reads the next frame header (and a control frame's payload)
// from the socket. It returns false when more bytes are needed or the
// connection is failing.
func (w *wsTransport) readHeader(l *loop, c *conn, avail int) bool {
	b, err := w.sock.Peek(min(avail, ws.MaxHeaderSize))
	if err != nil || len(b) < 2 {
		return false
	}
	need := 2
	if b[1]&0x80 != 0 {
		need += 4
	}
	switch b[1] & 0x7f {
	case 126:
		need += 2
	case 127:
		need += 8
	}
	if len(b) < need {
		return false
	}
	h, err := parseHeader(b[:need])
	if err != nil {
		w.fail(l, c, wsCloseProtocol, err.Error())
		return false
	}
	st := ws.StateServerSide
	if w.frag {
		st |= ws.StateFragmented
	}
	if err := ws.CheckHeader(h, st); err != nil {
		w.fail(l, c, wsCloseProtocol, err.Error())
		return false
	}
	if h.OpCode.IsControl() {
		size := need + int(h.Length)
		if avail < size {
			return false // a control frame is read whole
		}
		fb, err := w.sock.Peek(size)
		if err != nil {
			return false
		}
		var pb [ws.MaxControlFramePayloadSize]byte
		payload := pb[:copy(pb[:], fb[need:])]
		ws.Cipher(payload, h.Mask, 0)
		_, _ = w.sock.Discard(size)
		return w.control(l, c, h.OpCode, payload)
	}
	_, _ = w.sock.Discard(need)
	if h.OpCode == ws.OpText {
		w.fail(l, c, wsCloseUnsupported, "binary messages only")
		return false
	}
	if h.OpCode == ws.OpBinary {
		w.msgLen = 0
	}
	if h.Length > w.edge.maxMessage-w.msgLen { // not msgLen+Length: that can overflow
		w.fail(l, c, wsCloseTooBig, "message larger than the limit")
		return false
	}
	w.msgLen += h.Length
	w.frag = !h.Fin
	w.left, w.mask, w.maskOff = h.Length, h.Mask, 0
	return true
}

// parseHeader decodes a whole frame header (RFC 6455 section 5.2; b is
// exactly its length). CheckHeader then applies the protocol's rules.
func parseHeader(b []byte) (ws.Header, error) {
	h := ws.Header{
		Fin:    b[0]&0x80 != 0,
		Rsv:    (b[0] >> 4) & 0x7,
		OpCode: ws.OpCode(b[0] & 0x0f),
		Masked: b[1]&0x80 != 0,
	}
	rest := b[2:]
	switch n := b[1] & 0x7f; n {
	case 126:
		h.Length, rest = int64(binary.BigEndian.Uint16(rest)), rest[2:]
	case 127:
		if rest[0]&0x80 != 0 {
			return h, ws.ErrHeaderLengthMSB
		}
		h.Length, rest = int64(binary.BigEndian.Uint64(rest)), rest[8:]
	default:
		h.Length = int64(n)
	}
	if h.Masked {
		copy(h.Mask[:], rest)
	}
	return h, nil
}

// control handles a ping, pong or close frame. It returns false when the
// connection is closing.
func (w *wsTransport) control(l *loop, c *conn, op ws.OpCode, payload []byte) bool {
	switch op {
	case ws.OpPing:
		if w.state == wsOpen {
			w.writeControl(ws.OpPong, payload)
		}
		return true
	case ws.OpPong:
		return true
	}
	// Close: answer it (echoing the code) and close the socket, which
	// completes the closing handshake on the node's side.
	switch {
	case len(payload) == 1:
		w.fail(l, c, wsCloseProtocol, "close frame with a one-byte payload")
		return false
	case len(payload) >= 2:
		code := ws.StatusCode(binary.BigEndian.Uint16(payload))
		reason := payload[2:]
		if err := ws.CheckCloseFrameData(code, string(reason)); err != nil {
			if !utf8.Valid(reason) {
				w.fail(l, c, wsCloseBadData, err.Error())
			} else {
				w.fail(l, c, wsCloseProtocol, err.Error())
			}
			return false
		}
		w.closeCode, w.closeSet = code, true // echoed, as RFC 6455 section 5.5.1 says
	default:
		w.closeCode, w.closeSet = 0, true // no code: an empty close answers
	}
	_, _ = w.sock.Discard(w.sock.InboundBuffered())
	c.closeAfterFlush(l)
	return false
}
