package codec

// Fast paths for the hot commands: request bodies decoded in place into
// views (no pb structs, no copies), and replies encoded straight into a
// caller's buffer. They agree with the generic serializers (Unmarshal,
// AppendFrame) on every valid body; where docs/protocol.md §3 is stricter
// than the generic decoders (invalid UTF-8, out-of-range integers, a
// MessagePack array as the body, a Protobuf field with the wrong wire type,
// ...), the fast decoders follow the spec and answer ErrBadBody.
//
// One file per serializer (fast_json.go, fast_proto.go, fast_msgpack.go);
// this file holds what they share.

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// SendView is a SEND (SendRequest) or GROUP_SEND (GroupSendRequest) body
// decoded in place. Absent fields are nil or 0. The slices alias the body
// or the scratch buffer given to DecodeSend (see there for how long they
// stay valid); a caller that keeps a field longer copies it.
type SendView struct {
	ClientMsgID []byte // field 1 "client_msg_id"; valid UTF-8
	To          []byte // field 2: "to" for SEND, "group_id" for GROUP_SEND; valid UTF-8
	Kind        uint32 // field 3 "kind"
	Body        []byte // field 4 "body" (JSON: the standard base64 text, decoded)
}

// DecodeSend decodes body (serializer ser) into v. group selects the
// GROUP_SEND key name for field 2 ("group_id" instead of "to"). The rules
// are those of docs/protocol.md §3: an empty body is all defaults, unknown
// fields are skipped, the last occurrence of a field wins, null/nil resets
// it, and strings must be valid UTF-8.
//
// The slices in v alias body, or scratch where the serializer needs
// unescaping (JSON string escapes and base64). Decoded bytes are appended to
// scratch, which is returned, grown if it had to be, so the caller can keep
// its capacity: pass scratch[:0] to reuse it (the previous views into it are
// then overwritten), or the returned slice as is to keep earlier views valid
// (if it grows, they keep the old array). v is valid while body and the
// scratch bytes it uses are neither modified nor reused.
//
// DecodeSend does not allocate when scratch has len(body) bytes of spare
// capacity (2*len(body) when a JSON base64 string itself contains escapes),
// apart from the error it returns for a bad body. Errors wrap ErrBadBody
// (ErrUnknownSerializer for an unknown ser); on error v is zeroed.
//
// It is safe for concurrent use with distinct v and scratch.
func DecodeSend(ser SerializerID, body []byte, group bool, v *SendView, scratch []byte) ([]byte, error) {
	s := &sendSchema
	if group {
		s = &groupSendSchema
	}
	var f fieldValues
	scratch, err := decodeBody(ser, body, s, &f, scratch)
	if err != nil {
		*v = SendView{}
		return scratch, err
	}
	*v = SendView{ClientMsgID: f[0].b, To: f[1].b, Kind: uint32(f[2].u), Body: f[3].b}
	return scratch, nil
}

// DecodePushAck decodes a PUSH_ACK body (PushAck) by the rules of
// DecodeSend. It never allocates except for the error it returns; errors wrap
// ErrBadBody (ErrUnknownSerializer for an unknown ser). Safe for concurrent
// use.
func DecodePushAck(ser SerializerID, body []byte) (upToSeq uint64, err error) {
	var f fieldValues
	if _, err := decodeBody(ser, body, &pushAckSchema, &f, nil); err != nil {
		return 0, err
	}
	return f[0].u, nil
}

// DecodeSync decodes a SYNC body (SyncRequest) as DecodePushAck does.
func DecodeSync(ser SerializerID, body []byte) (afterSeq uint64, limit uint32, err error) {
	var f fieldValues
	if _, err := decodeBody(ser, body, &syncSchema, &f, nil); err != nil {
		return 0, 0, err
	}
	return f[0].u, uint32(f[1].u), nil
}

// decodeBody dispatches on the serializer. An empty body is the all-default
// message in every serializer.
func decodeBody(ser SerializerID, body []byte, s *schema, f *fieldValues, scratch []byte) ([]byte, error) {
	if !ser.Known() {
		return scratch, fmt.Errorf("%w: %d", ErrUnknownSerializer, uint8(ser))
	}
	if len(body) == 0 {
		return scratch, nil
	}
	switch ser {
	case JSON:
		return decodeJSON(body, s, f, scratch)
	case Protobuf:
		return scratch, decodeProto(body, s, f)
	default:
		return scratch, decodeMsgpack(body, s, f)
	}
}

// ---- schemas: the known fields of each request the fast path decodes ----

type fieldKind uint8

const (
	kindString fieldKind = iota // UTF-8 text
	kindBytes                   // opaque bytes (JSON: base64 text)
	kindUint32
	kindUint64
	kindInt64   // signed; fieldValue.u holds its two's complement bits
	kindStrings // repeated string; fieldValue.list
	kindBool    // fieldValue.u is 0 or 1
)

