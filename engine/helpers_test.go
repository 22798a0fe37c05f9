package engine

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leaktest.Gnet()...)
}

var testSecret = []byte("test-secret-0123456789")

// startServer runs a server on a free loopback port with a memory store and
// stops it when the test ends. mod may adjust the config.
func startServer(t *testing.T, mod func(*Config)) *Server {
	t.Helper()
	cfg := Config{Addr: "127.0.0.1:0", Store: memstore.New(), JWTSecret: testSecret, EventLoops: 2, Workers: 16,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if os.Getenv("ENGINE_TEST_LOG") != "" {
		cfg.Logger = slog.Default()
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		_ = cfg.Store.Close()
	})
	return s
}

// rawClient speaks the protocol frame by frame, for tests that need to see
// (or break) the wire.
type rawClient struct {
	t      *testing.T
	nc     net.Conn
	r      *bufio.Reader
	ser    codec.SerializerID
	seq    atomic.Uint32
	pushes []*pb.Message // pushes seen while waiting for replies
	other  []codec.Frame // server-initiated frames other than PUSH
}

func dial(t *testing.T, s *Server, ser codec.SerializerID) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &rawClient{t: t, nc: nc, r: bufio.NewReaderSize(nc, 64<<10), ser: ser}
}

func (c *rawClient) writeRaw(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) send(cmd codec.Command, m proto.Message) uint32 {
	c.t.Helper()
	seq := c.seq.Add(1)
	b, err := codec.AppendFrame(nil, c.ser, cmd, 0, seq, m)
	if err != nil {
		c.t.Fatal(err)
	}
	c.writeRaw(b)
	return seq
}

// readFrame reads the next frame (body copied) within d.
func (c *rawClient) readFrame(d time.Duration) (codec.Frame, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	hb := make([]byte, codec.HeaderSize)
	if _, err := io.ReadFull(c.r, hb); err != nil {
		return codec.Frame{}, err
	}
	h, err := codec.ParseHeader(hb)
	if err != nil {
		return codec.Frame{}, err
	}
	body := make([]byte, h.Length)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return codec.Frame{}, err
	}
	return codec.Frame{Header: h, Body: body}, nil
}

// reply waits for the frame answering seq, collecting pushes on the way.
func (c *rawClient) reply(seq uint32) codec.Frame {
	c.t.Helper()
	for i, f := range c.other {
		if f.Seq == seq && seq != 0 {
			c.other = append(c.other[:i], c.other[i+1:]...)
			return f
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		f, err := c.readFrame(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("waiting for reply to %d: %v", seq, err)
		}
		if f.Seq == seq && seq != 0 {
			return f
		}
		c.collect(f)
	}
	c.t.Fatalf("no reply to %d", seq)
	return codec.Frame{}
}

func (c *rawClient) collect(f codec.Frame) {
	c.t.Helper()
	if f.Command == codec.CmdPush {
		var p pb.Push
		if err := codec.Unmarshal(f.Serializer, f.Body, &p); err != nil {
			c.t.Fatalf("bad push: %v", err)
		}
		c.pushes = append(c.pushes, p.Messages...)
		return
	}
	c.other = append(c.other, f)
}

// call sends a request and decodes the reply into out; an ERROR reply is
// returned as *pb.Error (and out is untouched).
func (c *rawClient) call(cmd codec.Command, req proto.Message, out proto.Message) *pb.Error {
	c.t.Helper()
	f := c.reply(c.send(cmd, req))
	if f.Command == codec.CmdError {
		var e pb.Error
		if err := codec.Unmarshal(f.Serializer, f.Body, &e); err != nil {
			c.t.Fatal(err)
		}
		return &e
	}
	if out != nil {
		if err := codec.Unmarshal(f.Serializer, f.Body, out); err != nil {
			c.t.Fatalf("decode %s: %v", f.Command, err)
		}
	}
	return nil
}

func (c *rawClient) mustCall(cmd codec.Command, req proto.Message, out proto.Message) {
	c.t.Helper()
	if e := c.call(cmd, req, out); e != nil {
		c.t.Fatalf("%s: error %s: %s", cmd, codec.ErrorCode(e.Code), e.Message)
	}
}

func (c *rawClient) wantError(cmd codec.Command, req proto.Message, code codec.ErrorCode) *pb.Error {
	c.t.Helper()
	e := c.call(cmd, req, nil)
	if e == nil {
		c.t.Fatalf("%s: want error %s, got success", cmd, code)
	}
	if codec.ErrorCode(e.Code) != code {
		c.t.Fatalf("%s: want error %s, got %s (%s)", cmd, code, codec.ErrorCode(e.Code), e.Message)
	}
	return e
}

// login logs in with a token for user (provisioning the account).
func (c *rawClient) login(user, device string) *pb.LoginOK {
	c.t.Helper()
	tok, err := auth.MintToken(testSecret, user, time.Hour)
	if err != nil {
		c.t.Fatal(err)
	}
	var ok pb.LoginOK
	c.mustCall(codec.CmdLogin, &pb.LoginRequest{Token: tok, Device: device}, &ok)
	return &ok
}

// waitPushes reads until n pushes have been collected.
func (c *rawClient) waitPushes(n int) []*pb.Message {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(c.pushes) < n {
		if time.Now().After(deadline) {
			c.t.Fatalf("have %d pushes, want %d", len(c.pushes), n)
		}
		f, err := c.readFrame(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("have %d pushes, want %d: %v", len(c.pushes), n, err)
		}
		c.collect(f)
	}
	return c.pushes
}

// waitFrame reads until a server-initiated frame with cmd arrives.
func (c *rawClient) waitFrame(cmd codec.Command, d time.Duration) codec.Frame {
	c.t.Helper()
	for i, f := range c.other {
		if f.Command == cmd {
			c.other = append(c.other[:i], c.other[i+1:]...)
			return f
		}
	}
	deadline := time.Now().Add(d)
	for {
		f, err := c.readFrame(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", cmd, err)
		}
		if f.Command == cmd {
			return f
		}
		c.collect(f)
	}
}

// expectClosed asserts the server closes the connection (after any frames).
func (c *rawClient) expectClosed() {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := c.readFrame(time.Until(deadline))
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
			return
		}
		if err != nil {
			c.t.Fatalf("want close, got %v", err)
		}
		c.collect(f)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

func decodeError(t *testing.T, f codec.Frame) *pb.Error {
	t.Helper()
	if f.Command != codec.CmdError {
		t.Fatalf("want ERROR frame, got %s", f.Command)
	}
	var e pb.Error
	if err := codec.Unmarshal(f.Serializer, f.Body, &e); err != nil {
		t.Fatal(err)
	}
	return &e
}

// poll retries cond until it holds or 10 s pass.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Until(t, 10*time.Second, what, cond)
}

var _ persist.Store = (*memstore.Store)(nil)
