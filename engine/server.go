// Package engine is the IM node: a gnet v2 event-loop server that speaks the
// IMGN protocol (docs/protocol.md), keeps the sessions of this node, and
// implements the delivery model of docs/protocol.md (section 6) on a persist.Store.
//
// Threading model. gnet's event loops decode frames in place (codec.Decoder
// on the loop's inbound buffer) and never block. A request whose work
// cannot block (the in-memory store, a heartbeat) runs right there, on the
// loop, and its reply is written at the end of the same OnTraffic. Appends
// to a store with a committer (persist.AsyncAppender) are handed over from
// the loop and completed by the committer in commit order. Anything else
// that can block (password hashing, a store read that may hit the disk or
// the network, the cluster) is queued per connection and run, in arrival
// order, by a bounded worker pool. Replies and pushes are appended to the
// target connection's output from any goroutine; the connection's loop
// writes all of it with one write per turn (see loop). Every queue is
// bounded in bytes: per connection (MaxConnInbound, MaxOutbound) and per
// node (MaxNodeInbound), plus MaxConns.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Server is one IM node. Create it with New, run it with Start, stop it with
// Shutdown. Its exported methods are safe for concurrent use.
type Server struct {
	cfg      Config
	log      *slog.Logger
	store    persist.Store
	metrics  *metrics
	sessions *sessionMap
	conns    *connSet
	pool     *workerPool
	ids      *idGen
	dec      codec.Decoder
	hashSem  chan struct{}
	logins   *loginLimiter // password attempts per source address
	perAddr  *addrConns    // open connections per source address; nil: no cap
	users    sync.Map      // user ids known to exist: skips a store read per send
	groups   groupCache    // group membership, for GROUP_SEND without a store read

	// How requests run (see onLoop): inline when the store never blocks
	// and no cluster is involved; async appends when the store has a
	// committer that completes appends in order.
	inline bool
	async  persist.AsyncAppender // nil: appends run synchronously on workers
	// cursors, with async, takes a PUSH_ACK's cursor from the loop without
	// a worker waiting for the write (nil: PUSH_ACK runs on a worker).
	cursors persist.AsyncCursorSetter
	handoff handOffAppender // inline stores that take contended appends off a loop (send.go)
	// batchLoop, with an async store that completes appends in batches
	// (persist.BatchCompleting), stands for a loop on the store's
	// completing goroutine: output its completions queue is written at
	// the end of each batch, by that goroutine when the socket is idle
	// (conn.writeFrom), and triggers loops once per batch otherwise.
	batchLoop   *loop
	unhookBatch func()
	inBytes     atomic.Int64 // bytes of requests queued for workers, node-wide
	inflightOps atomic.Int64 // appends handed to the store, not yet complete

	loops   atomic.Pointer[[]*loop] // copy-on-write list, indexed by loop.idx
	loopsMu sync.Mutex

	nextConnID atomic.Uint64
	startedAt  int64 // unix nanoseconds (uptimeSec counts from it)
	eng        gnet.Engine
	addr       net.Addr
	edge       *edge // WebSocket, TLS, PROXY protocol (ws.go, tls.go); nil: plain TCP only
	booted     chan struct{}
	runErr     chan error
	stopTicker chan struct{}
	tickerDone chan struct{}
	shutting   atomic.Bool
	refusing   atomic.Bool // shutdown: past the GO_AWAY window, new requests are refused
	draining   atomic.Bool // Shutdown says "drain" in GO_AWAY
	started    atomic.Bool
	stopOnce   sync.Once
	stopErr    error
	sessOps    chan sessionOp // route removals and renewals (Sessions != nil)
	sessDone   chan struct{}
	gnet.BuiltinEventEngine
}

