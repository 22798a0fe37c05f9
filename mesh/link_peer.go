package mesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/meshpb"
	"github.com/imgn/imgn/persist"
)

// Link states of a peer.
const (
	linkConnecting = iota // first dial, or redial right after a drop: requests queue
	linkUp                // connected
	linkDown              // the last dial failed; in backoff: requests fail at once
)

// peer is the outbound side of one peer: the link this node dials to send
// its requests. One goroutine (run) owns the connection and writes; a
// second one reads replies while the link is up.
type peer struct {
	l   *Links
	id  string
	ctx context.Context // ends when the peer leaves or the transport closes
	// cancel ends ctx.
	cancel context.CancelFunc
	queue  chan outFrame // frames to write, bounded by QueueSize
	wake   chan struct{} // info changed: redial now if needed

	mu      sync.Mutex          // guards the fields below
	info    membership.NodeInfo // the registry's latest entry
	state   int
	lastErr error
	closed  bool // run has exited: no new requests

	// pending holds the requests waiting for a reply, by frame seq; its
	// refusal follows state (set under mu): requests fail at once while
	// the link is down or the peer gone.
	pending Pending
	pp      *PendingPeer
}

// outFrame is one encoded frame waiting for the writer.
type outFrame struct {
	buf     *codec.Buffer
	seq     uint32    // the pending append's seq, 0 for push and kick
	expires time.Time // a push or kick older than this is dropped
}

func newPeer(l *Links, n membership.NodeInfo) *peer {
	ctx, cancel := context.WithCancel(l.ctx)
	p := &peer{
		l: l, id: n.ID, ctx: ctx, cancel: cancel, info: n,
		queue: make(chan outFrame, l.cfg.QueueSize),
		wake:  make(chan struct{}, 1),
	}
	p.pp = p.pending.NewPeer(n.ID)
	return p
}

