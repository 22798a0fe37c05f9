package attack

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

// raw is a hand-driven protocol connection: it writes whatever bytes an
// attack wants and reads frames without validating them.
type raw struct {
	c   net.Conn
	br  *bufio.Reader
	seq uint32
}

func dialRaw(addr string) (*raw, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	return &raw{c: c, br: bufio.NewReaderSize(c, 64<<10)}, nil
}

func (r *raw) Close() error { return r.c.Close() }

func (r *raw) write(b []byte) error {
	_ = r.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := r.c.Write(b)
	return err
}

// frame writes a well-formed protobuf frame and returns its seq.
func (r *raw) frame(cmd codec.Command, m proto.Message) (uint32, error) {
	r.seq++
	b, err := codec.AppendFrame(nil, codec.Protobuf, cmd, 0, r.seq, m)
	if err != nil {
		return 0, err
	}
	return r.seq, r.write(b)
}

// header builds a 16-byte header with arbitrary fields.
func header(magic [4]byte, version, ser, cmd byte, seq, length uint32) []byte {
	b := append([]byte{}, magic[:]...)
	b = append(b, version, ser, cmd, 0)
	b = binary.BigEndian.AppendUint32(b, seq)
	return binary.BigEndian.AppendUint32(b, length)
}

type inFrame struct {
	ser  codec.SerializerID
	cmd  codec.Command
	seq  uint32
	body []byte
}

// next reads one frame (any header) within d.
func (r *raw) next(d time.Duration) (inFrame, error) {
	_ = r.c.SetReadDeadline(time.Now().Add(d))
	var h [16]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return inFrame{}, err
	}
	n := binary.BigEndian.Uint32(h[12:])
	if n > 16<<20 {
		return inFrame{}, fmt.Errorf("server frame of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r.br, body); err != nil {
		return inFrame{}, err
	}
	return inFrame{ser: codec.SerializerID(h[5]), cmd: codec.Command(h[6]), seq: binary.BigEndian.Uint32(h[8:]), body: body}, nil
}

// errOf decodes an ERROR frame's body.
func errOf(f inFrame) (*pb.Error, error) {
	s, err := codec.Lookup(f.ser)
	if err != nil {
		return nil, err
	}
	e := &pb.Error{}
	return e, s.Unmarshal(f.body, e)
}

// reply reads frames until a non-PUSH/NOTICE one arrives and returns its
// command and, for ERROR, the error.
func (r *raw) reply(d time.Duration) (codec.Command, *pb.Error, error) {
	f, err := r.replyFrame(d)
	if err != nil {
		return 0, nil, err
	}
	if f.cmd == codec.CmdError {
		e, err := errOf(f)
		return f.cmd, e, err
	}
	return f.cmd, nil, nil
}

// replyFrame reads frames until one that is not PUSH, NOTICE or GO_AWAY
// arrives, and returns it.
func (r *raw) replyFrame(d time.Duration) (inFrame, error) {
	deadline := time.Now().Add(d)
	for {
		f, err := r.next(time.Until(deadline))
		if err != nil {
			return inFrame{}, err
		}
		switch f.cmd {
		case codec.CmdPush, codec.CmdNotice, codec.CmdGoAway:
			continue
		}
		return f, nil
	}
}

// bodyFrame frames body, whatever its bytes, as cmd in serializer ser.
func bodyFrame(ser codec.SerializerID, cmd codec.Command, seq uint32, body []byte) []byte {
	return append(header(magic, 1, byte(ser), byte(cmd), seq, uint32(len(body))), body...)
}

// closed reads and discards until the server closes the connection
// (EOF or reset: true) or d passes (false). It returns the first ERROR
// seen on the way.
func (r *raw) closed(d time.Duration) (bool, *pb.Error) {
	deadline := time.Now().Add(d)
	var first *pb.Error
	for {
		f, err := r.next(time.Until(deadline))
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return false, first
			}
			return true, first
		}
		if f.cmd == codec.CmdError && first == nil {
			first, _ = errOf(f)
		}
	}
}

// login logs in with a token and waits for LOGIN_OK.
func (r *raw) login(token, device string) error {
	if _, err := r.frame(codec.CmdLogin, &pb.LoginRequest{Token: token, Device: device}); err != nil {
		return err
	}
	cmd, e, err := r.reply(5 * time.Second)
	if err != nil {
		return err
	}
	if cmd != codec.CmdLoginOK {
		return fmt.Errorf("login: got %v %v", cmd, e)
	}
	return nil
}
