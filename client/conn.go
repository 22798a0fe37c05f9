package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// events receives the server-initiated frames of a conn. Methods are
// called from the conn's read goroutine and must not block.
type events interface {
	onPush(msgs []*pb.Message)
	onPushLost() // a PUSH could not be decoded: messages are missing
	onNotice(n *pb.Notice)
	onChatEvent(e ChatEvent)
}

// noEvents discards server-initiated frames (Register's connection).
type noEvents struct{}

func (noEvents) onPush([]*pb.Message)  {}
func (noEvents) onPushLost()           {}
func (noEvents) onNotice(*pb.Notice)   {}
func (noEvents) onChatEvent(ChatEvent) {}

// conn is one TCP connection speaking the IMGN protocol. It owns two
// goroutines: the read loop (started by newConn) and, after login, the
// heartbeat loop. Requests are correlated by seq through pending. Writes
// are serialized by wmu and bounded by a write deadline.
//
// Lifecycle: close(cause) may be called from any goroutine, any number of
// times; the first cause wins. shutdown additionally waits for the
// goroutines and must not be called from them.
type conn struct {
	nc      net.Conn
	ser     codec.SerializerID
	dec     codec.Decoder
	timeout time.Duration // per-request reply and write timeout
	ev      events
	log     *slog.Logger
	addr    string
	nodeID  string // from the resolver, then LOGIN_OK; set before the conn is published

	wmu  sync.Mutex
	wbuf []byte

	pmu     sync.Mutex
	pending map[uint32]*call

	done      chan struct{} // closed by close
	closeOnce sync.Once
	cause     error // why the conn closed; written once before done is closed

	kick   chan *Error     // cap 1: the KICK received, if any
	goAway chan *pb.GoAway // cap 1: the first GO_AWAY received
	idle   time.Duration   // read deadline: silence longer than this kills the conn (0 = none)
	idleMu sync.Mutex

	wg sync.WaitGroup
}

type call struct {
	want    codec.Command
	newResp func() proto.Message
	ch      chan result // cap 1; written once by the read loop
}

type result struct {
	msg proto.Message
	err error
}

func newConn(nc net.Conn, cfg *Config, ev events, addr, nodeID string) *conn {
	cn := &conn{
		nc:      nc,
		ser:     cfg.Serializer,
		dec:     codec.Decoder{MaxBody: cfg.MaxFrameBody},
		timeout: cfg.RequestTimeout,
		ev:      ev,
		log:     cfg.Logger.With("addr", addr),
		addr:    addr,
		nodeID:  nodeID,
		pending: make(map[uint32]*call),
		done:    make(chan struct{}),
		kick:    make(chan *Error, 1),
		goAway:  make(chan *pb.GoAway, 1),
	}
	cn.wg.Add(1)
	go cn.readLoop()
	return cn
}

// close closes the connection with cause (first call wins) and wakes every
// waiter. It does not wait for the goroutines.
func (cn *conn) close(cause error) {
	cn.closeOnce.Do(func() {
		if cause == nil {
			cause = io.EOF
		}
		cn.cause = cause
		close(cn.done)
		_ = cn.nc.Close()
	})
}

// shutdown closes the conn and waits for its goroutines.
func (cn *conn) shutdown(cause error) {
	cn.close(cause)
	cn.wg.Wait()
}

// err returns why the conn closed; valid after done is closed.
func (cn *conn) err() error {
	<-cn.done
	return cn.cause
}

// kicked returns the KICK received on this conn, or nil.
func (cn *conn) kicked() *Error {
	select {
	case k := <-cn.kick:
		cn.kick <- k
		return k
	default:
		return nil
	}
}

// setIdle sets the silence after which the read loop gives up.
func (cn *conn) setIdle(d time.Duration) {
	cn.idleMu.Lock()
	cn.idle = d
	cn.idleMu.Unlock()
	cn.armIdle()
}

func (cn *conn) armIdle() {
	cn.idleMu.Lock()
	d := cn.idle
	cn.idleMu.Unlock()
	if d > 0 {
		_ = cn.nc.SetReadDeadline(time.Now().Add(d))
	}
}

