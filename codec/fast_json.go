package codec

// JSON (serializer 1) fast paths. The decoder is a single-pass scanner over
// one object: known keys are decoded in place, every other value is checked
// against the RFC 8259 grammar and skipped without recursion. The encoders
// write what bytedance/sonic writes with the options the generic serializer
// uses (struct field order, omitempty, no HTML escaping).

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/imgn/imgn/internal/jsonstr"
)

// maxJSONDepth bounds how deeply arrays and objects may nest in a JSON body,
// the body object counting as level 1 (docs/protocol.md §3).
const maxJSONDepth = 64

// maxKeyEscaped is the longest raw key that can still name a known field:
// the longest field name with every character written as \uXXXX.
const maxKeyEscaped = 6 * len("client_msg_id")

// jsonPlain[c] is true for bytes that stand for themselves inside a JSON
// string: everything but '"', '\\' and control characters.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

type jsDec struct {
	b []byte
	i int
}

func (d *jsDec) err(reason string) error { return errAt(JSON, d.i, reason) }

func (d *jsDec) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// eat consumes c if it is the next byte.
func (d *jsDec) eat(c byte) bool {
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

func (d *jsDec) peek() byte {
	if d.i < len(d.b) {
		return d.b[d.i]
	}
	return 0
}

// lit consumes the literal s (true, false, null).
func (d *jsDec) lit(s string) error {
	if len(d.b)-d.i < len(s) || string(d.b[d.i:d.i+len(s)]) != s {
		return d.err("invalid literal")
	}
	d.i += len(s)
	return nil
}

// decodeJSON decodes one JSON object into f. Keys match exactly; the last
// occurrence of a key wins, and null sets a field to its default.
func decodeJSON(body []byte, s *schema, f *fieldValues, scratch []byte) ([]byte, error) {
	d := jsDec{b: body}
	d.ws()
	if !d.eat('{') {
		return scratch, d.err("body is not a JSON object")
	}
	d.ws()
	if d.eat('}') {
		return scratch, d.end()
	}
	for {
		if d.peek() != '"' {
			return scratch, d.err("expected a key")
		}
		ks, ke, esc, err := d.str()
		if err != nil {
			return scratch, err
		}
		var kbuf [maxKeyEscaped]byte
		key := d.b[ks:ke]
		if esc {
			if len(key) > maxKeyEscaped {
				key = nil // too long to unescape to a known name
			} else {
				key = appendUnescaped(kbuf[:0], key)
			}
		}
		idx := s.byName(key)
		d.ws()
		if !d.eat(':') {
			return scratch, d.err("expected ':'")
		}
		d.ws()
		if idx < 0 {
			err = d.skip()
		} else {
			scratch, err = d.field(s, idx, f, scratch)
		}
		if err != nil {
			return scratch, err
		}
		d.ws()
		if d.eat(',') {
			d.ws()
			continue
		}
		if d.eat('}') {
			return scratch, d.end()
		}
		return scratch, d.err("expected ',' or '}'")
	}
}

// end checks that only white space follows the body object.
func (d *jsDec) end() error {
	d.ws()
	if d.i != len(d.b) {
		return d.err("trailing bytes after the object")
	}
	return nil
}

// field decodes the value of known field idx at d.i.
func (d *jsDec) field(s *schema, idx int, f *fieldValues, scratch []byte) ([]byte, error) {
	at := d.i
	c := d.peek()
	switch {
	case c == 'n':
		f[idx] = fieldValue{}
		return scratch, d.lit("null")
	case s[idx].kind.isInt():
		u, neg, err := d.int()
		if err != nil {
			return scratch, err
		}
		if neg {
			return scratch, withPos(f.setInt(s, idx, int64(u)), JSON, at)
		}
		return scratch, withPos(f.setUint(s, idx, u), JSON, at)
	case s[idx].kind == kindStrings:
		return d.list(s, idx, f, scratch)
	case s[idx].kind == kindBool:
		switch c {
		case 't':
			f[idx].u = 1
			return scratch, d.lit("true")
		case 'f':
			f[idx].u = 0
			return scratch, d.lit("false")
		}
		return scratch, withPos(errField(s, idx, "not true or false"), JSON, at)
	case c != '"':
		return scratch, withPos(errField(s, idx, "not a string"), JSON, at)
	}
	return d.text(s, idx, f, scratch)
}

// text decodes the string at d.i into field idx.
func (d *jsDec) text(s *schema, idx int, f *fieldValues, scratch []byte) ([]byte, error) {
	at := d.i
	start, end, esc, err := d.str()
	if err != nil {
		return scratch, err
	}
	raw := d.b[start:end:end]
	var v []byte
	switch {
	case s[idx].kind == kindBytes:
		scratch, v, err = d.base64(scratch, start, end, esc)
		if err != nil {
			return scratch, withPos(errField(s, idx, "not standard base64"), JSON, at)
		}
	case esc:
		// Decoded text is never longer than its source, and the rest of
		// the body bounds what the rest of the decode appends: one growth
		// at most.
		if cap(scratch)-len(scratch) < len(raw) {
			scratch = slices.Grow(scratch, len(d.b)-start)
		}
		n0 := len(scratch)
		scratch = appendUnescaped(scratch, raw)
		v = scratch[n0:len(scratch):len(scratch)]
	default:
		v = raw
	}
	return scratch, withPos(f.setText(s, idx, v), JSON, at)
}

// list decodes an array of strings at d.i into repeated field idx,
// replacing an earlier occurrence. A null element is BAD_BODY.
func (d *jsDec) list(s *schema, idx int, f *fieldValues, scratch []byte) ([]byte, error) {
	if !d.eat('[') {
		return scratch, withPos(errField(s, idx, "not an array"), JSON, d.i)
	}
	f[idx].list = nil
	d.ws()
	if d.eat(']') {
		return scratch, nil
	}
	for {
		if d.peek() != '"' {
			return scratch, withPos(errField(s, idx, "element is not a string"), JSON, d.i)
		}
		var err error
		if scratch, err = d.text(s, idx, f, scratch); err != nil {
			return scratch, err
		}
		d.ws()
		if d.eat(',') {
			d.ws()
			continue
		}
		if d.eat(']') {
			return scratch, nil
		}
		return scratch, d.err("expected ',' or ']'")
	}
}

// base64 decodes the standard base64 text of the string d.b[start:end]
// into scratch. Like encoding/base64 (and the generic decoder) it ignores
// '\r' and '\n' in the text and requires padding.
func (d *jsDec) base64(scratch []byte, start, end int, esc bool) ([]byte, []byte, error) {
	text := d.b[start:end]
	if esc {
		// Unescape into scratch first, then decode after the text and move
		// the result down over it.
		if cap(scratch)-len(scratch) < len(text) {
			scratch = slices.Grow(scratch, len(d.b)-start)
		}
		t0 := len(scratch)
		scratch = appendUnescaped(scratch, text)
		tl := len(scratch) - t0
		scratch = slices.Grow(scratch, base64.StdEncoding.DecodedLen(tl))
		text = scratch[t0 : t0+tl]
		out := scratch[t0+tl : t0+tl+base64.StdEncoding.DecodedLen(tl)]
		n, err := base64.StdEncoding.Decode(out, text)
		if err != nil {
			return scratch[:t0], nil, err
		}
		copy(scratch[t0:], out[:n])
		scratch = scratch[:t0+n]
		return scratch, scratch[t0 : t0+n : t0+n], nil
	}
	dl := base64.StdEncoding.DecodedLen(len(text))
	if cap(scratch)-len(scratch) < dl {
		scratch = slices.Grow(scratch, len(d.b)-start)
	}
	n0 := len(scratch)
	n, err := base64.StdEncoding.Decode(scratch[n0:n0+dl], text)
	if err != nil {
		return scratch, nil, err
	}
	scratch = scratch[:n0+n]
	return scratch, scratch[n0 : n0+n : n0+n], nil
}

// int parses an integer number: no fraction or exponent. It returns the
// magnitude's bits (two's complement for a negative value) and whether the
// value has a sign; a value outside uint64 (positive) or int64 (negative)
// is out of range. "-0" is 0 with a sign (refused by unsigned fields).
func (d *jsDec) int() (u uint64, neg bool, err error) {
	at := d.i
	if err := d.number(); err != nil {
		return 0, false, err
	}
	digits := d.b[at:d.i]
	if digits[0] == '-' {
		neg, digits = true, digits[1:]
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false, errAt(JSON, at, "not an integer")
		}
		if u > (1<<64-1)/10 || u*10 > 1<<64-1-uint64(c-'0') {
			return 0, false, errAt(JSON, at, "integer out of range")
		}
		u = u*10 + uint64(c-'0')
	}
	if neg {
		if u > 1<<63 {
			return 0, false, errAt(JSON, at, "integer out of range")
		}
		return -u, true, nil
	}
	return u, false, nil
}

