package codec

// MessagePack (serializer 3) fast paths. The decoder matches the generic
// one (vmihailenco/msgpack) except where docs/protocol.md §3 is stricter:
// the body must be one map (an array, nil or any other value is BAD_BODY),
// string fields (and the elements of repeated ones) must be valid UTF-8
// whether sent as str or bin, and an integer must fit its field's type (no
// wrap-around of negative or large values). Keys are str, bin or nil, as the generic decoder accepts. Unknown
// values of any depth are skipped with a counter, never by recursion. The
// encoders write what the generic encoder writes with OmitEmpty and
// UseCompactInts: a fixmap of the non-empty fields in struct order, the
// shortest str, bin and int formats.

import "encoding/binary"

type mpDec struct {
	b []byte
	i int
}

func (d *mpDec) err(reason string) error { return errAt(MsgPack, d.i, reason) }

// take consumes n bytes.
func (d *mpDec) take(n uint64) ([]byte, bool) {
	if n > uint64(len(d.b)-d.i) {
		return nil, false
	}
	v := d.b[d.i : d.i+int(n) : d.i+int(n)]
	d.i += int(n)
	return v, true
}

// be reads an n-byte big-endian unsigned integer (n = 1, 2, 4 or 8).
func (d *mpDec) be(n int) (uint64, bool) {
	v, ok := d.take(uint64(n))
	if !ok {
		return 0, false
	}
	switch n {
	case 1:
		return uint64(v[0]), true
	case 2:
		return uint64(binary.BigEndian.Uint16(v)), true
	case 4:
		return uint64(binary.BigEndian.Uint32(v)), true
	}
	return binary.BigEndian.Uint64(v), true
}

func decodeMsgpack(b []byte, s *schema, f *fieldValues) error {
	d := mpDec{b: b}
	c := b[0]
	d.i = 1
	var n uint64
	var ok bool
	switch {
	case c >= 0x80 && c <= 0x8f:
		n, ok = uint64(c&0x0f), true
	case c == 0xde:
		n, ok = d.be(2)
	case c == 0xdf:
		n, ok = d.be(4)
	default:
		return errAt(MsgPack, 0, "body is not a MessagePack map")
	}
	if !ok || n > uint64(len(b)-d.i)/2 { // every entry takes two bytes at least
		return errAt(MsgPack, 0, "truncated map")
	}
	for range n {
		key, isNil, err := d.text()
		if err != nil {
			return err
		}
		idx := -1
		if !isNil {
			idx = s.byName(key)
		}
		if idx < 0 {
			if err := d.skip(); err != nil {
				return err
			}
			continue
		}
		at := d.i
		if err := d.field(s, idx, f); err != nil {
			return withPos(err, MsgPack, at)
		}
	}
	if d.i != len(b) {
		return d.err("trailing bytes after the map")
	}
	return nil
}

// checkMsgpack checks that b is exactly one MessagePack value whose every
// declared length and count fits in b, without allocating.
func checkMsgpack(b []byte) error {
	d := mpDec{b: b}
	if err := d.skip(); err != nil {
		return err
	}
	if d.i != len(b) {
		return d.err("trailing bytes")
	}
	return nil
}

// text reads a str, bin or nil value.
func (d *mpDec) text() (v []byte, isNil bool, err error) {
	if d.i >= len(d.b) {
		return nil, false, d.err("truncated")
	}
	at := d.i
	c := d.b[d.i]
	d.i++
	var n uint64
	ok := true
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n = uint64(c & 0x1f)
	case c == 0xd9 || c == 0xc4:
		n, ok = d.be(1)
	case c == 0xda || c == 0xc5:
		n, ok = d.be(2)
	case c == 0xdb || c == 0xc6:
		n, ok = d.be(4)
	case c == 0xc0:
		return nil, true, nil
	default:
		d.i = at
		return nil, false, d.err("not a string")
	}
	if ok {
		v, ok = d.take(n)
	}
	if !ok {
		d.i = at
		return nil, false, d.err("truncated string")
	}
	return v, false, nil
}

// field decodes the value of known field idx at d.i; nil is the default.
func (d *mpDec) field(s *schema, idx int, f *fieldValues) error {
	if d.i < len(d.b) && d.b[d.i] == 0xc0 {
		d.i++
		f[idx] = fieldValue{}
		return nil
	}
	switch s[idx].kind {
	case kindString, kindBytes:
		v, isNil, err := d.text()
		if err != nil || isNil {
			return errField(s, idx, "not a str or bin")
		}
		return f.setText(s, idx, v)
	case kindStrings:
		return d.list(s, idx, f)
	case kindBool:
		if d.i < len(d.b) && (d.b[d.i] == 0xc2 || d.b[d.i] == 0xc3) {
			f[idx].u = uint64(d.b[d.i] & 1)
			d.i++
			return nil
		}
		return errField(s, idx, "not true or false")
	}
	u, neg, err := d.int()
	if err != nil {
		return err
	}
	if neg {
		return f.setInt(s, idx, int64(u))
	}
	return f.setUint(s, idx, u)
}

