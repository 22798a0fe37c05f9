package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

// Client is a logged-in session with an IMGN server that survives
// connection loss. Create one with Dial; stop it with Close or Logout.
//
// Goroutines: a Client owns a connection supervisor (reconnects), a
// delivery goroutine (ordering, sync, PUSH_ACK; absent with SendOnly), and
// per connection a read loop and a heartbeat loop. All of them end before
// Close returns, or soon after the Client fails on its own (Done).
//
// Every method is safe for concurrent use.
type Client struct {
	cfg  Config
	log  *slog.Logger
	bo   backoff
	seq  atomic.Uint32
	last atomic.Uint64 // highest seq delivered to Messages with all below it

	ctx    context.Context // ends when the Client stops
	cancel context.CancelFunc
	done   chan struct{} // closed when every goroutine ended and the channels are closed

	mu         sync.Mutex
	cur        *conn         // the live, logged-in connection; nil while reconnecting
	ready      chan struct{} // closed while cur != nil or once the Client stopped
	readyOpen  bool          // ready is not closed yet
	terr       error         // why the Client stopped; nil while running
	user       string        // logged-in user (LOGIN_OK.user)
	nodeID     string
	loggingOut bool

	msgs       chan *pb.Message
	notices    chan *pb.Notice
	chatEvents chan ChatEvent

	// Delivery goroutine inputs.
	inbound   chan []*pb.Message // pushes and own sent messages; bounded, never blocks the producer
	lost      atomic.Bool        // inbound overflowed or a push was undecodable: sync
	wake      chan struct{}      // cap 1: lost was set
	connected chan uint64        // cap 1: a new connection logged in with this cursor
	syncReq   chan chan error    // SyncNow
	ackReq    chan chan struct{} // Logout: flush the ack
	workers   sync.WaitGroup     // the delivery goroutine

	closeOnce sync.Once
}

// Dial connects to the server, logs in, and starts the Client. A login
// refused with a retryable error (STORE_UNAVAILABLE, BUSY, SHUTTING_DOWN,
// TOO_MANY_CONNECTIONS, ...), or a router with no node to offer, is tried
// again with backoff, up to DialAttempts times while ctx lasts; any other
// failure (an *Error such as AUTH_FAILED, or a network error: nothing
// listens there) is returned at once. After Dial succeeds the Client
// reconnects by itself.
//
// Unless Config.SendOnly, it then syncs the inbox in the background from
// the inbox head at login with Config.StartAtHead, else from
// Config.AfterSeq, or when that is nil from this device's server cursor
// (LOGIN_OK.cursor), and delivers every message on Messages.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults(true)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg:        cfg,
		log:        cfg.Logger,
		bo:         backoff{base: cfg.ReconnectBase, max: cfg.ReconnectMax},
		ctx:        cctx,
		cancel:     cancel,
		done:       make(chan struct{}),
		ready:      make(chan struct{}),
		readyOpen:  true,
		msgs:       make(chan *pb.Message, cfg.ReceiveBuffer),
		notices:    make(chan *pb.Notice, cfg.NoticeBuffer),
		chatEvents: make(chan ChatEvent, cfg.ChatEventBuffer),
		inbound:    make(chan []*pb.Message, cfg.InboundQueue),
		wake:       make(chan struct{}, 1),
		connected:  make(chan uint64, 1),
		syncReq:    make(chan chan error),
		ackReq:     make(chan chan struct{}),
	}
	var cn *conn
	var lok *pb.LoginOK
	var exclude []string
	for attempt := 0; ; attempt++ {
		var node string
		cn, lok, node, err = c.connectNode(ctx, exclude)
		if err == nil {
			break
		}
		if attempt+1 >= DialAttempts || !retryableDial(err) || !sleepCtx(ctx, c.bo.delay(attempt)) {
			cancel()
			return nil, err
		}
		if node != "" && !slices.Contains(exclude, node) {
			exclude = append(exclude, node)
		}
		if errors.Is(err, ErrNoNodeAvailable) {
			exclude = nil
		}
	}
	start := lok.GetCursor()
	switch {
	case cfg.StartAtHead:
		start = lok.GetHeadSeq()
	case cfg.AfterSeq != nil:
		start = *cfg.AfterSeq
	}
	c.last.Store(start)
	if !cfg.SendOnly {
		c.workers.Add(1)
		go c.deliverLoop(newOrderer(start, cfg.ReorderBuffer, cfg.GapGrace), lok.GetCursor())
	}
	c.publish(cn, lok)
	go c.run(cn)
	return c, nil
}