// maxFields is the most fields a request has (HISTORY).
const maxFields = 5

// fieldSpec is one field of a message: its key (JSON, MessagePack), its
// Protobuf field number and its type.
type fieldSpec struct {
	name string
	num  uint32
	kind fieldKind
}

// schema lists a message's fields; a field's index in it is its slot in
// fieldValues. Unused trailing entries have num 0 and match nothing.
type schema [maxFields]fieldSpec

// fieldValue is one decoded field: b for strings and bytes, u for integers,
// list for a repeated string.
type fieldValue struct {
	b    []byte
	u    uint64
	list [][]byte
}

type fieldValues [maxFields]fieldValue

var (
	sendSchema = schema{
		{"client_msg_id", 1, kindString}, {"to", 2, kindString}, {"kind", 3, kindUint32}, {"body", 4, kindBytes},
	}
	groupSendSchema = schema{
		{"client_msg_id", 1, kindString}, {"group_id", 2, kindString}, {"kind", 3, kindUint32}, {"body", 4, kindBytes},
	}
	pushAckSchema = schema{{"up_to_seq", 1, kindUint64}}
	syncSchema    = schema{{"after_seq", 1, kindUint64}, {"limit", 2, kindUint32}}

	// The requests that are not on the hot path (DecodeRequest).
	registerSchema = schema{{"user", 1, kindString}, {"password", 2, kindString}}
	loginSchema    = schema{
		{"user", 1, kindString}, {"password", 2, kindString}, {"token", 3, kindString}, {"device", 4, kindString},
	}
	heartbeatSchema   = schema{{"time", 1, kindInt64}}
	emptySchema       = schema{}
	groupCreateSchema = schema{{"name", 1, kindString}, {"members", 2, kindStrings}, {"open", 3, kindBool}}
	groupSchema       = schema{{"group_id", 1, kindString}}
	// Group access control (docs/protocol.md §4.5).
	groupMembersSchema  = schema{{"group_id", 1, kindString}, {"users", 2, kindStrings}}
	groupTransferSchema = schema{{"group_id", 1, kindString}, {"user", 2, kindString}}
	groupAdminSchema    = schema{{"group_id", 1, kindString}, {"user", 2, kindString}, {"admin", 3, kindBool}}
	groupsSchema        = schema{{"after", 1, kindString}, {"limit", 2, kindUint32}}
	presenceSchema      = schema{{"users", 1, kindStrings}}

	// The chat requests (docs/protocol.md §4.8).
	conversationsSchema = schema{{"before_seq", 1, kindUint64}, {"limit", 2, kindUint32}}
	readSchema          = schema{{"peer", 1, kindString}, {"group_id", 2, kindString}, {"up_to_seq", 3, kindUint64}}
	typingSchema        = schema{{"peer", 1, kindString}, {"group_id", 2, kindString}, {"on", 3, kindBool}}
	messageSchema       = schema{{"msg_id", 1, kindUint64}}
	historySchema       = schema{
		{"peer", 1, kindString}, {"group_id", 2, kindString}, {"before_seq", 3, kindUint64}, {"before_msg_id", 4, kindUint64}, {"limit", 5, kindUint32},
	}
	readCountSchema = schema{{"peer", 1, kindString}, {"group_id", 2, kindString}, {"seq", 3, kindUint64}}
)

// byName returns the index of the field whose key is name, or -1. Keys are
// matched exactly (case-sensitive), as docs/protocol.md §3 requires.
func (s *schema) byName(name []byte) int {
	for i := range s {
		if s[i].num != 0 && string(name) == s[i].name {
			return i
		}
	}
	return -1
}

// byNum returns the index of the field with Protobuf number num, or -1.
func (s *schema) byNum(num uint64) int {
	for i := range s {
		if s[i].num != 0 && uint64(s[i].num) == num {
			return i
		}
	}
	return -1
}

// maxOf is the largest value an integer field of kind k holds.
func maxOf(k fieldKind) uint64 {
	if k == kindUint32 {
		return 1<<32 - 1
	}
	return 1<<64 - 1
}

// setText stores a decoded string or bytes value, checking UTF-8 for
// strings (docs/protocol.md §3: strings MUST be valid UTF-8, in every
// serializer). For a repeated string it appends one element.
func (f *fieldValues) setText(s *schema, i int, b []byte) error {
	if s[i].kind != kindBytes && !utf8.Valid(b) {
		return errField(s, i, "string is not valid UTF-8")
	}
	if s[i].kind == kindStrings {
		f[i].list = append(f[i].list, b)
		return nil
	}
	f[i].b = b
	return nil
}