// list decodes an array of str (or bin) into repeated string field idx,
// replacing an earlier occurrence. A nil element is BAD_BODY.
func (d *mpDec) list(s *schema, idx int, f *fieldValues) error {
	if d.i >= len(d.b) {
		return d.err("truncated")
	}
	at := d.i
	c := d.b[d.i]
	d.i++
	var n uint64
	ok := true
	switch {
	case c >= 0x90 && c <= 0x9f:
		n = uint64(c & 0x0f)
	case c == 0xdc:
		n, ok = d.be(2)
	case c == 0xdd:
		n, ok = d.be(4)
	default:
		d.i = at
		return errField(s, idx, "not an array")
	}
	if !ok || n > uint64(len(d.b)-d.i) { // every element takes a byte at least
		d.i = at
		return errField(s, idx, "truncated array")
	}
	f[idx].list = make([][]byte, 0, min(n, 64))
	for range n {
		v, isNil, err := d.text()
		if err != nil || isNil {
			return errField(s, idx, "element is not a str or bin")
		}
		if err := f.setText(s, idx, v); err != nil {
			return err
		}
	}
	return nil
}

// int reads any int format: the magnitude bits and whether it is negative.
func (d *mpDec) int() (u uint64, neg bool, err error) {
	if d.i >= len(d.b) {
		return 0, false, d.err("truncated")
	}
	at := d.i
	c := d.b[d.i]
	d.i++
	ok := true
	switch {
	case c <= 0x7f:
		return uint64(c), false, nil
	case c >= 0xe0:
		return uint64(int64(int8(c))), true, nil
	case c >= 0xcc && c <= 0xcf: // uint 8, 16, 32, 64
		u, ok = d.be(1 << (c - 0xcc))
	case c >= 0xd0 && c <= 0xd3: // int 8, 16, 32, 64
		var v uint64
		size := 1 << (c - 0xd0)
		v, ok = d.be(size)
		shift := 64 - 8*size
		i := int64(v<<shift) >> shift // sign-extend
		u, neg = uint64(i), i < 0
	default:
		d.i = at
		return 0, false, d.err("not an integer")
	}
	if !ok {
		d.i = at
		return 0, false, d.err("truncated integer")
	}
	return u, neg, nil
}