// New validates cfg and returns a server that is not yet listening.
func New(cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger.With("node", cfg.NodeID),
		store:      cfg.Store,
		sessions:   newSessionMap(),
		conns:      newConnSet(),
		ids:        newIDGen(cfg.NodeNum),
		dec:        codec.Decoder{MaxBody: cfg.MaxBody},
		hashSem:    make(chan struct{}, cfg.HashConcurrency),
		logins:     newLoginLimiter(cfg.LoginRatePerIP, cfg.LoginBurstPerIP),
		perAddr:    newAddrConns(cfg.MaxConnsPerIP),
		booted:     make(chan struct{}),
		startedAt:  time.Now().UnixNano(),
		runErr:     make(chan error, 1),
		stopTicker: make(chan struct{}),
		tickerDone: make(chan struct{}),
	}
	s.metrics = newMetrics(cfg.Registry, s)
	s.loops.Store(new([]*loop))
	s.groups.init()
	if a, ok := cfg.Store.(persist.AsyncAppender); ok && cfg.Cluster == nil {
		s.async = a
		if cs, ok := cfg.Store.(persist.AsyncCursorSetter); ok {
			s.cursors = cs
		}
		if bc, ok := cfg.Store.(persist.BatchCompleting); ok {
			l := &loop{srv: s, idx: -1}
			s.batchLoop = l
			s.unhookBatch = bc.OnBatchCompleted(l.flushDeferred)
		}
	}
	if _, ok := cfg.Store.(persist.NonBlocking); ok && cfg.Cluster == nil && cfg.Sessions == nil {
		s.inline = true
		if h, ok := cfg.Store.(handOffAppender); ok && s.async != nil {
			s.handoff = h
		}
	}
	var err error
	if s.edge, err = newEdge(s); err != nil {
		if s.unhookBatch != nil {
			s.unhookBatch()
		}
		return nil, err
	}
	return s, nil
}

// Registry returns the Prometheus registry the server's metrics are in.
func (s *Server) Registry() *prometheus.Registry { return s.cfg.Registry }

// Config returns the validated configuration (with defaults applied).
func (s *Server) Config() Config { return s.cfg }

// Start begins listening and returns once the listener is bound, or with
// the error that prevented it.
func (s *Server) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("engine: already started")
	}
	addrs, err := s.listenAddrs()
	if err != nil {
		return err
	}
	s.pool = newWorkerPool(s.cfg.Workers, s.cfg.MaxConns+1)
	if s.cfg.Sessions != nil {
		s.sessOps = make(chan sessionOp, 65536)
		s.sessDone = make(chan struct{})
		go s.sessionWriter()
	}
	opts := []gnet.Option{
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(s.cfg.EventLoops),
		gnet.WithReuseAddr(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetLogger{s.log}),
	}
	if s.cfg.Edge.TLSAddr != "" || s.cfg.Edge.WSSAddr != "" {
		// TLS connections are enrolled from other goroutines; gnet's
		// round-robin balancer is not safe for that. The ticker tells
		// when the loops are registered (OnTick).
		opts = append(opts, gnet.WithLoadBalancing(gnet.LeastConnections), gnet.WithTicker(true))
	}
	go func() { s.runErr <- gnet.Rotate(s, addrs, opts...) }()
	select {
	case <-s.booted:
	case err := <-s.runErr:
		s.pool.stop()
		if s.sessOps != nil {
			close(s.sessOps)
			<-s.sessDone
		}
		return fmt.Errorf("engine: listen %s: %w", s.cfg.Addr, err)
	case <-ctx.Done():
		return ctx.Err()
	}
	if s.edge != nil {
		if err := s.edge.startTLS(); err != nil {
			_ = s.Shutdown(context.Background())
			return err
		}
	}
	go s.tick()
	s.log.Info("listening", "addr", s.Addr().String())
	return nil
}

// Addr returns the bound client address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.addr }

// OnBoot implements gnet.EventHandler.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	s.addr = listenerAddr(eng, s.cfg.Addr)
	if s.edge != nil && s.cfg.Edge.WSAddr != "" {
		s.edge.wsAddr, _ = listenerAddr(eng, s.cfg.Edge.WSAddr).(*net.TCPAddr)
	}
	close(s.booted)
	return gnet.None
}