// update records the registry's latest entry and wakes the connection
// goroutine when the address or boot epoch changed.
func (p *peer) update(n membership.NodeInfo) {
	p.mu.Lock()
	changed := n.MeshAddr != p.info.MeshAddr || n.BootEpoch != p.info.BootEpoch
	p.info = n
	p.mu.Unlock()
	if changed {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

func (p *peer) snapshot() membership.NodeInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.info
}

// append forwards one append (entries only when entriesOnly) and waits for
// the reply, the deadline, or the link's failure.
func (p *peer) append(ctx context.Context, msg persist.Message, inboxes []string, entriesOnly bool) (persist.AppendResult, error) {
	r := p.call(ctx, meshpb.CmdAppend, func(budgetMs uint32) proto.Message {
		return &meshpb.AppendRequest{Msg: meshpb.FromMessage(msg), Inboxes: inboxes, TimeoutMs: budgetMs, EntriesOnly: entriesOnly}
	})
	return r.Res, r.Err
}

// admin sends an operator action and waits for the count, like append.
func (p *peer) admin(ctx context.Context, req cluster.AdminRequest) (int, error) {
	r := p.call(ctx, meshpb.CmdAdmin, func(uint32) proto.Message { return meshpb.FromAdmin(req) })
	return r.Count, r.Err
}

// call sends one request (body gets the caller's remaining budget in ms)
// and waits for its reply, the deadline, or the link's failure. Every
// failure wraps cluster.ErrForward.
func (p *peer) call(ctx context.Context, cmd codec.Command, body func(budgetMs uint32) proto.Message) CallResult {
	cfg := &p.l.cfg
	ctx, cancel, budget, err := RequestBudget(ctx, p.id, cfg.RequestTimeout)
	defer cancel()
	if err != nil {
		return CallResult{Err: err}
	}
	req := body(budget)
	seq, done, err := p.pending.Add(p.pp, cfg.QueueSize)
	if err != nil {
		return CallResult{Err: err}
	}
	buf, err := encodeFrame(cmd, seq, req)
	if err == nil && len(buf.B)-codec.HeaderSize > cfg.MaxBody {
		codec.PutBuffer(buf)
		err = fmt.Errorf("%w: %s of %d bytes exceeds the mesh frame limit %d", persist.ErrInvalid, cmd, len(buf.B)-codec.HeaderSize, cfg.MaxBody)
	}
	if err != nil {
		p.pending.Forget(seq)
		return CallResult{Err: fmt.Errorf("mesh: node %s: %w", p.id, err)}
	}
	select {
	case p.queue <- outFrame{buf: buf, seq: seq}:
	default:
		codec.PutBuffer(buf)
		p.pending.Forget(seq)
		return CallResult{Err: ForwardError(p.id, "write queue full", nil)}
	}
	r, ok := p.pending.Wait(ctx, seq, done)
	if !ok {
		return CallResult{Err: ForwardError(p.id, "no reply in time", ctx.Err())}
	}
	return r
}

// send queues a push or kick without blocking; it is dropped when the
// link is down or the queue is full (receivers recover by sync).
func (p *peer) send(cmd codec.Command, m proto.Message) {
	p.mu.Lock()
	down := p.closed || p.state == linkDown
	p.mu.Unlock()
	if down {
		return
	}
	buf, err := encodeFrame(cmd, 0, m)
	if err != nil || len(buf.B)-codec.HeaderSize > p.l.cfg.MaxBody {
		if err == nil {
			codec.PutBuffer(buf)
		}
		p.l.log.Warn("mesh: frame not sent", "peer", p.id, "cmd", cmd, "err", err)
		return
	}
	select {
	case p.queue <- outFrame{buf: buf, expires: time.Now().Add(p.l.cfg.RequestTimeout)}:
	default:
		codec.PutBuffer(buf)
		p.l.log.Debug("mesh: queue full; dropped", "peer", p.id, "cmd", cmd)
	}
}

// setState records the link state and what requests get: leaving linkUp
// fails every waiting one with err (wrapped in cluster.ErrForward); new
// ones fail at once while the link is down.
func (p *peer) setState(state int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state, p.lastErr = state, err
	// Refuse before failing, so that no request slips in between.
	switch {
	case p.closed:
		p.pending.Refuse(p.pp, ForwardError(p.id, "peer gone", nil))
	case state == linkDown:
		p.pending.Refuse(p.pp, ForwardError(p.id, "link down", err))
	default:
		p.pending.Refuse(p.pp, nil)
	}
	if state != linkUp {
		p.pending.Fail(p.pp, ForwardError(p.id, "link lost before the reply", err))
	}
}

// run owns the outbound link: dial, serve until it fails, redial with
// backoff, until the peer is removed or the transport closes.
func (p *peer) run() {
	defer p.l.wg.Done()
	defer func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.setState(linkDown, errors.New("peer removed or transport closed"))
		for {
			select {
			case f := <-p.queue:
				codec.PutBuffer(f.buf)
			default:
				return
			}
		}
	}()
	log := p.l.log.With("peer", p.id)
	failures := 0
	for p.ctx.Err() == nil {
		info := p.snapshot()
		conn, br, hello, err := p.dial(info)
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			failures++
			p.mu.Lock()
			wasDown := p.state == linkDown
			p.mu.Unlock()
			p.setState(linkDown, err)
			if !wasDown {
				log.Warn("mesh: cannot reach peer; retrying with backoff", "addr", info.MeshAddr, "err", err)
			} else {
				log.Debug("mesh: dial failed", "addr", info.MeshAddr, "attempt", failures, "err", err)
			}
			if !p.sleep(backoff(p.l.cfg.BackoffMin, p.l.cfg.BackoffMax, failures)) {
				return
			}
			continue
		}
		up := time.Now()
		p.setState(linkUp, nil)
		log.Info("mesh: link up", "addr", info.MeshAddr, "peer_epoch", hello.BootEpoch)
		err = p.serve(conn, br, info, hello)
		if p.ctx.Err() != nil {
			return
		}
		log.Warn("mesh: link lost; redialing", "err", err)
		if time.Since(up) >= p.l.cfg.BackoffMax || errors.Is(err, errPeerChanged) {
			failures = 0
		}
		failures++
		if failures == 1 {
			p.setState(linkConnecting, err) // redial at once; requests wait
			continue
		}
		// A link that keeps dropping right after it came up is redialed
		// with backoff, not in a tight loop.
		p.setState(linkDown, err)
		if !p.sleep(backoff(p.l.cfg.BackoffMin, p.l.cfg.BackoffMax, failures)) {
			return
		}
	}
}