// DialAttempts bounds Dial's attempts on retryable login errors.
const DialAttempts = 5

// retryableDial reports whether a failed first connect is worth another
// try: the server or router asked for it.
func retryableDial(err error) bool {
	var se *Error
	if errors.As(err, &se) {
		return se.Retryable
	}
	return errors.Is(err, ErrNoNodeAvailable)
}

// sleepCtx waits d or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Messages returns the stream of inbox entries: every message of the
// user's inbox after the starting position (see Dial), each seq exactly
// once, in ascending seq order, without gaps (a seq that does not exist on
// the server, e.g. trimmed, is skipped). It includes the user's own sent
// messages (Message.From == User()): those sent from other devices and,
// built from the SEND_ACK, those sent by this Client. Filter them if
// unwanted.
//
// Backpressure: the channel holds Config.ReceiveBuffer messages. When the
// application is slow the delivery goroutine blocks on it; meanwhile
// pushes queue up to Config.InboundQueue batches and further ones are
// dropped, never blocking the connection. Dropped messages stay in the
// server inbox and are fetched by SYNC once the application catches up, so
// slowness costs bandwidth, never messages.
//
// "Delivered" (and what PUSH_ACK acknowledges) means placed in this
// channel: after a crash, up to ReceiveBuffer messages that were in the
// channel but not processed are not redelivered from the server cursor.
// Applications that need more persist the seq they processed and pass it
// as Config.AfterSeq.
//
// The channel is closed when the Client stops (Close, Logout, kick, or
// permanent failure). It is never fed with Config.SendOnly.
func (c *Client) Messages() <-chan *pb.Message { return c.msgs }

// Notices returns operator broadcasts (NOTICE). They are not stored: a
// notice arriving while the channel (Config.NoticeBuffer) is full is
// dropped. The channel is closed when the Client stops.
func (c *Client) Notices() <-chan *pb.Notice { return c.notices }

// Done is closed when the Client has stopped and all its goroutines ended:
// after Close or Logout, or on its own after a KICK, a permanent login
// failure (e.g. AUTH_FAILED on reconnect) or, with DisableReconnect, a lost
// connection. Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the Client stopped: ErrClosed after Close or Logout, an
// *Error matching ErrKicked after a KICK, the login *Error, or
// ErrConnectionLost. It returns nil while the Client runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.terr
}

// User returns the logged-in user id (from LOGIN_OK; with a token it is the
// token's subject).
func (c *Client) User() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.user
}

// Device returns the device id in use (Config.Device or the random default).
func (c *Client) Device() string { return c.cfg.Device }

// NodeID returns the id of the node currently connected, "" while
// reconnecting.
func (c *Client) NodeID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.nodeID
}

// LastSeq returns the highest seq delivered on Messages (every lower seq
// was delivered too), or the starting position before the first message.
func (c *Client) LastSeq() uint64 { return c.last.Load() }

// Close stops the Client: outstanding calls return ErrClosed, pending
// PUSH_ACKs are flushed best-effort, the connection is closed without
// LOGOUT, and Messages and Notices are closed. It waits for every goroutine
// and is idempotent. It always returns nil.
func (c *Client) Close() error {
	c.stop(ErrClosed)
	<-c.done
	return nil
}

// stop records the Client's final error (first wins) and starts shutdown.
func (c *Client) stop(err error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		if c.terr == nil {
			c.terr = err
		}
		if c.readyOpen {
			close(c.ready) // wake waiters; they see terr
			c.readyOpen = false
		}
		c.mu.Unlock()
		c.cancel()
	})
}

func (c *Client) nextSeq() uint32 {
	for {
		if s := c.seq.Add(1); s != 0 {
			return s
		}
	}
}

// ---- connection supervisor ----

