package bench

import (
	"encoding/binary"
	"errors"
	"strconv"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// Frames are built by hand in Protobuf (serializer 2), appended to a reused
// buffer: the generator must not spend more CPU per message than the server
// it measures. The field numbers are those of codec/pb/imgn.proto; the
// tests check every builder against the generated types.

const ser = codec.Protobuf

func appendVarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func appendTag(b []byte, field int, wire int) []byte {
	return appendVarint(b, uint64(field)<<3|uint64(wire))
}

func appendBytesField(b []byte, field int, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = appendTag(b, field, 2)
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendStringField(b []byte, field int, v string) []byte {
	if len(v) == 0 {
		return b
	}
	b = appendTag(b, field, 2)
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendVarintField(b []byte, field int, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = appendTag(b, field, 0)
	return appendVarint(b, v)
}

// beginFrame appends a header with a zero length; endFrame patches it.
func beginFrame(b []byte, cmd codec.Command, seq uint32) ([]byte, int) {
	start := len(b)
	return codec.AppendHeader(b, codec.Header{Version: codec.Version1, Serializer: ser, Command: cmd, Seq: seq}), start
}

func endFrame(b []byte, start int) []byte {
	binary.BigEndian.PutUint32(b[start+12:start+16], uint32(len(b)-start-codec.HeaderSize))
	return b
}

// appendLogin appends LOGIN{user, token, device}. user is sent alongside
// the token (the server requires it to equal the token's subject): the
// baseline relay, which verifies nothing, pairs connections by it.
func appendLogin(b []byte, seq uint32, user, token, device string) []byte {
	b, st := beginFrame(b, codec.CmdLogin, seq)
	b = appendStringField(b, 1, user)
	b = appendStringField(b, 3, token)
	b = appendStringField(b, 4, device)
	return endFrame(b, st)
}

// appendHeartbeat appends HEARTBEAT with an empty body.
func appendHeartbeat(b []byte, seq uint32) []byte {
	b, st := beginFrame(b, codec.CmdHeartbeat, seq)
	return endFrame(b, st)
}

// appendSend appends SEND{client_msg_id, to, body}.
func appendSend(b []byte, seq uint32, cmid []byte, to string, body []byte) []byte {
	b, st := beginFrame(b, codec.CmdSend, seq)
	b = appendBytesField(b, 1, cmid)
	b = appendStringField(b, 2, to)
	b = appendBytesField(b, 4, body)
	return endFrame(b, st)
}

// appendGroupSend appends GROUP_SEND{client_msg_id, group_id, body}.
func appendGroupSend(b []byte, seq uint32, cmid []byte, group string, body []byte) []byte {
	b, st := beginFrame(b, codec.CmdGroupSend, seq)
	b = appendBytesField(b, 1, cmid)
	b = appendStringField(b, 2, group)
	b = appendBytesField(b, 4, body)
	return endFrame(b, st)
}

// appendGroupCreate appends GROUP_CREATE{name, members}.
func appendGroupCreate(b []byte, seq uint32, name string, members []string) []byte {
	b, st := beginFrame(b, codec.CmdGroupCreate, seq)
	b = appendStringField(b, 1, name)
	for _, m := range members {
		b = appendTag(b, 2, 2)
		b = appendVarint(b, uint64(len(m)))
		b = append(b, m...)
	}
	return endFrame(b, st)
}

// appendPushAck appends PUSH_ACK{up_to_seq} with request seq 0 (no reply).
func appendPushAck(b []byte, upTo uint64) []byte {
	b, st := beginFrame(b, codec.CmdPushAck, 0)
	b = appendVarintField(b, 1, upTo)
	return endFrame(b, st)
}

var errPB = errors.New("bench: malformed protobuf")

// pbNext reads one field of a protobuf message from b. For varint fields it
// returns the value in v; for length-delimited fields the bytes in data.
// Fixed-width fields are skipped (data nil). It returns the rest of b.
func pbNext(b []byte) (field int, v uint64, data []byte, rest []byte, err error) {
	tag, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, 0, nil, nil, errPB
	}
	b = b[n:]
	field = int(tag >> 3)
	switch tag & 7 {
	case 0:
		v, n = binary.Uvarint(b)
		if n <= 0 {
			return 0, 0, nil, nil, errPB
		}
		return field, v, nil, b[n:], nil
	case 1:
		if len(b) < 8 {
			return 0, 0, nil, nil, errPB
		}
		return field, 0, nil, b[8:], nil
	case 2:
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return 0, 0, nil, nil, errPB
		}
		return field, l, b[n : n+int(l)], b[n+int(l):], nil
	case 5:
		if len(b) < 4 {
			return 0, 0, nil, nil, errPB
		}
		return field, 0, nil, b[4:], nil
	}
	return 0, 0, nil, nil, errPB
}

// pbVarint returns the varint field f of message b (0 when absent).
func pbVarint(b []byte, f int) uint64 {
	var out uint64
	for len(b) > 0 {
		field, v, data, rest, err := pbNext(b)
		if err != nil {
			return out
		}
		if field == f && data == nil {
			out = v
		}
		b = rest
	}
	return out
}

// pbBytes returns the last length-delimited field f of message b (nil when
// absent). The slice aliases b.
func pbBytes(b []byte, f int) []byte {
	var out []byte
	for len(b) > 0 {
		field, _, data, rest, err := pbNext(b)
		if err != nil {
			return out
		}
		if field == f && data != nil {
			out = data
		}
		b = rest
	}
	return out
}

// eachPushed calls fn with the seq and body of every Message of a PUSH
// body, without allocating. body aliases push.
func eachPushed(push []byte, fn func(seq uint64, body []byte)) error {
	for len(push) > 0 {
		field, _, msg, rest, err := pbNext(push)
		if err != nil {
			return err
		}
		push = rest
		if field != 1 || msg == nil {
			continue
		}
		var seq uint64
		var body []byte
		for len(msg) > 0 {
			f, v, data, r, err := pbNext(msg)
			if err != nil {
				return err
			}
			msg = r
			switch {
			case f == 1 && data == nil:
				seq = v
			case f == 8 && data != nil:
				body = data
			}
		}
		fn(seq, body)
	}
	return nil
}

// Payload layout of every bench message body (little endian):
//
//	0:4   magic "IMB1"
//	4:8   run tag (random per run: other runs' messages are ignored)
//	8:12  phase number
//	12    flags: bit 0 = the intended time is inside the measurement window
//	16:24 intended send time, ns on the sending loop's monotonic clock
//	24:   padding up to the configured payload size
const (
	payloadMin    = 24
	flagInWindow  = 1
	payloadMagic  = "IMB1"
	payloadMagicU = uint32('I') | uint32('M')<<8 | uint32('B')<<16 | uint32('1')<<24
)

// putPayload fills p (len >= payloadMin) with a bench payload.
func putPayload(p []byte, run, phase uint32, inWindow bool, intended int64) {
	binary.LittleEndian.PutUint32(p[0:4], payloadMagicU)
	binary.LittleEndian.PutUint32(p[4:8], run)
	binary.LittleEndian.PutUint32(p[8:12], phase)
	var fl byte
	if inWindow {
		fl = flagInWindow
	}
	p[12] = fl
	binary.LittleEndian.PutUint64(p[16:24], uint64(intended))
}

// payload is a decoded bench payload.
type payload struct {
	run, phase uint32
	inWindow   bool
	intended   int64
}

// readPayload decodes a bench payload; ok is false for anything else.
func readPayload(p []byte) (payload, bool) {
	if len(p) < payloadMin || binary.LittleEndian.Uint32(p[0:4]) != payloadMagicU {
		return payload{}, false
	}
	return payload{
		run:      binary.LittleEndian.Uint32(p[4:8]),
		phase:    binary.LittleEndian.Uint32(p[8:12]),
		inWindow: p[12]&flagInWindow != 0,
		intended: int64(binary.LittleEndian.Uint64(p[16:24])),
	}, true
}

// errorCodeName returns the name of the error code of an ERROR frame. The
// server sends errors before a login in JSON, so the body is decoded with
// the frame's serializer (errors are rare: the allocation does not matter).
func errorCodeName(h codec.Header, body []byte) string {
	var e pb.Error
	if err := codec.Unmarshal(h.Serializer, body, &e); err != nil {
		return "ERROR (undecodable)"
	}
	code := codec.ErrorCode(e.Code)
	if name := code.String(); name != "" && code != 0 {
		return name
	}
	return "ERROR_" + strconv.FormatUint(uint64(code), 10)
}