// sleep waits d, or less if the peer's info changes; false means stop.
func (p *peer) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.wake:
		return true
	case <-p.ctx.Done():
		return false
	}
}

// dial connects to info.MeshAddr and exchanges HELLO.
func (p *peer) dial(info membership.NodeInfo) (net.Conn, *bufio.Reader, *meshpb.Hello, error) {
	cfg := &p.l.cfg
	if info.MeshAddr == "" {
		return nil, nil, nil, errors.New("peer publishes no mesh address")
	}
	ctx, cancel := context.WithTimeout(p.ctx, cfg.DialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", info.MeshAddr)
	if err != nil {
		return nil, nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	hello, br, err := p.handshake(conn, info)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, nil, nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, br, hello, nil
}

func (p *peer) handshake(conn net.Conn, info membership.NodeInfo) (*meshpb.Hello, *bufio.Reader, error) {
	self := p.l.self
	var nonce []byte
	if len(p.l.cfg.Secret) > 0 {
		var err error
		if nonce, err = newNonce(); err != nil {
			return nil, nil, err
		}
	}
	err := writeFrameNow(conn, meshpb.CmdHello, 1, &meshpb.Hello{
		Version: meshpb.Version, NodeId: self.ID, BootEpoch: self.BootEpoch, PeerId: p.id,
		PingIntervalMs: uint32(p.l.cfg.PingInterval.Milliseconds()), Nonce: nonce,
	})
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, 32<<10)
	fr := frameReader{r: br, max: p.l.cfg.MaxBody}
	h, body, err := fr.next()
	if err != nil {
		return nil, nil, fmt.Errorf("hello: %w", err)
	}
	switch h.Command {
	case meshpb.CmdHello:
	case meshpb.CmdError:
		var e meshpb.Error
		if err := unmarshal(body, &e); err != nil {
			return nil, nil, err
		}
		err := fmt.Errorf("peer refused the link: %s (%s)", e.Message, e.Code)
		if e.Code == meshpb.ErrorCode_ERROR_CODE_AUTH {
			err = p.l.authFailed(conn.RemoteAddr(), fmt.Errorf("%w: %w", errAuth, err))
		}
		return nil, nil, err
	default:
		return nil, nil, fmt.Errorf("%w: %s instead of HELLO", errProtocol, h.Command)
	}
	var hello meshpb.Hello
	if err := unmarshal(body, &hello); err != nil {
		return nil, nil, err
	}
	switch {
	case hello.Version != meshpb.Version:
		return nil, nil, fmt.Errorf("%w: peer speaks mesh version %d", errProtocol, hello.Version)
	case hello.NodeId != p.id:
		return nil, nil, fmt.Errorf("%w: %s answers at %s, expected %s", errProtocol, hello.NodeId, info.MeshAddr, p.id)
	case hello.BootEpoch < info.BootEpoch:
		return nil, nil, fmt.Errorf("%w: %s at %s is an older run (epoch %d < %d)", errProtocol, p.id, info.MeshAddr, hello.BootEpoch, info.BootEpoch)
	}
	auth, err := p.dialerProof(nonce, &hello)
	if err != nil {
		return nil, nil, p.l.authFailed(conn.RemoteAddr(), err)
	}
	if auth != nil {
		if err := writeFrameNow(conn, meshpb.CmdAuth, 1, auth); err != nil {
			return nil, nil, err
		}
	}
	return &hello, br, nil
}

// errPeerChanged ends a link whose peer moved or restarted (registry
// update): the new address or run is dialed at once.
var errPeerChanged = errors.New("mesh: peer address or boot epoch changed")

// serve runs the link dialed to info: the calling goroutine writes
// (batching frames and flushing when the queue is empty, pinging every
// PingInterval), a second one reads replies. It returns when either fails,
// the peer's registry entry moves to another address or a newer run, or
// the peer stops.
func (p *peer) serve(conn net.Conn, br *bufio.Reader, info membership.NodeInfo, hello *meshpb.Hello) error {
	readErr := make(chan error, 1)
	p.l.wg.Add(1)
	go func() {
		defer p.l.wg.Done()
		readErr <- p.readLoop(conn, br)
	}()
	err, readerDone := p.writeLoop(conn, readErr, info, hello)
	conn.Close()
	if !readerDone {
		<-readErr
	}
	return err
}

func (p *peer) writeLoop(conn net.Conn, readErr <-chan error, info membership.NodeInfo, hello *meshpb.Hello) (error, bool) {
	cfg := &p.l.cfg
	bw := bufio.NewWriterSize(conn, 32<<10)
	ping := time.NewTicker(cfg.PingInterval)
	defer ping.Stop()
	var pingSeq uint32
	write := func(f outFrame) error {
		defer codec.PutBuffer(f.buf)
		if f.seq != 0 && !p.pending.Waiting(f.seq) {
			return nil // the caller gave up already
		}
		if f.seq == 0 && time.Now().After(f.expires) {
			return nil // a stale push or kick
		}
		_, err := bw.Write(f.buf.B)
		return err
	}
	for {
		select {
		case err := <-readErr:
			return err, true
		case <-p.ctx.Done():
			return p.ctx.Err(), false
		case <-p.wake:
			if now := p.snapshot(); now.MeshAddr != info.MeshAddr || now.BootEpoch > hello.BootEpoch {
				return errPeerChanged, false
			}
		case <-ping.C:
			pingSeq++
			conn.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout))
			if err := writeFrameNow(bw, meshpb.CmdPing, pingSeq, nil); err != nil {
				return err, false
			}
			if err := bw.Flush(); err != nil {
				return err, false
			}
		case f := <-p.queue:
			conn.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout))
			if err := write(f); err != nil {
				return err, false
			}
			// Batch: write whatever else is queued, flush once drained.
			// Yield once when the queue looks empty, so that requests
			// being queued right now share the write (one syscall for
			// many frames under load).
			yielded := false
		drain:
			for range 4096 {
				select {
				case f := <-p.queue:
					if err := write(f); err != nil {
						return err, false
					}
				default:
					if yielded {
						break drain
					}
					yielded = true
					runtime.Gosched()
				}
			}
			if err := bw.Flush(); err != nil {
				return err, false
			}
		}
	}
}

