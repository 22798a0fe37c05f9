package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/imgn/imgn/codec"
)

// The PROXY protocol (versions 1 and 2, as HAProxy specifies them) lets a
// load balancer that terminates TLS (or just forwards TCP) tell the node
// who the client is: it sends one header before the client's bytes. The
// engine reads it on the event loop, before anything else on the
// connection, and uses the address in it wherever it would use the
// socket's peer address (password-attempt limits, logs).

// proxyV2Sig starts every version 2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

const (
	proxyV1Max = 107      // the longest version 1 line, CRLF included
	proxyV2Max = 16 + 512 // a version 2 header with room for a few TLVs
)

var errProxyHeader = errors.New("bad PROXY protocol header")

// parseProxyHeader parses the PROXY header at the start of b. It returns
// n = 0 and no error when b holds only part of one (wait for more). addr
// is the client's address, or nil when the header carries none (v1
// UNKNOWN, v2 LOCAL or an unspecified family: a health check or the proxy
// speaking for itself; the socket's address stands). It does not allocate
// for a TCP4 or TCP6 header.
func parseProxyHeader(b []byte) (n int, addr netip.AddrPort, err error) {
	if len(b) == 0 {
		return 0, addr, nil
	}
	switch b[0] {
	case 'P':
		return parseProxyV1(b)
	case '\r':
		return parseProxyV2(b)
	}
	return 0, addr, fmt.Errorf("%w: no PROXY header", errProxyHeader)
}

func parseProxyV1(b []byte) (int, netip.AddrPort, error) {
	var none netip.AddrPort
	const prefix = "PROXY "
	if len(b) < len(prefix) {
		if !bytes.HasPrefix([]byte(prefix), b) {
			return 0, none, fmt.Errorf("%w: no PROXY header", errProxyHeader)
		}
		return 0, none, nil
	}
	if string(b[:len(prefix)]) != prefix {
		return 0, none, fmt.Errorf("%w: no PROXY header", errProxyHeader)
	}
	end := bytes.Index(b[:min(len(b), proxyV1Max)], []byte("\r\n"))
	if end < 0 {
		if len(b) >= proxyV1Max {
			return 0, none, fmt.Errorf("%w: version 1 line longer than %d bytes", errProxyHeader, proxyV1Max)
		}
		return 0, none, nil
	}
	n := end + 2
	f := bytes.Fields(b[len(prefix):end])
	if len(f) >= 1 && string(f[0]) == "UNKNOWN" {
		return n, none, nil
	}
	if len(f) != 5 || (string(f[0]) != "TCP4" && string(f[0]) != "TCP6") {
		return 0, none, fmt.Errorf("%w: version 1 wants TCP4|TCP6 src dst sport dport", errProxyHeader)
	}
	ip, err := netip.ParseAddr(string(f[1]))
	if err != nil || ip.Is4() != (string(f[0]) == "TCP4") {
		return 0, none, fmt.Errorf("%w: source address %q", errProxyHeader, f[1])
	}
	port, err := strconv.ParseUint(string(f[3]), 10, 16)
	if err != nil || (len(f[3]) > 1 && f[3][0] == '0') {
		return 0, none, fmt.Errorf("%w: source port %q", errProxyHeader, f[3])
	}
	if _, err := strconv.ParseUint(string(f[4]), 10, 16); err != nil {
		return 0, none, fmt.Errorf("%w: destination port %q", errProxyHeader, f[4])
	}
	return n, netip.AddrPortFrom(ip, uint16(port)), nil
}

func parseProxyV2(b []byte) (int, netip.AddrPort, error) {
	var none netip.AddrPort
	if len(b) < 16 {
		if !bytes.HasPrefix(proxyV2Sig, b[:min(len(b), len(proxyV2Sig))]) {
			return 0, none, fmt.Errorf("%w: no PROXY header", errProxyHeader)
		}
		return 0, none, nil
	}
	if !bytes.Equal(b[:12], proxyV2Sig) {
		return 0, none, fmt.Errorf("%w: no PROXY header", errProxyHeader)
	}
	verCmd, fam := b[12], b[13]
	length := int(binary.BigEndian.Uint16(b[14:16]))
	if verCmd>>4 != 2 {
		return 0, none, fmt.Errorf("%w: version %d", errProxyHeader, verCmd>>4)
	}
	if 16+length > proxyV2Max {
		return 0, none, fmt.Errorf("%w: version 2 header of %d bytes (at most %d)", errProxyHeader, 16+length, proxyV2Max)
	}
	if len(b) < 16+length {
		return 0, none, nil
	}
	n := 16 + length
	body := b[16:n]
	switch verCmd & 0x0f {
	case 0: // LOCAL: the proxy's own connection
		return n, none, nil
	case 1: // PROXY
	default:
		return 0, none, fmt.Errorf("%w: command %d", errProxyHeader, verCmd&0x0f)
	}
	switch fam {
	case 0x11: // TCP over IPv4
		if len(body) < 12 {
			return 0, none, fmt.Errorf("%w: short IPv4 addresses", errProxyHeader)
		}
		ip := netip.AddrFrom4([4]byte(body[0:4]))
		return n, netip.AddrPortFrom(ip, binary.BigEndian.Uint16(body[8:10])), nil
	case 0x21: // TCP over IPv6
		if len(body) < 36 {
			return 0, none, fmt.Errorf("%w: short IPv6 addresses", errProxyHeader)
		}
		ip := netip.AddrFrom16([16]byte(body[0:16]))
		return n, netip.AddrPortFrom(ip, binary.BigEndian.Uint16(body[32:34])), nil
	}
	return n, none, nil // UNSPEC, UDP or unix: no TCP client address to use
}