// connectNode resolves, dials and logs in once, and reports the node the
// resolver chose (when it names one), so a failed attempt can be excluded
// from the next. On success the conn's heartbeat runs and cn.nodeID is
// set; the conn is not yet published.
func (c *Client) connectNode(ctx context.Context, exclude []string) (*conn, *pb.LoginOK, string, error) {
	addr, nodeID, err := c.cfg.Resolver(ctx, exclude)
	if err != nil {
		return nil, nil, "", fmt.Errorf("client: resolve: %w", err)
	}
	cn, lok, err := c.dialLogin(ctx, addr, nodeID)
	return cn, lok, nodeID, err
}

func (c *Client) dialLogin(ctx context.Context, addr, nodeID string) (*conn, *pb.LoginOK, error) {
	var err error
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	nc, err := c.cfg.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return nil, nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	cn := newConn(nc, &c.cfg, c, addr, nodeID)
	req := &pb.LoginRequest{User: c.cfg.User, Password: c.cfg.Password, Token: c.cfg.Token, Device: c.cfg.Device}
	if c.cfg.TokenSource != nil {
		if req.Token, err = c.cfg.TokenSource(ctx); err != nil {
			cn.shutdown(err)
			return nil, nil, fmt.Errorf("client: token source: %w", err)
		}
	}
	resp, err := cn.roundTrip(ctx, codec.CmdLogin, 0, c.nextSeq(), req, codec.CmdLoginOK, func() proto.Message { return new(pb.LoginOK) })
	if err != nil {
		cn.shutdown(err)
		who := c.cfg.User
		if who == "" {
			who = "with a token" // the subject is only known from LOGIN_OK
		}
		return nil, nil, fmt.Errorf("client: login %s at %s: %w", who, addr, err)
	}
	lok := resp.(*pb.LoginOK)
	if lok.GetNodeId() != "" {
		cn.nodeID = lok.GetNodeId()
	}
	hb := c.cfg.Heartbeat
	if hb == 0 {
		hb = time.Duration(lok.GetHeartbeatMs()) * time.Millisecond
		if hb <= 0 {
			hb = DefaultHeartbeat
		}
	}
	cn.startHeartbeat(hb, c.nextSeq)
	c.mu.Lock()
	c.user = lok.GetUser()
	if c.user == "" {
		c.user = c.cfg.User
	}
	c.mu.Unlock()
	return cn, lok, nil
}

// run is the supervisor: it publishes the live conn, waits for its end,
// and reconnects unless the end is final. It owns every conn and, when the
// Client stops, tears everything down and closes done.
func (c *Client) run(cn *conn) {
	defer c.teardown()
	for {
		exclude, delay, final := c.watch(cn)
		c.unpublish(cn)
		if final != nil {
			c.stop(final)
			return
		}
		if c.ctx.Err() != nil {
			return
		}
		var lok *pb.LoginOK
		if cn, lok = c.reconnect(exclude, delay); cn == nil {
			return
		}
		c.publish(cn, lok)
	}
}

// watch waits for cn to end. It returns the nodes to avoid and the delay
// before reconnecting, or final != nil when the Client must stop. After a
// GO_AWAY it stops using cn, lets replies already due arrive (at most the
// delay or one request timeout), closes it, and asks for the delay.
func (c *Client) watch(cn *conn) (exclude []string, delay time.Duration, final error) {
	select {
	case <-c.ctx.Done():
		c.workers.Wait() // let the delivery goroutine flush its ack on cn
		cn.shutdown(ErrClosed)
		return nil, 0, nil
	case <-cn.done:
	case g := <-cn.goAway:
		received := time.Now()
		delay = time.Duration(g.GetDelayMs()) * time.Millisecond
		delay += time.Duration(rand.Float64() * float64(delay) / 5) // our own jitter, up to +20%
		node := g.GetNodeId()
		if node == "" {
			node = cn.nodeID
		}
		if node != "" {
			exclude = []string{node}
		}
		c.log.Info("go_away", "reason", g.GetReason(), "delay", delay, "node", node)
		c.unpublish(cn) // no new requests on cn
		drain := min(delay, c.cfg.RequestTimeout)
		deadline := time.NewTimer(drain)
		tick := time.NewTicker(5 * time.Millisecond)
	wait:
		for cn.pendingCount() > 0 {
			select {
			case <-deadline.C:
				break wait
			case <-tick.C:
			case <-cn.done:
				break wait
			case <-c.ctx.Done():
				break wait
			}
		}
		deadline.Stop()
		tick.Stop()
		cause := fmt.Errorf("go_away (%s)", g.GetReason())
		cn.shutdown(cause)
		if c.cfg.DisableReconnect {
			return nil, 0, &connLostError{cause}
		}
		return exclude, max(0, delay-time.Since(received)), nil
	}
	cn.shutdown(nil)
	cause := cn.err()
	if k := cn.kicked(); k != nil {
		c.log.Warn("kicked", "code", k.Code, "reason", k.Message)
		return nil, 0, k
	}
	c.mu.Lock()
	out := c.loggingOut
	c.mu.Unlock()
	if out || c.ctx.Err() != nil {
		return nil, 0, ErrClosed
	}
	if c.cfg.DisableReconnect {
		return nil, 0, &connLostError{cause}
	}
	c.log.Info("connection lost", "err", cause)
	if cn.nodeID != "" {
		// A node that dropped us may be dying: ask the resolver for
		// another one first (a router then skips it until its registry
		// session expires).
		exclude = []string{cn.nodeID}
	}
	return exclude, 0, nil
}