// str scans the string whose opening quote is at d.i, checking the JSON
// string grammar (no raw control characters, only valid escapes) but not
// UTF-8. It returns the raw content's bounds and whether it holds escapes,
// and leaves d.i after the closing quote.
func (d *jsDec) str() (start, end int, esc bool, err error) {
	b := d.b
	i := d.i + 1
	start = i
	for {
		// Eight bytes at a time while none of them needs a look.
		for i+8 <= len(b) && !swarSpecial(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		for i < len(b) && jsonPlain[b[i]] {
			i++
		}
		if i >= len(b) {
			d.i = i
			return 0, 0, false, d.err("unterminated string")
		}
		switch b[i] {
		case '"':
			d.i = i + 1
			return start, i, esc, nil
		case '\\':
			esc = true
			if i+1 >= len(b) {
				d.i = i
				return 0, 0, false, d.err("unterminated string")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex4(b[i+2:i+6]) {
					d.i = i
					return 0, 0, false, d.err("invalid \\u escape")
				}
				i += 6
			default:
				d.i = i
				return 0, 0, false, d.err("invalid escape")
			}
		default:
			d.i = i
			return 0, 0, false, d.err("control character in string")
		}
	}
}

// swarSpecial reports whether any byte of w is a control character, '"' or
// '\\' (the classic "has zero byte" and "has byte less than" bit tricks; the
// result is exact as a yes/no).
func swarSpecial(w uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	quote, backslash := w^(ones*'"'), w^(ones*'\\')
	control := (w - ones*0x20) &^ w
	return (control|(quote-ones)&^quote|(backslash-ones)&^backslash)&highs != 0
}

func isHex4(b []byte) bool {
	for _, c := range b[:4] {
		if jsonstr.HexVal(c) < 0 {
			return false
		}
	}
	return true
}

// appendUnescaped appends the text of a raw string already checked by str.
// A \u escape of a lone or mismatched surrogate becomes U+FFFD, as in
// encoding/json and the generic decoder.
func appendUnescaped(dst, raw []byte) []byte {
	for {
		k := bytes.IndexByte(raw, '\\')
		if k < 0 {
			return append(dst, raw...)
		}
		dst = append(dst, raw[:k]...)
		r, n := jsonstr.Escape(raw[k:])
		raw = raw[k+n:]
		dst = utf8.AppendRune(dst, r)
	}
}

// number scans a number per the RFC 8259 grammar.
func (d *jsDec) number() error {
	b, i := d.b, d.i
	digits := func() bool {
		s := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > s
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		return d.err("invalid value")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			d.i = i
			return d.err("invalid number")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			d.i = i
			return d.err("invalid number")
		}
	}
	d.i = i
	return nil
}

