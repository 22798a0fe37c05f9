package engine

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// edge is the engine's state for the listeners of EdgeConfig: which
// listener a connection came from, the browser app's prepared responses,
// and the TLS listeners (tls.go).
type edge struct {
	srv        *Server
	cfg        EdgeConfig
	maxMessage int64               // largest WebSocket message payload
	files      map[string]*webFile // request path -> prepared responses
	wsAddr     *net.TCPAddr        // bound WebSocket listener; nil: none
	tls        []*tlsListener      // (tls.go)
	pumps      sync.WaitGroup      // TLS connections' goroutines (tls.go)
	handshakes chan struct{}       // bounds concurrent TLS handshakes
	tlsCtx     context.Context     // canceled on shutdown: handshakes end
	tlsCancel  context.CancelFunc
	loopsReady chan struct{} // closed by the first OnTick (tls.go)
	loopsUp    sync.Once

	scratchMu sync.Mutex
	scratch   map[gnet.EventLoop]*wsScratch // one per loop (ws.go)
}

// scratchOf returns el's wsScratch, making it on first use.
func (e *edge) scratchOf(el gnet.EventLoop) *wsScratch {
	e.scratchMu.Lock()
	defer e.scratchMu.Unlock()
	sc := e.scratch[el]
	if sc == nil {
		if e.scratch == nil {
			e.scratch = map[gnet.EventLoop]*wsScratch{}
		}
		sc = &wsScratch{}
		e.scratch[el] = sc
	}
	return sc
}

// webFile is one static file of the browser app, as whole HTTP responses.
type webFile struct{ get, head []byte }

// newEdge prepares the edge listeners' state; nil when none is configured.
func newEdge(s *Server) (*edge, error) {
	cfg := s.cfg.Edge
	if !cfg.enabled() {
		return nil, nil
	}
	e := &edge{srv: s, cfg: cfg, maxMessage: int64(s.cfg.MaxBody) + 16,
		handshakes: make(chan struct{}, max(cfg.MaxTLSHandshakes, 1)), loopsReady: make(chan struct{})}
	e.tlsCtx, e.tlsCancel = context.WithCancel(context.Background())
	if cfg.WebFiles != nil {
		files, err := prepareFiles(cfg.WebFiles)
		if err != nil {
			return nil, fmt.Errorf("engine: web files: %w", err)
		}
		e.files = files
	}
	return e, nil
}

// listenAddrs are the gnet listeners of the node: the client listener and,
// when set, the WebSocket listener.
//
// gnet tells listeners apart (Engine.DupListener, a connection's local
// address) only by the address they were configured with, so two
// listeners both configured with port 0 (tests do that) would be
// indistinguishable: a WebSocket listener on port 0 gets a free port
// picked here first. Another process may take that port in the moment
// between; gnet's listen then fails and Start reports it.
func (s *Server) listenAddrs() ([]string, error) {
	addrs := []string{"tcp://" + s.cfg.Addr}
	if s.edge != nil && s.cfg.Edge.WSAddr != "" {
		addr, err := concretePort(s.cfg.Edge.WSAddr)
		if err != nil {
			return nil, fmt.Errorf("engine: WebSocket listener %s: %w", s.cfg.Edge.WSAddr, err)
		}
		s.cfg.Edge.WSAddr = addr
		addrs = append(addrs, "tcp://"+addr)
	}
	return addrs, nil
}

// concretePort returns addr with port 0 replaced by a port that is free
// now.
func concretePort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port != "0" {
		return addr, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), nil
}

// WSAddr returns the bound WebSocket listener address, nil when there is
// none.
func (s *Server) WSAddr() net.Addr {
	if s.edge == nil || s.edge.wsAddr == nil {
		return nil
	}
	return s.edge.wsAddr
}

// isWS reports whether gc came in on the WebSocket listener. gnet gives
// an accepted connection its listener's configured address as local
// address; only when that says port 0 (a listener on a port chosen by
// the kernel, as in tests) is the socket asked for its real one.
func (e *edge) isWS(gc gnet.Conn) bool {
	if e.wsAddr == nil {
		return false
	}
	a, ok := gc.LocalAddr().(*net.TCPAddr)
	if !ok {
		return false
	}
	if a.Port == 0 {
		sa, err := unix.Getsockname(gc.Fd())
		if err != nil {
			return false
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			a = &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
		case *unix.SockaddrInet6:
			a = &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
		default:
			return false
		}
	}
	return a.Port == e.wsAddr.Port && (e.wsAddr.IP.IsUnspecified() || a.IP.Equal(e.wsAddr.IP))
}