// readLoop reads replies until the link fails.
func (p *peer) readLoop(conn net.Conn, br *bufio.Reader) error {
	cfg := &p.l.cfg
	fr := frameReader{r: br, max: cfg.MaxBody}
	dl := deadlineSetter{conn: conn, idle: 3 * cfg.PingInterval}
	for {
		dl.touch()
		h, body, err := fr.next()
		if err != nil {
			return err
		}
		switch h.Command {
		case meshpb.CmdAppendResult:
			var r meshpb.AppendResult
			if err := unmarshal(body, &r); err != nil {
				return err
			}
			res, rerr := r.Result(p.id)
			p.pending.Complete(h.Seq, CallResult{Res: res, Err: rerr})
		case meshpb.CmdAdminResult:
			var r meshpb.AdminResult
			if err := unmarshal(body, &r); err != nil {
				return err
			}
			n, rerr := r.Result(p.id)
			p.pending.Complete(h.Seq, CallResult{Count: n, Err: rerr})
		case meshpb.CmdPong:
		case meshpb.CmdError:
			var e meshpb.Error
			if err := unmarshal(body, &e); err != nil {
				return err
			}
			return fmt.Errorf("peer closed the link: %s (%s)", e.Message, e.Code)
		default:
			return fmt.Errorf("%w: unexpected %s on an outbound link", errProtocol, h.Command)
		}
	}
}