// reconnect dials until a login succeeds (returned), the Client stops, or
// a login fails permanently (the Client is stopped; nil is returned).
func (c *Client) reconnect(exclude []string, delay time.Duration) (*conn, *pb.LoginOK) {
	if !c.sleep(delay) {
		return nil, nil
	}
	for attempt := 0; ; attempt++ {
		if !c.sleep(c.bo.delay(attempt)) {
			return nil, nil
		}
		cn, lok, node, err := c.connectNode(c.ctx, exclude)
		if err == nil {
			c.log.Info("reconnected", "node", cn.nodeID, "attempts", attempt+1)
			return cn, lok
		}
		if c.ctx.Err() != nil {
			return nil, nil
		}
		var se *Error
		if errors.As(err, &se) && !se.Retryable && !se.Fatal &&
			!(se.Code == codec.CodeTokenExpired && c.cfg.TokenSource != nil) {
			c.log.Error("login failed permanently", "err", err)
			c.stop(err)
			return nil, nil
		}
		c.log.Info("reconnect failed", "attempt", attempt+1, "err", err)
		if node != "" && !slices.Contains(exclude, node) {
			exclude = append(exclude, node)
		}
		if len(exclude) > 8 || errors.Is(err, ErrNoNodeAvailable) {
			exclude = nil // every node failed recently: start over
		}
	}
}