// skip skips one value of any type at d.i, checking its grammar. It never
// recurses: open containers are a bit stack (1 = object), bounded by
// maxJSONDepth.
func (d *jsDec) skip() error {
	var stack uint64
	depth := 0 // open containers inside the skipped value
	for {
		// A value starts at d.i.
		closed := true
		switch c := d.peek(); c {
		case '{', '[':
			if depth+2 > maxJSONDepth {
				return d.err("nested too deeply")
			}
			d.i++
			if c == '{' {
				stack |= 1 << depth
			} else {
				stack &^= 1 << depth
			}
			depth++
			d.ws()
			if d.eat(c + 2) { // '}' is '{'+2, ']' is '['+2
				depth--
				break
			}
			if c == '{' {
				if err := d.key(); err != nil {
					return err
				}
			}
			closed = false
		case '"':
			if _, _, _, err := d.str(); err != nil {
				return err
			}
		case 't':
			if err := d.lit("true"); err != nil {
				return err
			}
		case 'f':
			if err := d.lit("false"); err != nil {
				return err
			}
		case 'n':
			if err := d.lit("null"); err != nil {
				return err
			}
		default:
			if err := d.number(); err != nil {
				return err
			}
		}
		// After a value: close containers until one continues with ','.
		for closed && depth > 0 {
			d.ws()
			obj := stack>>(depth-1)&1 == 1
			switch {
			case d.eat(','):
				if obj {
					if err := d.key(); err != nil {
						return err
					}
				}
				closed = false
			case obj && d.eat('}'), !obj && d.eat(']'):
				depth--
			default:
				return d.err("expected ',' or a closing bracket")
			}
		}
		if depth == 0 {
			return nil
		}
		d.ws()
	}
}

