package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// TLS. gnet has no TLS, so TLS connections are accepted by a standard
// library listener and their plaintext handed to the event loops through
// a socketpair: one end is enrolled into a gnet loop (EventLoop.Enroll,
// through Engine.Register) and the engine serves it like any accepted
// connection, the other end is pumped to and from the TLS connection by
// two goroutines. The engine never waits for TLS: encryption, handshakes
// and the TLS socket's blocking I/O happen on those goroutines, and the
// loop sees an ordinary non-blocking socket. The client's address, and
// whether the listener speaks WebSocket, travel with the enrolled
// connection (its gnet context, read once in OnOpen).
//
// Cost per TLS connection: two goroutines, two 4 KiB copy buffers, the
// TLS connection's own buffers and three file descriptors (the TLS
// socket and both ends of the pair); docs/BENCHMARKS.md has the measured
// memory. Connections count against MaxConns once enrolled.

// enrolled travels as the gnet context of a socketpair end until OnOpen.
type enrolled struct {
	remote *net.TCPAddr
	ws     bool
}

// tlsListener is one TLS listener and its accept loop.
type tlsListener struct {
	ln   net.Listener
	ws   bool
	done chan struct{}
}

// tlsPumpBuf is the copy buffer of each direction of a TLS connection.
const tlsPumpBuf = 4 << 10

// TLSAddr returns the bound address of the raw-protocol TLS listener, nil
// when there is none.
func (s *Server) TLSAddr() net.Addr { return s.tlsAddr(false) }

// WSSAddr returns the bound address of the WebSocket TLS listener, nil
// when there is none.
func (s *Server) WSSAddr() net.Addr { return s.tlsAddr(true) }

func (s *Server) tlsAddr(ws bool) net.Addr {
	if s.edge == nil {
		return nil
	}
	for _, l := range s.edge.tls {
		if l.ws == ws {
			return l.ln.Addr()
		}
	}
	return nil
}

// OnTick implements gnet.EventHandler. gnet calls it first once every
// event loop is registered with its load balancer, which OnBoot precedes:
// Engine.Register (used for TLS connections) must not run before, or it
// races with that registration. Only engines with TLS listeners enable
// gnet's ticker; the tick after the first is an hour away and does
// nothing.
func (s *Server) OnTick() (time.Duration, gnet.Action) {
	if s.edge != nil {
		s.edge.loopsUp.Do(func() { close(s.edge.loopsReady) })
	}
	return time.Hour, gnet.None
}

// startTLS opens the TLS listeners; called once the event loops run.
func (e *edge) startTLS() error {
	if e.cfg.TLSAddr == "" && e.cfg.WSSAddr == "" {
		return nil
	}
	select {
	case <-e.loopsReady:
	case err := <-e.srv.runErr:
		e.srv.runErr <- err // for Shutdown
		return fmt.Errorf("engine: event loops: %w", err)
	}
	for _, l := range []struct {
		addr string
		ws   bool
	}{{e.cfg.TLSAddr, false}, {e.cfg.WSSAddr, true}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			e.stopTLS()
			return fmt.Errorf("engine: TLS listener %s: %w", l.addr, err)
		}
		tl := &tlsListener{ln: ln, ws: l.ws, done: make(chan struct{})}
		e.tls = append(e.tls, tl)
		go e.accept(tl)
		e.srv.log.Info("listening", "addr", ln.Addr().String(), "tls", true, "websocket", l.ws)
	}
	return nil
}

// stopTLS closes the TLS listeners and waits for their accept loops;
// handshakes in progress are abandoned. Connections already enrolled end
// when the engine closes them (their pumps see the pair close).
func (e *edge) stopTLS() {
	e.tlsCancel()
	for _, l := range e.tls {
		_ = l.ln.Close()
		<-l.done
	}
}

// waitPumps waits until every TLS connection's goroutines have ended, or
// ctx expires.
func (e *edge) waitPumps(ctx context.Context) error {
	done := make(chan struct{})
	go func() { e.pumps.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("engine: TLS connections still open: %w", ctx.Err())
	}
}

// accept runs a TLS listener's accept loop.
func (e *edge) accept(tl *tlsListener) {
	defer close(tl.done)
	for {
		nc, err := tl.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			e.srv.log.Warn("TLS accept", "err", err)
			select {
			case <-e.tlsCtx.Done():
				return
			case <-time.After(50 * time.Millisecond): // EMFILE and the like: do not spin
			}
			continue
		}
		select {
		case e.handshakes <- struct{}{}:
		default:
			e.srv.metrics.rejected.Inc()
			_ = nc.Close()
			continue
		}
		e.pumps.Add(1)
		go e.serveTLS(nc, tl.ws)
	}
}

// serveTLS handshakes, enrolls the plaintext side into a loop and pumps
// bytes both ways until either side closes.
func (e *edge) serveTLS(nc net.Conn, ws bool) {
	defer e.pumps.Done()
	tc := tls.Server(nc, e.cfg.TLS)
	// The handshake counts against the login deadline, and shutdown ends it.
	ctx, cancel := context.WithTimeout(e.tlsCtx, e.srv.cfg.LoginTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	<-e.handshakes
	if err != nil {
		e.srv.log.Debug("TLS handshake", "remote", nc.RemoteAddr().String(), "err", err)
		_ = nc.Close()
		return
	}
	engineEnd, pumpEnd, err := socketPair()
	if err != nil {
		e.srv.log.Warn("TLS connection: socketpair", "err", err)
		_ = tc.Close()
		return
	}
	remote, _ := nc.RemoteAddr().(*net.TCPAddr)
	gctx := gnet.NewContext(gnet.NewNetConnContext(context.Background(), engineEnd), &enrolled{remote: remote, ws: ws})
	res, err := e.srv.eng.Register(gctx)
	if err == nil {
		r := <-res
		err = r.Err
	}
	if err != nil {
		// The engine is stopping (or out of descriptors).
		_ = engineEnd.Close()
		_ = pumpEnd.Close()
		_ = tc.Close()
		return
	}
	// Register has duplicated engineEnd's descriptor into the loop and
	// closed engineEnd; pumpEnd is ours.
	e.pumps.Add(1)
	go func() {
		defer e.pumps.Done()
		copyUntilClosed(pumpEnd, tc) // client -> engine
		_ = pumpEnd.Close()
	}()
	copyUntilClosed(tc, pumpEnd) // engine -> client
	_ = tc.Close()
	_ = pumpEnd.Close()
}

// copyUntilClosed copies src to dst until either fails (the other side
// closed), with a small buffer of its own.
func copyUntilClosed(dst, src net.Conn) {
	buf := make([]byte, tlsPumpBuf)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// socketPair returns the two ends of a connected Unix stream socketpair
// as net.Conns.
func socketPair() (a, b net.Conn, err error) {
	// SOCK_CLOEXEC is not portable (macOS lacks it): set close-on-exec
	// under the fork lock instead, as package net does, so a child started
	// meanwhile does not inherit the pair.
	syscall.ForkLock.RLock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "imgn-tls-pair")
		c, err := net.FileConn(f) // dups fd
		_ = f.Close()
		if err != nil {
			if i == 1 {
				_ = conns[0].Close()
			} else {
				_ = unix.Close(fds[1])
			}
			return nil, nil, fmt.Errorf("socketpair: %w", err)
		}
		conns[i] = c
	}
	return conns[0], conns[1], nil
}