// listenerAddr reads the listener's bound address from a dup of its fd.
func listenerAddr(eng gnet.Engine, fallback string) net.Addr {
	fd, err := eng.DupListener("tcp", fallback)
	if err == nil {
		defer unix.Close(fd)
		if sa, err := unix.Getsockname(fd); err == nil {
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
			case *unix.SockaddrInet6:
				return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
			}
		}
	}
	a, _ := net.ResolveTCPAddr("tcp", fallback)
	return a
}

// OnOpen implements gnet.EventHandler. A connection the node cannot take
// gets one frame and is closed (docs/protocol.md §6.9, §7): GO_AWAY while
// the node shuts down or drains (the client goes elsewhere, as every
// connected client is told to), else ERROR TOO_MANY_CONNECTIONS (fatal,
// retryable, seq 0) when the node or the source address is at its cap.
func (s *Server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	var tr transport = gc
	if s.edge != nil {
		tr = s.edge.wrap(gc)
	}
	if s.shutting.Load() {
		s.metrics.rejected.Inc()
		if s.edge != nil && s.edge.speaksWS(gc) {
			return nil, gnet.Close // not a WebSocket yet: no frame it could read
		}
		out, _ := codec.AppendFrame(nil, codec.JSON, codec.CmdGoAway, 0, 0, s.goAway(s.shutdownReason(), s.cfg.GoAwayWindow))
		return out, gnet.Close
	}
	if s.conns.len() >= s.cfg.MaxConns || !s.perAddr.acquire(countedAddr(tr)) {
		s.metrics.rejected.Inc()
		code := codec.CodeTooManyConnections
		s.metrics.countError(code)
		if s.edge != nil && s.edge.speaksWS(gc) {
			return nil, gnet.Close // not a WebSocket yet: no frame it could read
		}
		msg := "the node is at its connection limit"
		if s.conns.len() < s.cfg.MaxConns {
			msg = "too many connections from this address"
		}
		out, _ := codec.AppendFrame(nil, codec.JSON, codec.CmdError, 0, 0, &pb.Error{Code: uint32(code), Message: msg, Fatal: true, Retryable: true})
		return out, gnet.Close
	}
	now := time.Now().UnixNano()
	c := &conn{tr: tr, loop: s.loopOf(gc.EventLoop()), id: s.nextConnID.Add(1), ser: codec.JSON}
	c.lastRecv.Store(now)
	gc.SetContext(c)
	s.conns.add(c)
	s.metrics.accepted.Inc()
	return nil, gnet.None
}

// uptimeSec converts unix nanoseconds to whole seconds since the server
// was made, the compact clock of per-connection timestamps.
func (s *Server) uptimeSec(unixNano int64) uint32 {
	return uint32(max(unixNano-s.startedAt, 0) / int64(time.Second))
}

// OnClose implements gnet.EventHandler.
func (s *Server) OnClose(gc gnet.Conn, _ error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	c.markClosed()
	s.conns.remove(c)
	s.perAddr.release(countedAddr(c.tr))
	if user, _ := c.identity(); user != "" {
		s.sessions.remove(c)
		if s.cfg.Sessions != nil {
			s.queueSessionOp(sessionOp{remove: true, route: s.routeOf(c)})
		}
	}
	return gnet.None
}

// OnTraffic implements gnet.EventHandler: it runs every complete frame in
// the inbound buffer, then writes what this turn queued.
func (s *Server) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.Close
	}
	if gc.InboundBuffered() > 0 {
		c.loop.now = time.Now()
		if s.edge == nil || s.edge.ingest(c) {
			s.readFrames(c)
		}
	}
	c.loop.endTraffic(c)
	return gnet.None
}

