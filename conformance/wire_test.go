package conformance

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/wstest"
	"google.golang.org/protobuf/proto"
)

// serializers are the three of §3, in table order.
var serializers = []codec.SerializerID{codec.JSON, codec.Protobuf, codec.MsgPack}

// wait bounds every wait for an answer: generous, since the machine may
// be loaded; it is only spent when something is wrong.
const wait = 10 * time.Second

// frame is one frame received from the server, body copied.
type frame struct {
	codec.Header
	body []byte
}

// conn is a client connection driven frame by frame.
type conn struct {
	t       *testing.T
	nc      net.Conn
	r       *bufio.Reader
	ser     codec.SerializerID // of the requests sent with send
	seq     atomic.Uint32
	pending []frame // frames read while waiting for another
}

// overWS makes dial connect to the WebSocket listener (TestOverWebSocket).
var overWS bool

func dial(t *testing.T, n *node, ser codec.SerializerID) *conn {
	t.Helper()
	var nc net.Conn
	var err error
	if overWS {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		nc, err = wstest.Dial(ctx, "ws://"+n.ws+"/", nil)
	} else {
		nc, err = net.DialTimeout("tcp", n.addr, wait)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &conn{t: t, nc: nc, r: bufio.NewReaderSize(nc, 64<<10), ser: ser}
}

func (c *conn) write(b []byte) {
	c.t.Helper()
	_ = c.nc.SetWriteDeadline(time.Now().Add(wait))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// encode is a whole frame of msg in ser.
func encode(t *testing.T, ser codec.SerializerID, cmd codec.Command, flags codec.Flags, seq uint32, msg proto.Message) []byte {
	t.Helper()
	b, err := codec.AppendFrame(nil, ser, cmd, flags, seq, msg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// send writes a request in c's serializer with the next seq.
func (c *conn) send(cmd codec.Command, msg proto.Message) uint32 {
	c.t.Helper()
	seq := c.seq.Add(1)
	c.write(encode(c.t, c.ser, cmd, 0, seq, msg))
	return seq
}

// sendBody writes a request with a hand-made body.
func (c *conn) sendBody(ser codec.SerializerID, cmd codec.Command, body []byte) uint32 {
	c.t.Helper()
	seq := c.seq.Add(1)
	c.write(codec.AppendRawFrame(nil, ser, cmd, 0, seq, body))
	return seq
}

// read reads the next frame within d. Every frame the server sends has
// version 1 and flags 0 (§2.3, §2.4) and a known serializer.
func (c *conn) read(d time.Duration) (frame, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	hb := make([]byte, codec.HeaderSize)
	if _, err := io.ReadFull(c.r, hb); err != nil {
		return frame{}, err
	}
	h, err := codec.ParseHeader(hb)
	if err != nil {
		c.t.Fatalf("server frame header % x: %v", hb, err)
	}
	if h.Flags != 0 {
		c.t.Fatalf("server frame %s with flags %#x", h.Command, h.Flags)
	}
	body := make([]byte, h.Length)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return frame{}, err
	}
	return frame{Header: h, body: body}, nil
}

// reply returns the frame answering seq (non-zero), keeping the frames
// read on the way for next.
func (c *conn) reply(seq uint32) frame {
	c.t.Helper()
	return c.await(func(f frame) bool { return f.Seq == seq }, fmt.Sprintf("the reply to seq %d", seq))
}

// next returns the next server-initiated frame with cmd (seq 0).
func (c *conn) next(cmd codec.Command) frame {
	c.t.Helper()
	return c.await(func(f frame) bool { return f.Command == cmd && f.Seq == 0 }, cmd.String())
}

// await returns the first frame, kept or read, that match accepts; the
// others stay kept, in order.
func (c *conn) await(match func(frame) bool, what string) frame {
	c.t.Helper()
	for i, f := range c.pending {
		if match(f) {
			c.pending = append(c.pending[:i], c.pending[i+1:]...)
			return f
		}
	}
	deadline := time.Now().Add(wait)
	for {
		f, err := c.read(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return f
		}
		c.pending = append(c.pending, f)
	}
}

// decode decodes f's body into m with f's serializer.
func decode(t *testing.T, f frame, m proto.Message) {
	t.Helper()
	if err := codec.Unmarshal(f.Serializer, f.body, m); err != nil {
		t.Fatalf("%s body % x: %v", f.Command, f.body, err)
	}
}

// errorOf decodes an ERROR frame, failing on another command.
func errorOf(t *testing.T, f frame) *pb.Error {
	t.Helper()
	if f.Command != codec.CmdError {
		t.Fatalf("want ERROR, got %s", f.Command)
	}
	var e pb.Error
	decode(t, f, &e)
	return &e
}

// call sends req and returns the reply frame; its command must be want
// (decoded into out when out is set).
func (c *conn) call(cmd codec.Command, req proto.Message, want codec.Command, out proto.Message) frame {
	c.t.Helper()
	f := c.reply(c.send(cmd, req))
	if f.Command != want {
		if f.Command == codec.CmdError {
			e := errorOf(c.t, f)
			c.t.Fatalf("%s: want %s, got ERROR %s (%s)", cmd, want, codec.ErrorCode(e.Code), e.Message)
		}
		c.t.Fatalf("%s: want %s, got %s", cmd, want, f.Command)
	}
	if f.Serializer != c.ser {
		c.t.Fatalf("%s answered in %s, asked in %s", cmd, f.Serializer, c.ser)
	}
	if out != nil {
		decode(c.t, f, out)
	}
	return f
}

// fails sends req and returns the ERROR answering it, checking its code.
func (c *conn) fails(cmd codec.Command, req proto.Message, code codec.ErrorCode) *pb.Error {
	c.t.Helper()
	return c.failsFrame(c.reply(c.send(cmd, req)), cmd, code)
}

func (c *conn) failsFrame(f frame, cmd codec.Command, code codec.ErrorCode) *pb.Error {
	c.t.Helper()
	if f.Command != codec.CmdError {
		c.t.Fatalf("%s: want ERROR %s, got %s", cmd, code, f.Command)
	}
	e := errorOf(c.t, f)
	if codec.ErrorCode(e.Code) != code {
		c.t.Fatalf("%s: want ERROR %s, got %s (%s)", cmd, code, codec.ErrorCode(e.Code), e.Message)
	}
	return e
}

// closed reads until the server closes the connection and returns the
// frames read on the way.
func (c *conn) closed() []frame {
	c.t.Helper()
	frames := c.pending
	c.pending = nil
	deadline := time.Now().Add(wait)
	for {
		f, err := c.read(time.Until(deadline))
		if err == nil {
			frames = append(frames, f)
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.t.Fatalf("the server did not close the connection (frames %v)", commands(frames))
		}
		return frames
	}
}

func commands(fs []frame) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = fmt.Sprintf("%s/%d", f.Command, f.Seq)
	}
	return out
}

// token is an HS256 JWT for sub expiring at exp, made by hand from §6.1.
func token(secret, sub string, exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	signing := enc([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc([]byte(fmt.Sprintf(`{"sub":%q,"exp":%d}`, sub, exp.Unix())))
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(signing))
	return signing + "." + enc(m.Sum(nil))
}

// login logs c in as user (token login, the account is created) and
// returns LOGIN_OK.
func (c *conn) login(user, device string) *pb.LoginOK {
	c.t.Helper()
	var ok pb.LoginOK
	c.call(codec.CmdLogin, &pb.LoginRequest{Token: token(jwtSecret, user, time.Now().Add(time.Hour)), Device: device}, codec.CmdLoginOK, &ok)
	return &ok
}

// loggedIn dials n and logs in as user on device "d".
func loggedIn(t *testing.T, n *node, ser codec.SerializerID, user string) *conn {
	t.Helper()
	c := dial(t, n, ser)
	c.login(user, "d")
	return c
}

// header is a 16-byte header with any field values.
func header(magic string, version, ser, cmd, flags byte, seq, length uint32) []byte {
	b := append([]byte(magic), version, ser, cmd, flags)
	b = binary.BigEndian.AppendUint32(b, seq)
	return binary.BigEndian.AppendUint32(b, length)
}

var ids atomic.Int64

// uniq returns an id unique in the test binary, from prefix.
func uniq(prefix string) string { return fmt.Sprintf("%s%d", prefix, ids.Add(1)) }
