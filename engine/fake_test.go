package engine

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
	"github.com/panjf2000/gnet/v2"
	"google.golang.org/protobuf/proto"
)

// This file is an engine without sockets: fake transports and fake event
// loops driven by the test, for tests that need to count allocations or
// control exactly what each loop runs.

// fakeTransport is an in-memory transport. in holds what the peer sent
// (the test appends frames), out what the engine wrote.
type fakeTransport struct {
	in     []byte
	off    int // in[:off] has been consumed
	out    []byte
	writes int
	closed bool
}

func (f *fakeTransport) Peek(n int) ([]byte, error) {
	if n > len(f.in)-f.off {
		return nil, io.ErrShortBuffer
	}
	return f.in[f.off : f.off+n], nil
}

func (f *fakeTransport) Discard(n int) (int, error) {
	n = min(n, len(f.in)-f.off)
	f.off += n
	if f.off == len(f.in) {
		f.in, f.off = f.in[:0], 0 // reuse the array: no allocation per frame
	}
	return n, nil
}

func (f *fakeTransport) InboundBuffered() int { return len(f.in) - f.off }
func (f *fakeTransport) Write(b []byte) (int, error) {
	f.writes++
	f.out = append(f.out, b...)
	return len(b), nil
}
func (f *fakeTransport) OutboundBuffered() int { return 0 }
func (f *fakeTransport) Close() error          { f.closed = true; return nil }
func (f *fakeTransport) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

// frames decodes and clears what the engine wrote.
func (f *fakeTransport) frames(t testing.TB) []codec.Frame {
	t.Helper()
	var out []codec.Frame
	p := &codec.SlicePeeker{B: f.out}
	_, err := codec.Decoder{}.Decode(p, func(fr codec.Frame) error {
		fr.Body = append([]byte(nil), fr.Body...)
		out = append(out, fr)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f.out = f.out[:0]
	return out
}

// fakeLoop is a gnet.EventLoop whose Execute only records the runnable:
// the test runs it (run) when it chooses.
type fakeLoop struct {
	mu      sync.Mutex
	pending []gnet.Runnable
	running []gnet.Runnable
	execs   int
}

func (l *fakeLoop) Execute(_ context.Context, r gnet.Runnable) error {
	l.mu.Lock()
	l.pending = append(l.pending, r)
	l.execs++
	l.mu.Unlock()
	return nil
}

// run runs what Execute recorded (the two slices are swapped, not
// reallocated, so a steady test allocates nothing here).
func (l *fakeLoop) run() {
	l.mu.Lock()
	l.pending, l.running = l.running[:0], l.pending
	l.mu.Unlock()
	for _, r := range l.running {
		_ = r.Run(context.Background())
	}
}

func (l *fakeLoop) Register(context.Context, net.Addr) (<-chan gnet.RegisteredResult, error) {
	return nil, nil
}
func (l *fakeLoop) Enroll(context.Context, net.Conn) (<-chan gnet.RegisteredResult, error) {
	return nil, nil
}
func (l *fakeLoop) Schedule(context.Context, gnet.Runnable, time.Duration) error { return nil }
func (l *fakeLoop) Close(gnet.Conn) error                                        { return nil }

// fakeEngine is a Server with fake loops and no listener.
type fakeEngine struct {
	s     *Server
	loops []*fakeLoop
}

func newFakeEngine(t testing.TB, loops int, mod func(*Config)) *fakeEngine {
	t.Helper()
	cfg := Config{Store: memstore.New(), JWTSecret: testSecret, SendRate: 1e9, SendBurst: 1 << 30, Workers: 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.pool = newWorkerPool(cfg.Workers, 1024)
	t.Cleanup(s.pool.stop)
	fe := &fakeEngine{s: s}
	for range loops {
		fl := &fakeLoop{}
		fe.loops = append(fe.loops, fl)
		s.loopOf(fl)
	}
	return fe
}

// conn opens a connection on loop i logged in as (user, device), with ser
// as its serializer.
func (fe *fakeEngine) conn(i int, user, device string, ser codec.SerializerID) (*conn, *fakeTransport) {
	s := fe.s
	ft := &fakeTransport{}
	c := &conn{tr: ft, loop: (*s.loops.Load())[i], id: s.nextConnID.Add(1), ser: ser}
	s.conns.add(c)
	if user != "" {
		_ = s.store.CreateUser(context.Background(), persist.User{ID: user})
		c.user, c.device = user, device
		c.state.Store(stateLoggedIn)
		s.sessions.add(c)
	}
	return c, ft
}

// feed runs everything in c's inbound buffer on c's loop, as OnTraffic
// does.
func (fe *fakeEngine) feed(c *conn) {
	c.loop.now = time.Now()
	fe.s.readFrames(c)
	c.loop.endTurn()
}

// encodeFrame returns a whole frame.
func encodeFrame(t testing.TB, ser codec.SerializerID, cmd codec.Command, seq uint32, m proto.Message) []byte {
	t.Helper()
	b, err := codec.AppendFrame(nil, ser, cmd, 0, seq, m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