// readFrames decodes and runs (or queues) every complete frame buffered on
// c. Event loop only.
func (s *Server) readFrames(c *conn) {
	l := c.loop
	frames, bytes := 0, 0
	for {
		f, ok, err := s.dec.Next(c.tr)
		if err != nil {
			s.rejectFrame(l, c, f.Header, err)
			break
		}
		if !ok {
			break
		}
		frames++
		bytes += f.FrameSize()
		stop := s.onFrame(l, c, f)
		_, _ = c.tr.Discard(f.FrameSize())
		if stop {
			// The connection is closing: nothing more will be read.
			_, _ = c.tr.Discard(c.tr.InboundBuffered())
			break
		}
	}
	if frames > 0 && c.loggedIn() {
		// Only complete frames count as activity: a peer trickling bytes
		// (slowloris) still reaches the idle timeout. Before the login
		// nothing does: the login deadline runs from the accept.
		c.lastRecv.Store(l.now.UnixNano())
		s.metrics.bytesIn.Add(float64(bytes))
	}
}

// rejectFrame answers a framing error (bad magic, version, serializer or
// length) and closes: the stream cannot be resynchronised. After a bad
// magic nothing in the header can be trusted: the answer is JSON, seq 0
// (docs/protocol.md §2.3).
func (s *Server) rejectFrame(l *loop, c *conn, h codec.Header, err error) {
	ser, seq, code := h.Serializer, h.Seq, codec.CodeOf(err)
	if !ser.Known() || code == codec.CodeBadMagic {
		ser = codec.JSON
	}
	if code == codec.CodeBadMagic {
		seq = 0
	}
	c.fail(l, ser, seq, code, err.Error())
	// Discard whatever else is buffered: nothing more will be read.
	_, _ = c.tr.Discard(c.tr.InboundBuffered())
}

// onFrame handles one decoded frame on the event loop and reports whether
// the connection is closing (stop reading). f.Body is valid only during the
// call. A request runs here, on the loop, when nothing it needs can block
// and no earlier request of c is still queued or in flight; otherwise it
// is copied into a task and queued behind c's earlier requests.
func (s *Server) onFrame(l *loop, c *conn, f codec.Frame) (stop bool) {
	s.metrics.framesIn[f.Command].Inc()
	if c.state.Load() == stateClosing {
		return true
	}
	cmd := f.Command
	rt := &routes[cmd]
	if rt.anytime {
		rt.raw(s, l, c, f.Header, f.Body)
		return false
	}
	if !c.loggedIn() && !rt.open {
		if c.hasWork() {
			// Behind a queued REGISTER or LOGIN: executed after it, in
			// order (a NOT_LOGGED_IN answered now would close the
			// connection before the REGISTER's reply is written).
			c.enqueue(l, queuedFrame(f))
			return false
		}
		if c.noLogin() {
			c.fail(l, f.Serializer, f.Seq, codec.CodeNotLoggedIn, "log in first")
			return true
		}
	}
	if !rt.known() {
		c.replyError(l, f.Serializer, f.Seq, codec.CodeUnknownCommand, "unknown command "+cmd.String(), 0)
		return false
	}
	if s.refusing.Load() {
		c.replyError(l, f.Serializer, f.Seq, codec.CodeShuttingDown, "node is shutting down", 0)
		return false
	}
	if s.onLoop(cmd) && !c.mustQueue(cmd, len(f.Body)) {
		s.exec(l, c, f.Header, f.Body, netip.Addr{})
		return false
	}
	if cmd == codec.CmdLogin && s.inline && !c.mustQueue(cmd, len(f.Body)) {
		// A token login needs no hashing: with a store that never blocks
		// it runs here. A password login goes to a worker.
		m, err := codec.DecodeRequest(f.Serializer, cmd, f.Body)
		if err != nil {
			c.replyError(l, f.Serializer, f.Seq, codec.CodeBadBody, err.Error(), 0)
			return false
		}
		if m.(*pb.LoginRequest).Password == "" {
			s.dispatch(l, c, f.Header, m, netip.Addr{})
			return false
		}
	}
	t := queuedFrame(f)
	if cmd == codec.CmdLogin || cmd == codec.CmdRegister {
		if cmd == codec.CmdLogin {
			c.loginPending = true
		}
		if a, ok := c.tr.RemoteAddr().(*net.TCPAddr); ok {
			t.ip = a.AddrPort().Addr().Unmap()
		}
	}
	c.enqueue(l, t)
	return false
}

