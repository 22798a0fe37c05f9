package mesh

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/meshpb"
)

// handshakeTimeout bounds the wait for a dialer's HELLO.
const handshakeTimeout = 5 * time.Second

// acceptLoop accepts inbound links until the listener closes.
func (l *Links) acceptLoop(ln net.Listener) {
	defer l.wg.Done()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.ctx.Err() != nil {
				return
			}
			// Out of file descriptors and the like: back off a little.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("mesh: accept", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-l.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		l.mu.Lock()
		if l.state != stateStarted {
			l.mu.Unlock()
			conn.Close()
			return
		}
		l.inbound[conn] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.serveInbound(conn)
	}
}

// serveInbound runs one accepted link: HELLO, then the peer's requests.
// This goroutine reads; appends run in their own goroutines (at most
// MaxInflight); a writer goroutine sends replies and pongs.
func (l *Links) serveInbound(conn net.Conn) {
	defer l.wg.Done()
	defer func() {
		conn.Close()
		l.mu.Lock()
		delete(l.inbound, conn)
		l.mu.Unlock()
	}()
	log := l.log.With("remote", conn.RemoteAddr().String())
	br := bufio.NewReaderSize(conn, 32<<10)
	fr := frameReader{r: br, max: l.cfg.MaxBody}
	hello, seq, err := l.acceptHello(conn, &fr)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			log.Warn("mesh: inbound link refused", "err", err)
		}
		return
	}
	log = log.With("peer", hello.NodeId)
	if !l.answerHello(conn, &fr, hello, seq) {
		return
	}
	conn.SetDeadline(time.Time{})
	log.Debug("mesh: inbound link up", "peer_epoch", hello.BootEpoch)

	out := make(chan *codec.Buffer, l.cfg.MaxInflight+16)
	readerDone := make(chan struct{})
	writerDone := make(chan struct{})
	l.wg.Add(1)
	go l.inboundWriter(conn, out, readerDone, writerDone)
	err = l.inboundRead(conn, &fr, hello, out, writerDone)
	if errors.Is(err, errProtocol) {
		log.Warn("mesh: closing inbound link", "err", err)
		if b, e := encodeFrame(meshpb.CmdError, 0, &meshpb.Error{Code: meshpb.ErrorCode_ERROR_CODE_PROTOCOL, Message: err.Error()}); e == nil {
			select {
			case out <- b:
			default:
				codec.PutBuffer(b)
			}
		}
	} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		log.Debug("mesh: inbound link closed", "err", err)
	}
	close(readerDone)
	<-writerDone
}

// acceptHello reads and checks the dialer's HELLO; a bad one is answered
// with ERROR.
func (l *Links) acceptHello(conn net.Conn, fr *frameReader) (*meshpb.Hello, uint32, error) {
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	h, body, err := fr.next()
	if err != nil {
		return nil, 0, err
	}
	reject := func(code meshpb.ErrorCode, format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		_ = writeFrameNow(conn, meshpb.CmdError, h.Seq, &meshpb.Error{Code: code, Message: msg})
		return fmt.Errorf("%w: %s", errProtocol, msg)
	}
	if h.Command != meshpb.CmdHello {
		return nil, 0, reject(meshpb.ErrorCode_ERROR_CODE_PROTOCOL, "expected HELLO, got %s", h.Command)
	}
	var hello meshpb.Hello
	if err := unmarshal(body, &hello); err != nil {
		return nil, 0, reject(meshpb.ErrorCode_ERROR_CODE_PROTOCOL, "undecodable HELLO")
	}
	switch {
	case hello.Version != meshpb.Version:
		return nil, 0, reject(meshpb.ErrorCode_ERROR_CODE_PROTOCOL, "mesh version %d not supported (want %d)", hello.Version, meshpb.Version)
	case membership.ValidateID(hello.NodeId) != nil:
		return nil, 0, reject(meshpb.ErrorCode_ERROR_CODE_PROTOCOL, "invalid node id %q", hello.NodeId)
	case hello.PeerId != l.self.ID:
		return nil, 0, reject(meshpb.ErrorCode_ERROR_CODE_WRONG_NODE, "this is node %s, not %s", l.self.ID, hello.PeerId)
	}
	return &hello, h.Seq, nil
}

