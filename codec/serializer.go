package codec

import (
	"fmt"
	"io"
	"sync"

	"github.com/bytedance/sonic"
	"github.com/bytedance/sonic/encoder"
	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/protobuf/proto"
)

// SerializerID is the header's serializer byte.
type SerializerID uint8

// The serializers. The numbers are part of the wire protocol.
const (
	JSON     SerializerID = 1
	Protobuf SerializerID = 2
	MsgPack  SerializerID = 3
)

// Known reports whether id names a serializer.
func (id SerializerID) Known() bool { return id >= JSON && id <= MsgPack }

// String returns "json", "protobuf", "msgpack" or "serializer(N)".
func (id SerializerID) String() string {
	if id.Known() {
		return table[id].Name()
	}
	return fmt.Sprintf("serializer(%d)", uint8(id))
}

// ParseSerializer maps a name ("json", "protobuf"/"pb", "msgpack") to its id.
func ParseSerializer(name string) (SerializerID, error) {
	switch name {
	case "json":
		return JSON, nil
	case "protobuf", "pb", "proto":
		return Protobuf, nil
	case "msgpack", "messagepack":
		return MsgPack, nil
	}
	return 0, fmt.Errorf("%w: %q (want json, protobuf or msgpack)", ErrUnknownSerializer, name)
}

// Serializer encodes and decodes bodies. Every serializer encodes the same
// message types, the generated types of codec/pb; JSON and MessagePack use
// the proto field names (snake_case) as keys.
//
// Implementations are stateless and safe for concurrent use.
type Serializer interface {
	ID() SerializerID
	Name() string
	// Append appends the encoding of m to dst and returns the extended slice.
	Append(dst []byte, m proto.Message) ([]byte, error)
	// Unmarshal decodes data into m, replacing its contents. It never
	// retains data: every string and byte slice in m is a copy, so data may
	// be reused as soon as Unmarshal returns. An empty data decodes to the
	// zero message. Errors wrap ErrBadBody.
	Unmarshal(data []byte, m proto.Message) error
}

var table = [4]Serializer{nil, jsonSerializer{}, protoSerializer{}, msgpackSerializer{}}

// Lookup returns the serializer for id, or ErrUnknownSerializer. It never
// panics, whatever id is.
func Lookup(id SerializerID) (Serializer, error) {
	if !id.Known() {
		return nil, fmt.Errorf("%w: %d", ErrUnknownSerializer, uint8(id))
	}
	return table[id], nil
}

// Unmarshal decodes a frame body with the frame's serializer.
func Unmarshal(id SerializerID, body []byte, m proto.Message) error {
	s, err := Lookup(id)
	if err != nil {
		return err
	}
	return s.Unmarshal(body, m)
}

// ---- JSON (bytedance/sonic) ----

// sonicAPI copies decoded strings: the body aliases the event loop's
// buffer, and a string pointing into it would change under the caller.
var sonicAPI = sonic.Config{CopyString: true}.Froze()

type jsonSerializer struct{}

func (jsonSerializer) ID() SerializerID { return JSON }
func (jsonSerializer) Name() string     { return "json" }

func (jsonSerializer) Append(dst []byte, m proto.Message) ([]byte, error) {
	if err := encoder.EncodeInto(&dst, m, 0); err != nil {
		return dst, err
	}
	return dst, nil
}

func (jsonSerializer) Unmarshal(data []byte, m proto.Message) error {
	proto.Reset(m)
	if len(data) == 0 {
		return nil
	}
	if err := sonicAPI.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w: json: %v", ErrBadBody, err)
	}
	return nil
}

// ---- Protobuf ----

type protoSerializer struct{}

func (protoSerializer) ID() SerializerID { return Protobuf }
func (protoSerializer) Name() string     { return "protobuf" }

func (protoSerializer) Append(dst []byte, m proto.Message) ([]byte, error) {
	return proto.MarshalOptions{}.MarshalAppend(dst, m)
}

func (protoSerializer) Unmarshal(data []byte, m proto.Message) error {
	// proto.Unmarshal resets m and copies bytes and strings out of data.
	if err := proto.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w: protobuf: %v", ErrBadBody, err)
	}
	return nil
}

// ---- MessagePack (vmihailenco/msgpack) ----

type msgpackSerializer struct{}

func (msgpackSerializer) ID() SerializerID { return MsgPack }
func (msgpackSerializer) Name() string     { return "msgpack" }

// appendWriter lets a msgpack.Encoder append to a caller's slice.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

func (w *appendWriter) WriteByte(c byte) error { w.b = append(w.b, c); return nil }

type msgpackEnc struct {
	w   appendWriter
	enc *msgpack.Encoder
}

var msgpackEncPool = sync.Pool{New: func() any {
	e := &msgpackEnc{}
	e.enc = msgpack.NewEncoder(&e.w)
	e.enc.SetCustomStructTag("json")
	e.enc.SetOmitEmpty(true)
	e.enc.UseCompactInts(true)
	return e
}}

func (msgpackSerializer) Append(dst []byte, m proto.Message) ([]byte, error) {
	e := msgpackEncPool.Get().(*msgpackEnc)
	e.w.b = dst
	err := e.enc.Encode(m)
	out := e.w.b
	e.w.b = nil
	msgpackEncPool.Put(e)
	return out, err
}

type msgpackDec struct {
	r   sliceReader
	dec *msgpack.Decoder
}

// sliceReader is a resettable io.Reader + io.ByteScanner over a slice.
type sliceReader struct {
	b   []byte
	off int
}

func (r *sliceReader) Read(p []byte) (int, error) {
	if r.off >= len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}

func (r *sliceReader) ReadByte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, io.EOF
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

func (r *sliceReader) UnreadByte() error {
	if r.off == 0 {
		return io.ErrUnexpectedEOF
	}
	r.off--
	return nil
}

var msgpackDecPool = sync.Pool{New: func() any {
	d := &msgpackDec{}
	d.dec = msgpack.NewDecoder(&d.r)
	d.dec.SetCustomStructTag("json")
	return d
}}

func (msgpackSerializer) Unmarshal(data []byte, m proto.Message) error {
	proto.Reset(m)
	if len(data) == 0 {
		return nil
	}
	// msgpack.Decoder sizes its buffer from a declared length before it
	// reads, keeps the buffer in the pooled decoder and grows it a megabyte
	// per such call: a 10-byte body declaring a 4 GiB string would cost a
	// megabyte or more of allocation per frame. Check that every length
	// fits in the body first.
	if err := checkMsgpack(data); err != nil {
		return err
	}
	d := msgpackDecPool.Get().(*msgpackDec)
	d.r.b, d.r.off = data, 0
	err := d.dec.Decode(m)
	trailing := d.r.off < len(d.r.b)
	d.r.b = nil
	msgpackDecPool.Put(d)
	if err != nil {
		return fmt.Errorf("%w: msgpack: %v", ErrBadBody, err)
	}
	if trailing {
		return fmt.Errorf("%w: msgpack: trailing bytes", ErrBadBody)
	}
	return nil
}