// queuedFrame copies f into a task for a worker (f's body is valid only
// during OnTraffic).
func queuedFrame(f codec.Frame) *task {
	t := getTask()
	t.h = f.Header
	t.body = append(t.body[:0], f.Body...)
	return t
}

// tick closes connections past the login deadline or the idle timeout.
// The scan is O(connections) once a second: at 1M connections that is about
// 1M atomic loads per second, far below one core.
func (s *Server) tick() {
	defer close(s.tickerDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stopTicker:
			return
		case now := <-t.C:
			s.expire(now.UnixNano())
			if now.Second()%10 == 0 {
				s.logins.sweep(now)
			}
		}
	}
}

func (s *Server) expire(now int64) {
	login := s.cfg.LoginTimeout.Nanoseconds()
	renew := s.cfg.SessionTTL.Nanoseconds() / 3
	s.conns.each(func(c *conn) {
		switch c.state.Load() {
		case stateNew:
			if now-c.lastRecv.Load() > login {
				// Not logged in: server frames are JSON (a login racing
				// with the deadline may have just set another serializer).
				c.mu.Lock()
				ser := c.ser
				c.mu.Unlock()
				c.fail(nil, ser, 0, codec.CodeLoginTimeout, "no login within "+s.cfg.LoginTimeout.String())
			}
		case stateLoggedIn:
			if idle := s.idleTimeout(c); now-c.lastRecv.Load() > idle.Nanoseconds() {
				c.fail(nil, c.ser, 0, codec.CodeIdleTimeout, "nothing received for "+idle.String())
			} else if sec := s.uptimeSec(now); s.sessOps != nil && int64(sec-c.renewed.Load())*int64(time.Second) > renew {
				c.renewed.Store(sec)
				s.queueSessionOp(sessionOp{route: s.routeOf(c), c: c})
			}
		}
	})
}

// Shutdown stops the node gracefully: it refuses new connections and
// logins, sends GO_AWAY to every client with reconnect delays spread over
// GoAwayWindow, waits for requests in flight (stores, pushes) to finish,
// flushes what is queued, and closes every connection. It does not close
// the Store. ctx bounds the wait; on expiry the remaining connections are
// closed anyway and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { s.stopErr = s.shutdown(ctx) })
	return s.stopErr
}

func (s *Server) shutdown(ctx context.Context) error {
	if !s.started.Load() {
		return nil
	}
	s.shutting.Store(true)
	if s.edge != nil {
		s.edge.stopTLS() // no new TLS connections
	}
	s.GoAwayAll(s.shutdownReason(), s.cfg.GoAwayWindow)
	// Clients close their connection on GO_AWAY and come back elsewhere
	// after their delay; wait for them to leave (at most the window) so
	// that none is cut off with requests in flight.
	leaveBy := time.Now().Add(s.cfg.GoAwayWindow + 500*time.Millisecond)
	for time.Now().Before(leaveBy) && ctx.Err() == nil {
		if _, n := s.sessions.count(); n == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Clients still here after the window get SHUTTING_DOWN for every new
	// request, so the work in flight drains even if they keep sending.
	s.refusing.Store(true)
	var errs []error
	idle := make(chan struct{})
	go func() {
		s.pool.idle()
		for s.inflightOps.Load() > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		close(idle)
	}()
	select {
	case <-idle:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("engine: waiting for in-flight requests: %w", ctx.Err()))
	}
	if s.edge != nil {
		s.edge.closeWebSockets() // a close frame (1001) each, not a bare TCP close
	}
	s.waitFlushed(ctx)
	close(s.stopTicker)
	<-s.tickerDone
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.eng.Stop(stopCtx); err != nil {
		errs = append(errs, fmt.Errorf("engine: stop event loops: %w", err))
	}
	if err := <-s.runErr; err != nil {
		errs = append(errs, fmt.Errorf("engine: event loops: %w", err))
	}
	if s.edge != nil {
		// The loops closed the pairs' engine ends: the pumps are ending.
		if err := s.edge.waitPumps(stopCtx); err != nil {
			errs = append(errs, err)
		}
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) || len(errs) == 0 {
		// Workers may still be blocked in the store if ctx expired; stop
		// only waits for them when they can finish.
		s.pool.stop()
	}
	if s.sessOps != nil {
		// The event loops are gone, so nothing queues route changes any
		// more; the writer drains what is left (removals of the closed
		// connections) and exits.
		close(s.sessOps)
		<-s.sessDone
	}
	if s.unhookBatch != nil {
		s.unhookBatch()
	}
	s.log.Info("stopped")
	return errors.Join(errs...)
}