// write encodes and sends one frame. A write error closes the conn.
func (cn *conn) write(cmd codec.Command, flags codec.Flags, seq uint32, body proto.Message) error {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	select {
	case <-cn.done:
		return &connLostError{cn.cause}
	default:
	}
	b, err := codec.AppendFrame(cn.wbuf[:0], cn.ser, cmd, flags, seq, body)
	if err != nil {
		return fmt.Errorf("client: encode %s: %w", cmd, err)
	}
	if cap(b) <= 64<<10 {
		cn.wbuf = b // keep a modest buffer for reuse
	}
	_ = cn.nc.SetWriteDeadline(time.Now().Add(cn.timeout))
	if _, err := cn.nc.Write(b); err != nil {
		cn.close(fmt.Errorf("write %s: %w", cmd, err))
		return &connLostError{cn.err()}
	}
	return nil
}

// roundTrip sends one request and waits for its reply (want, or ERROR)
// for at most cn.timeout. Errors: *Error (ERROR frame), ErrTimeout,
// ErrConnectionLost (wrapped), ErrProtocol (wrapped), ctx.Err().
func (cn *conn) roundTrip(ctx context.Context, cmd codec.Command, flags codec.Flags, seq uint32, body proto.Message, want codec.Command, newResp func() proto.Message) (proto.Message, error) {
	c := &call{want: want, newResp: newResp, ch: make(chan result, 1)}
	cn.pmu.Lock()
	cn.pending[seq] = c
	cn.pmu.Unlock()
	defer func() {
		cn.pmu.Lock()
		if cn.pending[seq] == c {
			delete(cn.pending, seq)
		}
		cn.pmu.Unlock()
	}()
	if err := cn.write(cmd, flags, seq, body); err != nil {
		return nil, err
	}
	t := time.NewTimer(cn.timeout)
	defer t.Stop()
	select {
	case r := <-c.ch:
		return r.msg, r.err
	case <-cn.done:
		select { // a reply that raced the close still counts
		case r := <-c.ch:
			return r.msg, r.err
		default:
		}
		return nil, &connLostError{cn.cause}
	case <-t.C:
		return nil, fmt.Errorf("%s after %s: %w", cmd, cn.timeout, ErrTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// pendingCount is the number of requests waiting for a reply.
func (cn *conn) pendingCount() int {
	cn.pmu.Lock()
	defer cn.pmu.Unlock()
	return len(cn.pending)
}

// readLoop reads frames until the connection fails, dispatching replies to
// their calls and server frames to ev. It never blocks on anything but the
// socket.
func (cn *conn) readLoop() {
	defer cn.wg.Done()
	fr := codec.FrameReader{R: bufio.NewReaderSize(cn.nc, 32<<10), Dec: cn.dec}
	for {
		cn.armIdle()
		f, err := fr.Next()
		if err != nil {
			if errors.Is(err, codec.ErrBadMagic) || errors.Is(err, codec.ErrUnsupportedVersion) ||
				errors.Is(err, codec.ErrUnknownSerializer) || errors.Is(err, codec.ErrFrameTooLarge) {
				err = fmt.Errorf("bad frame from server: %w", err)
			}
			select {
			case <-cn.done: // closed by us: keep the original cause
			default:
				if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
					cn.idleMu.Lock()
					idle := cn.idle
					cn.idleMu.Unlock()
					err = fmt.Errorf("no frame for %s: %w", idle, err)
				}
				cn.close(err)
			}
			return
		}
		cn.dispatch(f)
	}
}

func (cn *conn) dispatch(f codec.Frame) {
	if f.Seq != 0 {
		cn.reply(f)
		return
	}
	switch f.Command {
	case codec.CmdPush:
		var p pb.Push
		if err := codec.Unmarshal(f.Serializer, f.Body, &p); err != nil {
			cn.log.Warn("undecodable push; will sync", "err", err)
			cn.ev.onPushLost()
			return
		}
		cn.ev.onPush(p.GetMessages())
	case codec.CmdNotice:
		var n pb.Notice
		if err := codec.Unmarshal(f.Serializer, f.Body, &n); err != nil {
			cn.log.Warn("undecodable notice", "err", err)
			return
		}
		cn.ev.onNotice(&n)
	case codec.CmdReceipt:
		var r pb.Receipt
		if err := codec.Unmarshal(f.Serializer, f.Body, &r); err != nil {
			cn.log.Warn("undecodable receipt", "err", err)
			return
		}
		cn.ev.onChatEvent(ChatEvent{Receipt: &r})
	case codec.CmdTypingEvent:
		var te pb.TypingEvent
		if err := codec.Unmarshal(f.Serializer, f.Body, &te); err != nil {
			cn.log.Warn("undecodable typing event", "err", err)
			return
		}
		cn.ev.onChatEvent(ChatEvent{Typing: &te})
	case codec.CmdKick:
		var k pb.Kick
		_ = codec.Unmarshal(f.Serializer, f.Body, &k) // a kick is a kick even if its reason is garbled
		ke := errorFromKick(&k)
		select {
		case cn.kick <- ke:
		default:
		}
		cn.close(ke)
	case codec.CmdGoAway:
		var g pb.GoAway
		if err := codec.Unmarshal(f.Serializer, f.Body, &g); err != nil {
			cn.log.Warn("undecodable go_away", "err", err)
		}
		select {
		case cn.goAway <- &g:
		default:
		}
	case codec.CmdError:
		var e pb.Error
		if err := codec.Unmarshal(f.Serializer, f.Body, &e); err != nil {
			cn.log.Warn("undecodable error frame", "err", err)
			return
		}
		se := errorFromPB(&e)
		if se.Fatal {
			cn.close(se)
			return
		}
		cn.log.Warn("server error", "err", se)
	default:
		// HEARTBEAT from the server and unknown commands: ignored (§4.1).
	}
}

func (cn *conn) reply(f codec.Frame) {
	cn.pmu.Lock()
	c := cn.pending[f.Seq]
	delete(cn.pending, f.Seq)
	cn.pmu.Unlock()
	if c == nil {
		cn.log.Debug("reply without a waiting request", "cmd", f.Command, "seq", f.Seq)
		if f.Command == codec.CmdError {
			var e pb.Error
			if codec.Unmarshal(f.Serializer, f.Body, &e) == nil && e.GetFatal() {
				cn.close(errorFromPB(&e))
			}
		}
		return
	}
	var r result
	switch f.Command {
	case codec.CmdError:
		var e pb.Error
		if err := codec.Unmarshal(f.Serializer, f.Body, &e); err != nil {
			r.err = fmt.Errorf("%w: error frame: %v", ErrProtocol, err)
			break
		}
		se := errorFromPB(&e)
		r.err = se
		if se.Fatal {
			defer cn.close(se)
		}
	case c.want:
		m := c.newResp()
		if err := codec.Unmarshal(f.Serializer, f.Body, m); err != nil {
			r.err = fmt.Errorf("%w: %s: %v", ErrProtocol, f.Command, err)
			break
		}
		r.msg = m
	default:
		r.err = fmt.Errorf("%w: got %s, want %s", ErrProtocol, f.Command, c.want)
	}
	c.ch <- r
}

// heartbeatLoop sends HEARTBEAT every interval; a missing reply closes the
// conn (the Client then reconnects). next returns request seqs.
func (cn *conn) heartbeatLoop(interval time.Duration, next func() uint32) {
	defer cn.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-cn.done:
			return
		case <-t.C:
		}
		_, err := cn.roundTrip(context.Background(), codec.CmdHeartbeat, 0, next(), &pb.Heartbeat{Time: time.Now().UnixMilli()},
			codec.CmdHeartbeatOK, func() proto.Message { return new(pb.Heartbeat) })
		var se *Error
		switch {
		case err == nil, errors.As(err, &se) && !se.Fatal:
		case errors.Is(err, ErrTimeout):
			cn.close(fmt.Errorf("heartbeat: %w", err))
			return
		default:
			return // the conn is closing anyway
		}
	}
}

// startHeartbeat starts the heartbeat goroutine and the idle read deadline
// (3 intervals plus the request timeout, §6.2).
func (cn *conn) startHeartbeat(interval time.Duration, next func() uint32) {
	cn.setIdle(3*interval + cn.timeout)
	cn.wg.Add(1)
	go cn.heartbeatLoop(interval, next)
}