// setUint stores an unsigned integer value, checking its type's range.
// For an int64 field u must be at most 2^63-1 (a negative value is stored
// by setInt).
func (f *fieldValues) setUint(s *schema, i int, u uint64) error {
	if s[i].kind == kindInt64 && u > 1<<63-1 || u > maxOf(s[i].kind) {
		return errField(s, i, "integer out of range")
	}
	f[i].u = u
	return nil
}

// setInt stores a negative integer value: only an int64 field takes one.
func (f *fieldValues) setInt(s *schema, i int, v int64) error {
	if s[i].kind != kindInt64 {
		return errField(s, i, "integer out of range")
	}
	f[i].u = uint64(v)
	return nil
}

// isInt reports whether the field holds an integer.
func (k fieldKind) isInt() bool { return k == kindUint32 || k == kindUint64 || k == kindInt64 }

// ---- errors ----

// bodyError is a body the fast decoders reject. It wraps ErrBadBody.
type bodyError struct {
	ser    SerializerID
	off    int // byte offset in the body, -1 when not known
	reason string
}

func (e *bodyError) Error() string {
	if e.off < 0 {
		return fmt.Sprintf("%v: %s: %s", ErrBadBody, e.ser, e.reason)
	}
	return fmt.Sprintf("%v: %s: at byte %d: %s", ErrBadBody, e.ser, e.off, e.reason)
}

func (e *bodyError) Unwrap() error { return ErrBadBody }

func errAt(ser SerializerID, off int, reason string) error {
	return &bodyError{ser: ser, off: off, reason: reason}
}

// errField is a bad value of a known field; the serializer is filled in by
// the caller's wrapFieldErr when known, so the message names the field.
func errField(s *schema, i int, reason string) error {
	return &bodyError{off: -1, reason: fmt.Sprintf("field %q: %s", s[i].name, reason)}
}

// withPos fills in the serializer and offset of an error from errField.
func withPos(err error, ser SerializerID, off int) error {
	if be, ok := err.(*bodyError); ok && be.ser == 0 {
		be.ser, be.off = ser, off
	}
	return err
}

// ---- frames ----

// beginFrame appends a header with a zero length; endFrame patches the
// length once the body is written after it.
func beginFrame(dst []byte, ser SerializerID, cmd Command, seq uint32) ([]byte, int) {
	return AppendHeader(dst, Header{Version: Version1, Serializer: ser, Command: cmd, Seq: seq}), len(dst)
}

func endFrame(dst []byte, start int) []byte {
	binary.BigEndian.PutUint32(dst[start+12:start+16], uint32(len(dst)-start-HeaderSize))
	return dst
}

// AppendSendAckFrame appends a whole SEND_ACK frame (request seq reqSeq,
// flags 0) whose body is pb.SendAck{ClientMsgId: clientMsgID, MsgId: msgID,
// Seq: seq, Time: timeMs, Duplicate: duplicate} encoded by ser: the same
// bytes AppendFrame produces for that message. It allocates only when dst
// must grow.
//
// clientMsgID is assumed to be valid UTF-8 (the request decoders check it);
// invalid UTF-8 is written as is in every serializer (the generic Protobuf
// encoder refuses it instead). For an unknown ser it returns dst unchanged.
func AppendSendAckFrame(dst []byte, ser SerializerID, reqSeq uint32, clientMsgID string, msgID, seq uint64, timeMs int64, duplicate bool) []byte {
	if !ser.Known() {
		return dst
	}
	dst, start := beginFrame(dst, ser, CmdSendAck, reqSeq)
	switch ser {
	case JSON:
		dst = appendJSONSendAck(dst, clientMsgID, msgID, seq, timeMs, duplicate)
	case Protobuf:
		dst = appendProtoSendAck(dst, clientMsgID, msgID, seq, timeMs, duplicate)
	default:
		dst = appendMsgpackSendAck(dst, clientMsgID, msgID, seq, timeMs, duplicate)
	}
	return endFrame(dst, start)
}

// AppendHeartbeatOKFrame appends a whole HEARTBEAT_OK frame (request seq
// reqSeq) whose body is pb.Heartbeat{Time: timeMs} encoded by ser, the same
// bytes AppendFrame produces. It allocates only when dst must grow. For an
// unknown ser it returns dst unchanged.
func AppendHeartbeatOKFrame(dst []byte, ser SerializerID, reqSeq uint32, timeMs int64) []byte {
	if !ser.Known() {
		return dst
	}
	dst, start := beginFrame(dst, ser, CmdHeartbeatOK, reqSeq)
	switch ser {
	case JSON:
		dst = appendJSONHeartbeat(dst, timeMs)
	case Protobuf:
		dst = appendProtoHeartbeat(dst, timeMs)
	default:
		dst = appendMsgpackHeartbeat(dst, timeMs)
	}
	return endFrame(dst, start)
}