// skip skips one value of any type. Containers add their element count to
// a pending counter instead of recursing; the counter can never exceed the
// bytes left, since each element takes one byte at least.
func (d *mpDec) skip() error {
	for pending := uint64(1); pending > 0; pending-- {
		if d.i >= len(d.b) {
			return d.err("truncated")
		}
		c := d.b[d.i]
		d.i++
		var size, items uint64 // bytes to skip, elements to add
		ok := true
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			items = 2 * uint64(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			items = uint64(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			size = uint64(c & 0x1f)
		case c == 0xc4 || c == 0xd9: // bin 8, str 8
			size, ok = d.be(1)
		case c == 0xc5 || c == 0xda:
			size, ok = d.be(2)
		case c == 0xc6 || c == 0xdb:
			size, ok = d.be(4)
		case c == 0xc7 || c == 0xc8 || c == 0xc9: // ext 8, 16, 32: length, type, data
			size, ok = d.be(1 << (c - 0xc7))
			size++
		case c == 0xca:
			size = 4
		case c == 0xcb:
			size = 8
		case c >= 0xcc && c <= 0xcf:
			size = 1 << (c - 0xcc)
		case c >= 0xd0 && c <= 0xd3:
			size = 1 << (c - 0xd0)
		case c >= 0xd4 && c <= 0xd8: // fixext 1, 2, 4, 8, 16: type, data
			size = 1 + 1<<(c-0xd4)
		case c == 0xdc:
			items, ok = d.be(2)
		case c == 0xdd:
			items, ok = d.be(4)
		case c == 0xde:
			items, ok = d.be(2)
			items *= 2
		case c == 0xdf:
			items, ok = d.be(4)
			items *= 2
		default: // 0xc1, never used
			return d.err("invalid type byte")
		}
		if ok {
			_, ok = d.take(size)
		}
		if !ok {
			return d.err("truncated")
		}
		pending += items
		if pending-1 > uint64(len(d.b)-d.i) {
			return d.err("truncated container")
		}
	}
	return nil
}

// ---- encoding ----

func appendMsgpackUint(dst []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(dst, byte(v))
	case v <= 0xff:
		return append(dst, 0xcc, byte(v))
	case v <= 0xffff:
		return binary.BigEndian.AppendUint16(append(dst, 0xcd), uint16(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(dst, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xcf), v)
}

func appendMsgpackInt(dst []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendMsgpackUint(dst, uint64(v))
	case v >= -32:
		return append(dst, byte(v))
	case v >= -128:
		return append(dst, 0xd0, byte(v))
	case v >= -32768:
		return binary.BigEndian.AppendUint16(append(dst, 0xd1), uint16(v))
	case v >= -1<<31:
		return binary.BigEndian.AppendUint32(append(dst, 0xd2), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xd3), uint64(v))
}

// appendMsgpackLen appends the header of a str (bin false) or bin value of
// n bytes in its shortest format.
func appendMsgpackLen(dst []byte, n int, bin bool) []byte {
	codes := [3]byte{0xd9, 0xda, 0xdb} // str 8, 16, 32
	if bin {
		codes = [3]byte{0xc4, 0xc5, 0xc6} // bin 8, 16, 32
	}
	switch {
	case !bin && n < 32:
		return append(dst, 0xa0|byte(n))
	case n <= 0xff:
		return append(dst, codes[0], byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(dst, codes[1]), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, codes[2]), uint32(n))
}

func appendMsgpackStr[S ~string | ~[]byte](dst []byte, s S) []byte {
	return append(appendMsgpackLen(dst, len(s), false), s...)
}

// msgpackKey appends a field name as the fixstr the encoder writes.
func msgpackKey(dst []byte, key string) []byte {
	return append(append(dst, 0xa0|byte(len(key))), key...)
}

func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func appendMsgpackSendAck(dst []byte, clientMsgID string, msgID, seq uint64, timeMs int64, duplicate bool) []byte {
	dst = append(dst, 0x80|byte(countTrue(clientMsgID != "", msgID != 0, seq != 0, timeMs != 0, duplicate)))
	if clientMsgID != "" {
		dst = appendMsgpackStr(msgpackKey(dst, "client_msg_id"), clientMsgID)
	}
	if msgID != 0 {
		dst = appendMsgpackUint(msgpackKey(dst, "msg_id"), msgID)
	}
	if seq != 0 {
		dst = appendMsgpackUint(msgpackKey(dst, "seq"), seq)
	}
	if timeMs != 0 {
		dst = appendMsgpackInt(msgpackKey(dst, "time"), timeMs)
	}
	if duplicate {
		dst = append(msgpackKey(dst, "duplicate"), 0xc3)
	}
	return dst
}

func appendMsgpackHeartbeat(dst []byte, timeMs int64) []byte {
	if timeMs == 0 {
		return append(dst, 0x80)
	}
	return appendMsgpackInt(msgpackKey(append(dst, 0x81), "time"), timeMs)
}

// appendMsgpackRest appends the key-value pairs of pb.Message after seq and
// returns how many it wrote.
func (t *PushTemplate) appendMsgpackRest(dst []byte) ([]byte, int) {
	n := 0
	if t.msgID != 0 {
		dst, n = appendMsgpackUint(msgpackKey(dst, "msg_id"), t.msgID), n+1
	}
	for _, f := range [...]struct {
		key string
		v   []byte
	}{{"from", t.from}, {"to", t.to}, {"group_id", t.groupID}, {"client_msg_id", t.clientMsgID}} {
		if len(f.v) != 0 {
			dst, n = appendMsgpackStr(msgpackKey(dst, f.key), f.v), n+1
		}
	}
	if t.kind != 0 {
		dst, n = appendMsgpackUint(msgpackKey(dst, "kind"), uint64(t.kind)), n+1
	}
	if len(t.body) != 0 {
		dst, n = append(appendMsgpackLen(msgpackKey(dst, "body"), len(t.body), true), t.body...), n+1
	}
	if t.time != 0 {
		dst, n = appendMsgpackInt(msgpackKey(dst, "time"), t.time), n+1
	}
	return dst, n
}

// appendMsgpackPush appends {"messages": [{"seq": N, <rest>}]}; the
// message map's size counts the seq when it is not zero.
func appendMsgpackPush(dst []byte, seq uint64, rest []byte, n int) []byte {
	dst = append(dst, 0x81, 0xa8, 'm', 'e', 's', 's', 'a', 'g', 'e', 's', 0x91)
	if seq != 0 {
		dst = appendMsgpackUint(msgpackKey(append(dst, 0x80|byte(n+1)), "seq"), seq)
	} else {
		dst = append(dst, 0x80|byte(n))
	}
	return append(dst, rest...)
}