// speaksWS reports whether gc is a WebSocket connection (plain or TLS),
// which must not be sent IMGN frames before its handshake.
func (e *edge) speaksWS(gc gnet.Conn) bool {
	if en, ok := gc.Context().(*enrolled); ok {
		return en.ws
	}
	return e.isWS(gc)
}

// wrap returns the transport of a newly accepted connection: gc itself
// for plain TCP, or one of the edge transports.
func (e *edge) wrap(gc gnet.Conn) transport {
	if en, ok := gc.Context().(*enrolled); ok { // TLS terminated by tls.go
		if en.ws {
			return &wsTransport{sock: gc, edge: e, remote: en.remote, sc: e.scratchOf(gc.EventLoop())}
		}
		return &proxyTransport{socket: gc, remote: en.remote}
	}
	if e.isWS(gc) {
		return &wsTransport{sock: gc, edge: e, proxy: e.cfg.ProxyProtocol, sc: e.scratchOf(gc.EventLoop())}
	}
	if e.cfg.ProxyProtocol {
		return &proxyTransport{socket: gc, pending: true}
	}
	return gc
}

// closeWebSockets closes every WebSocket connection still open once
// their output is written: their loops send each a close frame with 1001
// (going away) before the event loops stop and cut what is left.
// Called by shutdown, from any goroutine.
func (e *edge) closeWebSockets() {
	e.srv.conns.each(func(c *conn) {
		if _, ok := c.tr.(*wsTransport); ok {
			c.closeAfterFlush(nil)
		}
	})
}

// ingest lets an edge transport read c's socket first (OnTraffic). It
// returns false when no frames are to be decoded.
func (e *edge) ingest(c *conn) bool {
	if t, ok := c.tr.(edgeTransport); ok {
		return t.ingest(c.loop, c)
	}
	return true
}

// maxHTTPRequest bounds an HTTP request's head (request line and
// headers); a larger one is answered 431 and the connection closed.
const maxHTTPRequest = 8 << 10

// serveHTTP answers the HTTP requests buffered before the upgrade: the
// upgrade itself, or GET and HEAD of the browser app's files (keep-alive
// connections may ask for several). It returns false when the connection
// is closing.
func (w *wsTransport) serveHTTP(l *loop, c *conn) bool {
	for w.state == wsHTTP {
		avail := w.sock.InboundBuffered()
		if avail == 0 {
			return true
		}
		b, err := w.sock.Peek(min(avail, maxHTTPRequest))
		if err != nil {
			return true
		}
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if end < 0 {
			if len(b) >= maxHTTPRequest {
				w.respond(l, c, httpError(http.StatusRequestHeaderFieldsTooLarge, "request head larger than 8 KiB"), false)
				return false
			}
			return true
		}
		// gobwas/ws canonicalises header names in place: work on a copy,
		// not on gnet's buffer (one copy per connection's handshake).
		req := append([]byte(nil), b[:end+4]...)
		_, _ = w.sock.Discard(end + 4)
		if !w.handleRequest(l, c, req) {
			return false
		}
	}
	return true
}

// handleRequest answers one HTTP request. It returns false when the
// connection is closing.
func (w *wsTransport) handleRequest(l *loop, c *conn, req []byte) bool {
	// The reader's buffer is the request's size, not bufio's 4 KiB: this
	// is garbage of every handshake.
	r, err := http.ReadRequest(bufio.NewReaderSize(bytes.NewReader(req), len(req)))
	if err != nil {
		w.respond(l, c, httpError(http.StatusBadRequest, "malformed HTTP request"), false)
		return false
	}
	if r.ContentLength > 0 || len(r.TransferEncoding) > 0 {
		w.respond(l, c, httpError(http.StatusBadRequest, "request bodies are not accepted here"), false)
		return false
	}
	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return w.upgrade(l, c, req)
	}
	files := w.edge.files
	if files == nil {
		resp := httpError(http.StatusUpgradeRequired, "this is an IMGN WebSocket endpoint: upgrade to websocket")
		w.respond(l, c, resp, false)
		return false
	}
	keep := r.ProtoAtLeast(1, 1) && !r.Close
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	default:
		w.respond(l, c, httpError(http.StatusMethodNotAllowed, "GET, HEAD or a WebSocket upgrade"), false)
		return false
	}
	f := files[r.URL.Path]
	switch {
	case f == nil:
		w.respond(l, c, httpError(http.StatusNotFound, "not found"), keep)
	case r.Method == http.MethodHead:
		w.respond(l, c, f.head, keep)
	default:
		w.respond(l, c, f.get, keep)
	}
	return keep
}