// sleep waits d; false if the Client stopped first.
func (c *Client) sleep(d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

func (c *Client) publish(cn *conn, lok *pb.LoginOK) {
	c.mu.Lock()
	if c.terr != nil {
		c.mu.Unlock()
		return
	}
	c.cur = cn
	c.nodeID = cn.nodeID
	if c.readyOpen {
		close(c.ready)
		c.readyOpen = false
	}
	c.mu.Unlock()
	// Tell the delivery goroutine: sync, and acks restart from the cursor.
	select {
	case <-c.connected:
	default:
	}
	c.connected <- lok.GetCursor()
}

func (c *Client) unpublish(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != cn {
		return
	}
	c.cur = nil
	if c.terr == nil && !c.readyOpen {
		c.ready = make(chan struct{})
		c.readyOpen = true
	}
}

// teardown runs when the supervisor ends: it stops the Client (if not yet
// stopped), waits for the delivery goroutine, closes the channels and done.
func (c *Client) teardown() {
	c.stop(ErrClosed)
	c.workers.Wait()
	close(c.notices) // the only senders, the read loops, have ended
	close(c.chatEvents)
	if c.cfg.SendOnly {
		close(c.msgs) // otherwise closed by the delivery goroutine
	}
	close(c.done)
}

// liveConn returns the published conn or nil, ignoring whether the Client
// is stopping (the delivery goroutine's final ack uses it).
func (c *Client) liveConn() *conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// conn returns the live conn. With wait it waits for a reconnect;
// otherwise it returns errNotConnected. A stopped Client returns its
// final error.
func (c *Client) conn(ctx context.Context, wait bool) (*conn, error) {
	for {
		c.mu.Lock()
		cn, ready, terr := c.cur, c.ready, c.terr
		c.mu.Unlock()
		switch {
		case terr != nil:
			return nil, terr
		case cn != nil:
			return cn, nil
		case !wait:
			return nil, errNotConnected
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ---- events from the read loops (must not block) ----

func (c *Client) onPush(msgs []*pb.Message) { c.offer(msgs) }

func (c *Client) onPushLost() {
	if !c.cfg.SendOnly {
		c.lost.Store(true)
		c.poke()
	}
}

func (c *Client) onNotice(n *pb.Notice) {
	select {
	case c.notices <- n:
	default:
		c.log.Warn("notice dropped: Notices channel full", "text", n.GetText())
	}
}

// offer queues inbox entries for the delivery goroutine without blocking;
// when the queue is full they are dropped and a sync is requested.
func (c *Client) offer(msgs []*pb.Message) {
	if c.cfg.SendOnly || len(msgs) == 0 {
		return
	}
	select {
	case c.inbound <- msgs:
	default:
		c.lost.Store(true)
		c.poke()
	}
}

func (c *Client) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// ---- requests ----

// retryMode says which failures a request retries (same seq, FlagResent).
type retryMode int

const (
	// retryNone: one attempt; every error is returned.
	retryNone retryMode = iota
	// retryServer: retries retryable server errors; a timeout or a lost
	// connection is returned (the request is not idempotent).
	retryServer
	// retryAll: the request is idempotent; it also retries after timeouts
	// and lost connections, on the next connection.
	retryAll
)

type request struct {
	cmd, want codec.Command
	body      proto.Message
	newResp   func() proto.Message
	mode      retryMode
	wait      bool // wait for a connection (false: fail with errNotConnected)
}

// do runs req until it succeeds, fails for good, ctx ends or the Client
// stops. Every attempt uses the same request seq.
func (c *Client) do(ctx context.Context, req request) (proto.Message, error) {
	seq := c.nextSeq()
	var flags codec.Flags
	var answer error // the server's latest answer (an *Error) to an earlier attempt
	for attempt := 0; ; attempt++ {
		cn, err := c.conn(ctx, req.wait)
		if err != nil {
			return nil, err
		}
		resp, err := cn.roundTrip(ctx, req.cmd, flags, seq, req.body, req.want, req.newResp)
		if err == nil {
			return resp, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			// A deadline that cuts an attempt short reports the server's
			// answer to the one before it, as one that ends between
			// attempts does (below).
			if se := (*Error)(nil); answer != nil && !errors.As(err, &se) {
				err = answer
			}
			return nil, fmt.Errorf("%s: %w (last attempt: %w)", req.cmd, cerr, err)
		}
		if c.ctx.Err() != nil {
			return nil, c.Err()
		}
		var wait time.Duration
		var se *Error
		switch {
		case errors.As(err, &se):
			if !se.Retryable || req.mode == retryNone {
				return nil, err
			}
			answer = err
			wait = c.bo.retryDelay(attempt, se.RetryAfter)
		case errors.Is(err, ErrConnectionLost):
			if req.mode != retryAll {
				return nil, fmt.Errorf("%s: outcome unknown: %w", req.cmd, err)
			}
			// c.conn waits for the supervisor's reconnect.
		case errors.Is(err, ErrTimeout):
			if req.mode != retryAll {
				return nil, err
			}
			wait = c.bo.delay(attempt)
		default:
			return nil, err
		}
		c.log.Debug("retrying", "cmd", req.cmd, "seq", seq, "attempt", attempt+1, "wait", wait, "err", err)
		if perr := c.pause(ctx, wait); perr != nil {
			// Keep the server's answer visible: a caller whose deadline
			// ends while retrying FORWARD_FAILED must see that code
			// (errors.As finds the *Error), not a bare deadline.
			return nil, fmt.Errorf("%s: %w (last attempt: %w)", req.cmd, perr, err)
		}
		flags = codec.FlagResent
	}
}

// pause waits d, or returns ctx's error or the Client's final error.
func (c *Client) pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return c.Err()
	}
}