// inboundRead reads the peer's requests until the link fails, and says
// why (never nil).
func (l *Links) inboundRead(conn net.Conn, fr *frameReader, hello *meshpb.Hello, out chan<- *codec.Buffer, writerDone <-chan struct{}) error {
	// The dialer pings at the interval it announced (this node's own when
	// it announced none; at most a minute, so no link lingers for long
	// once its peer vanished).
	interval := min(time.Duration(hello.PingIntervalMs)*time.Millisecond, time.Minute)
	if interval <= 0 {
		interval = l.cfg.PingInterval
	}
	dl := deadlineSetter{conn: conn, idle: 3 * interval}
	in := Inbound{Handler: l.h, RequestTimeout: l.cfg.RequestTimeout, Logger: l.log}
	sem := make(chan struct{}, l.cfg.MaxInflight)
	reply := func(b *codec.Buffer) {
		select {
		case out <- b:
		case <-writerDone:
			codec.PutBuffer(b)
		}
	}
	// spawn runs a request's handler on its own goroutine, at most
	// MaxInflight at once: it waits for a slot unless the link is ending.
	spawn := func(seq uint32, serve func(seq uint32)) error {
		select {
		case sem <- struct{}{}:
		case <-writerDone:
			return net.ErrClosed
		case <-l.ctx.Done():
			return l.ctx.Err()
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() { <-sem }()
			serve(seq)
		}()
		return nil
	}
	for {
		dl.touch()
		h, body, err := fr.next()
		if err != nil {
			return err
		}
		if h.Command == meshpb.CmdPing {
			b, err := encodeFrame(meshpb.CmdPong, h.Seq, nil)
			if err != nil {
				return err
			}
			reply(b)
			continue
		}
		req, err := in.Dispatch(h.Command, body)
		if err != nil {
			return fmt.Errorf("%w: %w", errProtocol, err)
		}
		if req == nil {
			continue // a one-way command, run already
		}
		if err := spawn(h.Seq, func(seq uint32) {
			var b *codec.Buffer
			err := req.Serve(l.ctx, func(cmd codec.Command, m proto.Message) (err error) {
				b, err = encodeFrame(cmd, seq, m)
				return err
			})
			if err != nil {
				l.log.Error("mesh: reply not sent", "err", err)
				return
			}
			reply(b)
		}); err != nil {
			return err
		}
	}
}

// inboundWriter writes replies, batching them and flushing when none is
// queued. It exits when the reader is done (after writing what is queued,
// such as a final ERROR) or a write fails, closing writerDone.
func (l *Links) inboundWriter(conn net.Conn, out chan *codec.Buffer, readerDone <-chan struct{}, writerDone chan<- struct{}) {
	defer l.wg.Done()
	defer close(writerDone)
	bw := bufio.NewWriterSize(conn, 32<<10)
	write := func(b *codec.Buffer) error {
		defer codec.PutBuffer(b)
		_, err := bw.Write(b.B)
		return err
	}
	for {
		select {
		case b := <-out:
			conn.SetWriteDeadline(time.Now().Add(l.cfg.WriteTimeout))
			if err := write(b); err != nil {
				conn.Close()
				return
			}
			yielded := false // see peer.writeLoop
		drain:
			for range 4096 {
				select {
				case b := <-out:
					if err := write(b); err != nil {
						conn.Close()
						return
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
				conn.Close()
				return
			}
		case <-readerDone:
			conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			for {
				select {
				case b := <-out:
					if write(b) != nil {
						return
					}
				default:
					bw.Flush()
					return
				}
			}
		}
	}
}
