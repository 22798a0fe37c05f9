package codec

// Protobuf (serializer 2) fast paths, on protowire. The decoder matches
// proto.Unmarshal except where docs/protocol.md §3 is stricter: a known
// field with the wrong wire type, an integer beyond its field's type and a
// string that is not UTF-8 are BAD_BODY (proto.Unmarshal keeps the first as
// an unknown field and truncates the second). Every occurrence of a
// repeated string appends an element, as in proto.Unmarshal; an int64 is
// the varint's 64 bits in two's complement. Bytes are aliased, never
// copied. The encoders write
// fields in number order, zero values omitted, as proto.Marshal does.

import (
	"google.golang.org/protobuf/encoding/protowire"
)

func decodeProto(b []byte, s *schema, f *fieldValues) error {
	for off := 0; off < len(b); {
		at := off
		tag, n := protowire.ConsumeVarint(b[off:])
		if n < 0 {
			return errAt(Protobuf, at, "bad tag")
		}
		off += n
		num, typ := tag>>3, protowire.Type(tag&7)
		if num < uint64(protowire.MinValidNumber) || num > uint64(protowire.MaxValidNumber) {
			return errAt(Protobuf, at, "bad field number")
		}
		idx := s.byNum(num)
		if idx < 0 {
			// Unknown: skip any wire type, groups included (protowire
			// bounds their nesting at 10,000 levels, as proto.Unmarshal).
			n = protowire.ConsumeFieldValue(protowire.Number(num), typ, b[off:])
			if n < 0 {
				return errAt(Protobuf, at, "bad field value")
			}
			off += n
			continue
		}
		var err error
		switch s[idx].kind {
		case kindString, kindBytes, kindStrings:
			if typ != protowire.BytesType {
				return withPos(errField(s, idx, "wrong wire type"), Protobuf, at)
			}
			var v []byte
			v, n = protowire.ConsumeBytes(b[off:])
			if n < 0 {
				return errAt(Protobuf, at, "bad length-delimited value")
			}
			err = f.setText(s, idx, v[:len(v):len(v)])
		default:
			if typ != protowire.VarintType {
				return withPos(errField(s, idx, "wrong wire type"), Protobuf, at)
			}
			var u uint64
			u, n = protowire.ConsumeVarint(b[off:])
			if n < 0 {
				return errAt(Protobuf, at, "bad varint")
			}
			switch s[idx].kind {
			case kindInt64:
				f[idx].u = u // any 64 bits are an int64
			case kindBool:
				f[idx].u = min(u, 1) // any non-zero varint is true, as proto.Unmarshal reads it
			default:
				err = f.setUint(s, idx, u)
			}
		}
		if err != nil {
			return withPos(err, Protobuf, at)
		}
		off += n
	}
	return nil
}

// appendProtoText appends a length-delimited field.
func appendProtoText[S ~string | ~[]byte](dst []byte, num protowire.Number, s S) []byte {
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendProtoVarint(dst []byte, num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(dst, num, protowire.VarintType), v)
}

func appendProtoSendAck(dst []byte, clientMsgID string, msgID, seq uint64, timeMs int64, duplicate bool) []byte {
	if clientMsgID != "" {
		dst = appendProtoText(dst, 1, clientMsgID)
	}
	if msgID != 0 {
		dst = appendProtoVarint(dst, 2, msgID)
	}
	if seq != 0 {
		dst = appendProtoVarint(dst, 3, seq)
	}
	if timeMs != 0 {
		dst = appendProtoVarint(dst, 4, uint64(timeMs))
	}
	if duplicate {
		dst = appendProtoVarint(dst, 5, 1)
	}
	return dst
}

func appendProtoHeartbeat(dst []byte, timeMs int64) []byte {
	if timeMs == 0 {
		return dst
	}
	return appendProtoVarint(dst, 1, uint64(timeMs))
}

// appendProtoRest appends the fields of pb.Message after seq (2 to 9).
func (t *PushTemplate) appendProtoRest(dst []byte) ([]byte, int) {
	if t.msgID != 0 {
		dst = appendProtoVarint(dst, 2, t.msgID)
	}
	for i, v := range [...][]byte{t.from, t.to, t.groupID, t.clientMsgID} {
		if len(v) != 0 {
			dst = appendProtoText(dst, protowire.Number(3+i), v)
		}
	}
	if t.kind != 0 {
		dst = appendProtoVarint(dst, 7, uint64(t.kind))
	}
	if len(t.body) != 0 {
		dst = appendProtoText(dst, 8, t.body)
	}
	if t.time != 0 {
		dst = appendProtoVarint(dst, 9, uint64(t.time))
	}
	return dst, 0
}

// appendProtoPush appends Push{messages: [Message{seq, <rest>}]}: the
// message's length prefix counts the seq field, so it is computed per seq.
func appendProtoPush(dst []byte, seq uint64, rest []byte) []byte {
	n := len(rest)
	if seq != 0 {
		n += 1 + protowire.SizeVarint(seq)
	}
	dst = protowire.AppendTag(dst, 1, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(n))
	if seq != 0 {
		dst = appendProtoVarint(dst, 1, seq)
	}
	return append(dst, rest...)
}