// edgeTransport is a transport that must see a connection's bytes before
// the engine decodes frames from them: a PROXY header, a WebSocket
// handshake and framing. OnTraffic calls ingest first and decodes frames
// only when it returns true. Loop goroutine only.
type edgeTransport interface {
	transport
	ingest(l *loop, c *conn) bool
}

// socket is what an edge transport needs of its connection (gnet.Conn
// has it; tests use an in-memory one).
type socket interface {
	transport
	Writev(bs [][]byte) (int, error)
}

// proxyTransport is a raw-protocol connection whose client address is not
// the socket's: it comes from a PROXY header (pending until it arrives)
// or, for a connection whose TLS the node terminated, from the TLS socket.
type proxyTransport struct {
	socket
	remote  *net.TCPAddr // nil: the socket's
	pending bool         // a PROXY header is expected and not read yet
}

func (p *proxyTransport) RemoteAddr() net.Addr {
	if p.remote != nil {
		return p.remote
	}
	return p.socket.RemoteAddr()
}

// InboundBuffered hides the bytes behind a pending PROXY header from the
// frame decoder.
func (p *proxyTransport) InboundBuffered() int {
	if p.pending {
		return 0
	}
	return p.socket.InboundBuffered()
}

func (p *proxyTransport) ingest(l *loop, c *conn) bool {
	if !p.pending {
		return true
	}
	done, err := takeProxyHeader(l, p.socket, &p.remote)
	if err != nil {
		_, _ = p.socket.Discard(p.socket.InboundBuffered())
		if errors.Is(err, errAddrFull) {
			c.fail(l, codec.JSON, 0, codec.CodeTooManyConnections, err.Error())
			return false
		}
		c.closeAfterFlush(l)
		return false
	}
	// Until the header is complete nothing is decoded: the decoder peeks
	// the socket itself, and a partial header is no frame.
	p.pending = !done
	return done
}

// takeProxyHeader consumes the PROXY header at the start of s if it is
// all buffered (done), sets *remote to the client address in it, if any,
// and counts the connection against that address's cap (MaxConnsPerIP),
// which OnOpen could not do before the header said who the client is. A
// bad header is logged and returned; a client over its cap gets
// errAddrFull, and *remote is left unset so that nothing is released
// for it. Loop goroutine only.
func takeProxyHeader(l *loop, s socket, remote **net.TCPAddr) (done bool, err error) {
	n, addr, err := readProxyHeader(s)
	if err != nil {
		l.srv.log.Debug("closing connection", "remote", s.RemoteAddr().String(), "err", err)
		return false, err
	}
	if n == 0 {
		return false, nil
	}
	var client net.Addr = s.RemoteAddr()
	var ta *net.TCPAddr
	if addr.IsValid() {
		ta = net.TCPAddrFromAddrPort(addr)
		client = ta
	}
	if !l.srv.perAddr.acquire(client) {
		l.srv.metrics.rejected.Inc()
		return false, errAddrFull
	}
	*remote = ta
	return true, nil
}

// errAddrFull: the client address of a PROXY header is at its
// connection cap.
var errAddrFull = errors.New("too many connections from this address")

// countedAddr is the address a connection on tr counts against
// MaxConnsPerIP (acquired in OnOpen or takeProxyHeader, released in
// OnClose): nil while a PROXY header is still expected (not counted yet,
// or refused), else the transport's remote address.
func countedAddr(tr transport) net.Addr {
	switch t := tr.(type) {
	case *proxyTransport:
		if t.pending {
			return nil
		}
	case *wsTransport:
		if t.proxy {
			return nil
		}
	}
	return tr.RemoteAddr()
}

// readProxyHeader parses and consumes the PROXY header buffered on s, if
// it is all there (n > 0).
func readProxyHeader(s socket) (n int, addr netip.AddrPort, err error) {
	b, err := s.Peek(min(s.InboundBuffered(), proxyV2Max))
	if err != nil {
		return 0, addr, nil
	}
	n, addr, err = parseProxyHeader(b)
	if err != nil || n == 0 {
		return n, addr, err
	}
	_, _ = s.Discard(n)
	return n, addr, nil
}