// waitFlushed gives queued output a moment to reach the kernel.
func (s *Server) waitFlushed(ctx context.Context) {
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		pending := false
		s.conns.each(func(c *conn) {
			c.mu.Lock()
			if c.out != nil && len(c.out.B) > 0 {
				pending = true
			}
			c.mu.Unlock()
		})
		if !pending {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Drain is Shutdown for a node leaving a cluster: clients are told
// GO_AWAY{reason: "drain"}. The caller marks the node draining in the
// registry first, so routers stop sending clients here.
func (s *Server) Drain(ctx context.Context) error {
	s.draining.Store(true)
	return s.Shutdown(ctx)
}

// Rebalance asks a random fraction (0, 1] of this node's logged-in clients
// to reconnect elsewhere (GO_AWAY{reason: "rebalance"}), with delays spread
// over window, so that new nodes take load without restarts. It returns
// how many clients were asked.
func (s *Server) Rebalance(fraction float64, window time.Duration) int {
	n := 0
	s.sessions.each(func(c *conn) {
		if rand.Float64() >= fraction {
			return
		}
		if c.writeMsg(nil, c.ser, codec.CmdGoAway, 0, s.goAway("rebalance", window)) {
			n++
		}
	})
	return n
}

// GoAwayAll sends GO_AWAY with reason to every logged-in client, each with a
// random reconnect delay in [0, window) so they do not all come back at once.
// It returns how many clients were told.
func (s *Server) GoAwayAll(reason string, window time.Duration) int {
	n := 0
	s.sessions.each(func(c *conn) {
		if c.writeMsg(nil, c.ser, codec.CmdGoAway, 0, s.goAway(reason, window)) {
			n++
		}
	})
	return n
}

// goAway is a GO_AWAY with reason and a random reconnect delay in
// [0, window], so that the clients told at once do not all come back at
// once.
func (s *Server) goAway(reason string, window time.Duration) *pb.GoAway {
	delay := uint32(0)
	if window > 0 {
		delay = uint32(rand.Int64N(window.Milliseconds() + 1))
	}
	return &pb.GoAway{Reason: reason, DelayMs: delay, NodeId: s.cfg.NodeID}
}

// shutdownReason is GO_AWAY's reason while the node stops.
func (s *Server) shutdownReason() string {
	if s.draining.Load() {
		return "drain"
	}
	return "shutdown"
}

// newLimiter makes a user's send limiter.
func (s *Server) newLimiter() *rate.Limiter {
	if s.cfg.SendRate <= 0 {
		return rate.NewLimiter(rate.Inf, 0)
	}
	return rate.NewLimiter(rate.Limit(s.cfg.SendRate), s.cfg.SendBurst)
}

// gnetLogger adapts slog to gnet's logger (gnet logs rarely: boot, errors).
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(format string, args ...any) {}
func (g gnetLogger) Infof(format string, args ...any)  {}
func (g gnetLogger) Warnf(format string, args ...any) {
	g.l.Warn("gnet: " + fmt.Sprintf(format, args...))
}
func (g gnetLogger) Errorf(format string, args ...any) {
	g.l.Error("gnet: " + fmt.Sprintf(format, args...))
}
func (g gnetLogger) Fatalf(format string, args ...any) {
	g.l.Error("gnet fatal: " + fmt.Sprintf(format, args...))
}