// respond writes a prepared HTTP response; without keep the connection is
// closed once it is written.
func (w *wsTransport) respond(l *loop, c *conn, resp []byte, keep bool) {
	_, _ = w.sock.Write(resp)
	if !keep {
		w.state = wsDone
		_, _ = w.sock.Discard(w.sock.InboundBuffered())
		c.closeAfterFlush(l)
	}
}

// upgrade runs the WebSocket handshake of req with gobwas/ws: RFC 6455
// checks, the Origin policy (EdgeConfig.WSOrigins), the optional
// subprotocol. On success the connection speaks WebSocket from here on.
func (w *wsTransport) upgrade(l *loop, c *conn, req []byte) bool {
	var origin, host string
	var hasOrigin bool
	u := ws.Upgrader{
		Protocol: func(p []byte) bool { return string(p) == wsSubprotocol },
		OnHost:   func(h []byte) error { host = string(h); return nil },
		OnHeader: func(k, v []byte) error {
			if string(k) == "Origin" {
				origin, hasOrigin = string(v), true
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if !w.edge.cfg.originAllowed(origin, hasOrigin, host) {
				return nil, ws.RejectConnectionError(ws.RejectionStatus(http.StatusForbidden), ws.RejectionReason("origin not allowed: "+origin))
			}
			return ws.HandshakeHeaderString(""), nil
		},
	}
	rw := &handshakeRW{in: req}
	_, err := u.Upgrade(rw)
	if err != nil {
		l.srv.log.Debug("websocket handshake refused", "remote", w.RemoteAddr().String(), "err", err)
		w.respond(l, c, rw.out, false)
		return false
	}
	_, _ = w.sock.Write(rw.out)
	w.state = wsOpen
	return true
}

// handshakeRW feeds a buffered request to gobwas/ws's upgrader and
// collects its response.
type handshakeRW struct {
	in, out []byte
}

func (h *handshakeRW) Read(p []byte) (int, error) {
	if len(h.in) == 0 {
		return 0, fmt.Errorf("handshake: request ended early")
	}
	n := copy(p, h.in)
	h.in = h.in[n:]
	return n, nil
}

func (h *handshakeRW) Write(p []byte) (int, error) {
	h.out = append(h.out, p...)
	return len(p), nil
}

// webHeaders are sent with every file of the browser app: no caching
// without revalidation (a new imd serves a new app), no sniffing, and a
// content security policy that allows the app's own scripts, styles and
// WebSocket connections only.
const webHeaders = "Cache-Control: no-cache\r\n" +
	"X-Content-Type-Options: nosniff\r\n" +
	"Referrer-Policy: no-referrer\r\n" +
	"X-Frame-Options: DENY\r\n" +
	"Content-Security-Policy: default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'\r\n"

// prepareFiles renders every file of fsys as whole GET and HEAD
// responses, keyed by request path ("/" is index.html).
func prepareFiles(fsys fs.FS) (map[string]*webFile, error) {
	files := map[string]*webFile{}
	var names []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			names = append(names, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	for _, p := range names {
		body, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, err
		}
		ctype := mime.TypeByExtension(path.Ext(p))
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		head := "HTTP/1.1 200 OK\r\nContent-Type: " + ctype + "\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n" + webHeaders + "\r\n"
		f := &webFile{head: []byte(head), get: append([]byte(head), body...)}
		files["/"+p] = f
		if p == "index.html" {
			files["/"] = f
		} else if dir, ok := strings.CutSuffix(p, "/index.html"); ok {
			files["/"+dir+"/"] = f
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no files")
	}
	return files, nil
}

// httpError is a small plain-text HTTP error response that closes the
// connection.
func httpError(code int, text string) []byte {
	text += "\n"
	return []byte("HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) +
		"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " + strconv.Itoa(len(text)) +
		"\r\nConnection: close\r\n\r\n" + text)
}