// ---- PUSH encoded once per serializer ----

// MessageFields is a pb.Message without its per-inbox seq.
type MessageFields struct {
	MsgID       uint64
	From        string
	To          string
	GroupID     string
	ClientMsgID string
	Kind        uint32
	Body        []byte
	Time        int64
}

// PushTemplate encodes a PUSH of one message once per serializer, so that a
// fan-out to many inboxes writes the shared bytes once and splices only each
// inbox's seq: AppendFrame(dst, ser, seq) produces exactly what
// AppendFrame(dst, ser, CmdPush, 0, 0, &pb.Push{Messages: []*pb.Message{m
// with Seq: seq}}) does.
//
// The zero value is an empty message. A template is reusable: Reset keeps
// its buffers' capacity, so a template kept per event loop (or pooled)
// encodes without allocating once its buffers have grown to the sizes seen.
//
// A PushTemplate is not safe for concurrent use, with one exception:
// AppendFrame for a serializer already prepared (by Prepare or an earlier
// AppendFrame with that serializer) only reads the template, so once
// Prepare(ser) has returned, any number of goroutines may call
// AppendFrame(..., ser, ...) until the next Reset.
//
// Strings are assumed to be valid UTF-8; invalid UTF-8 is written as is in
// every serializer (the generic Protobuf encoder refuses it instead).
type PushTemplate struct {
	data []byte // copies of the strings and body of the message
	// from .. body are slices of data.
	from, to, groupID, clientMsgID, body []byte
	msgID                                uint64
	kind                                 uint32
	time                                 int64
	// enc[ser] is the message's encoding without the seq field, built on
	// first use; n[ser] counts its fields (MessagePack's map header needs it).
	enc   [MsgPack + 1][]byte
	n     [MsgPack + 1]uint8
	ready [MsgPack + 1]bool
}

// Reset makes t the template of m. It copies m's strings and body into t's
// own buffer, so m (including strings built over a buffer that is reused)
// may change as soon as Reset returns. Encodings of the previous message
// are dropped.
func (t *PushTemplate) Reset(m *MessageFields) {
	need := len(m.From) + len(m.To) + len(m.GroupID) + len(m.ClientMsgID) + len(m.Body)
	if cap(t.data) < need {
		t.data = make([]byte, 0, need)
	}
	d := t.data[:0]
	d = append(d, m.From...)
	d = append(d, m.To...)
	d = append(d, m.GroupID...)
	d = append(d, m.ClientMsgID...)
	d = append(d, m.Body...)
	t.data = d
	o := 0
	next := func(n int) []byte { s := d[o : o+n : o+n]; o += n; return s }
	t.from, t.to, t.groupID, t.clientMsgID, t.body = next(len(m.From)), next(len(m.To)), next(len(m.GroupID)), next(len(m.ClientMsgID)), next(len(m.Body))
	t.msgID, t.kind, t.time = m.MsgID, m.Kind, m.Time
	t.ready = [MsgPack + 1]bool{}
}

// Prepare encodes the message for ser now, so that later AppendFrame calls
// for ser only read the template (see the type's doc). Preparing a
// serializer twice is a no-op; an unknown ser is ignored.
func (t *PushTemplate) Prepare(ser SerializerID) {
	if !ser.Known() || t.ready[ser] {
		return
	}
	buf := t.enc[ser][:0]
	var n int
	switch ser {
	case JSON:
		buf, n = t.appendJSONRest(buf)
	case Protobuf:
		buf, n = t.appendProtoRest(buf)
	default:
		buf, n = t.appendMsgpackRest(buf)
	}
	t.enc[ser], t.n[ser], t.ready[ser] = buf, uint8(n), true
}

// AppendFrame appends a whole PUSH frame (request seq 0, flags 0) carrying
// the template's message with the given inbox seq, encoded by ser. It
// encodes the shared part on the first call for ser and copies it after
// that; it allocates only when dst (or, on the first call, the template's
// buffer) must grow. For an unknown ser it returns dst unchanged.
func (t *PushTemplate) AppendFrame(dst []byte, ser SerializerID, seq uint64) []byte {
	if !ser.Known() {
		return dst
	}
	t.Prepare(ser)
	dst, start := beginFrame(dst, ser, CmdPush, 0)
	rest, n := t.enc[ser], int(t.n[ser])
	switch ser {
	case JSON:
		dst = appendJSONPush(dst, seq, rest)
	case Protobuf:
		dst = appendProtoPush(dst, seq, rest)
	default:
		dst = appendMsgpackPush(dst, seq, rest, n)
	}
	return endFrame(dst, start)
}