// key scans `"name" :` of an object member being skipped, and the white
// space around it.
func (d *jsDec) key() error {
	d.ws()
	if d.peek() != '"' {
		return d.err("expected a key")
	}
	if _, _, _, err := d.str(); err != nil {
		return err
	}
	d.ws()
	if !d.eat(':') {
		return d.err("expected ':'")
	}
	return nil
}

// ---- encoding ----

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way sonic writes it: '"',
// '\\' and control characters escaped (\t, \n and \r in short form, the rest
// as \u00xx), every other byte, non-ASCII and invalid UTF-8 included, as is.
func appendJSONString[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if jsonPlain[c] {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\t':
			dst = append(dst, '\\', 't')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// jsonKey appends `"key":`, preceded by a comma unless it is the first
// member written since offset first.
func jsonKey(dst []byte, first int, key string) []byte {
	if len(dst) > first {
		dst = append(dst, ',')
	}
	dst = append(dst, '"')
	dst = append(dst, key...)
	return append(dst, '"', ':')
}

func appendJSONSendAck(dst []byte, clientMsgID string, msgID, seq uint64, timeMs int64, duplicate bool) []byte {
	dst = append(dst, '{')
	first := len(dst)
	if clientMsgID != "" {
		dst = appendJSONString(jsonKey(dst, first, "client_msg_id"), clientMsgID)
	}
	if msgID != 0 {
		dst = strconv.AppendUint(jsonKey(dst, first, "msg_id"), msgID, 10)
	}
	if seq != 0 {
		dst = strconv.AppendUint(jsonKey(dst, first, "seq"), seq, 10)
	}
	if timeMs != 0 {
		dst = strconv.AppendInt(jsonKey(dst, first, "time"), timeMs, 10)
	}
	if duplicate {
		dst = append(jsonKey(dst, first, "duplicate"), "true"...)
	}
	return append(dst, '}')
}

func appendJSONHeartbeat(dst []byte, timeMs int64) []byte {
	if timeMs == 0 {
		return append(dst, '{', '}')
	}
	dst = strconv.AppendInt(append(dst, `{"time":`...), timeMs, 10)
	return append(dst, '}')
}

// appendJSONRest appends the members of pb.Message after "seq", without
// braces or a leading comma.
func (t *PushTemplate) appendJSONRest(dst []byte) ([]byte, int) {
	first := len(dst)
	if t.msgID != 0 {
		dst = strconv.AppendUint(jsonKey(dst, first, "msg_id"), t.msgID, 10)
	}
	for _, f := range [...]struct {
		key string
		v   []byte
	}{{"from", t.from}, {"to", t.to}, {"group_id", t.groupID}, {"client_msg_id", t.clientMsgID}} {
		if len(f.v) != 0 {
			dst = appendJSONString(jsonKey(dst, first, f.key), f.v)
		}
	}
	if t.kind != 0 {
		dst = strconv.AppendUint(jsonKey(dst, first, "kind"), uint64(t.kind), 10)
	}
	if len(t.body) != 0 {
		dst = append(jsonKey(dst, first, "body"), '"')
		dst = base64.StdEncoding.AppendEncode(dst, t.body)
		dst = append(dst, '"')
	}
	if t.time != 0 {
		dst = strconv.AppendInt(jsonKey(dst, first, "time"), t.time, 10)
	}
	return dst, 0
}

// appendJSONPush appends {"messages":[{"seq":N,<rest>}]}.
func appendJSONPush(dst []byte, seq uint64, rest []byte) []byte {
	dst = append(dst, `{"messages":[{`...)
	if seq != 0 {
		dst = strconv.AppendUint(append(dst, `"seq":`...), seq, 10)
		if len(rest) != 0 {
			dst = append(dst, ',')
		}
	}
	dst = append(dst, rest...)
	return append(dst, '}', ']', '}')
}
