package auth

import (
	"strconv"
	"unicode/utf8"

	"github.com/imgn/imgn/internal/jsonstr"
)

// maxDepth is the deepest nesting of arrays and objects a token's JSON may
// have, counting the top-level object; encoding/json refuses deeper input
// with the same limit.
const maxDepth = 10000

// scanner validates one JSON text in place, the way encoding/json's syntax
// check does, without allocating. It walks one top-level object member by
// member (openObject, nextMember, end) and lets the caller read or skip
// each value. Strings are returned raw (between the quotes, escapes
// undecoded); nextRune decodes them.
type scanner struct {
	b       []byte
	i       int
	depth   int // open arrays and objects
	members int // members of the top-level object read so far
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next byte, or 0 at the end.
func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// openObject reads the start of the top-level value: '{' (null false) or
// the literal null (null true). Anything else is not ok.
func (s *scanner) openObject() (null, ok bool) {
	s.ws()
	switch s.peek() {
	case '{':
		s.i++
		s.depth = 1
		return false, true
	case 'n':
		return true, s.lit("null")
	}
	return false, false
}

// nextMember reads up to the value of the next member of the top-level
// object and returns its raw key; done is true after the closing '}'.
func (s *scanner) nextMember() (key []byte, done, ok bool) {
	s.ws()
	switch c := s.peek(); {
	case c == '}':
		s.i++
		s.depth--
		return nil, true, true
	case s.members > 0 && c == ',':
		s.i++
		s.ws()
	case s.members > 0:
		return nil, false, false
	}
	if s.peek() != '"' {
		return nil, false, false
	}
	key, ok = s.str()
	if !ok {
		return nil, false, false
	}
	s.ws()
	if s.peek() != ':' {
		return nil, false, false
	}
	s.i++
	s.ws()
	s.members++
	return key, false, s.i < len(s.b)
}

// end reports whether only white space follows.
func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// lit reads the literal word (true, false or null).
func (s *scanner) lit(word string) bool {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return false
	}
	s.i += len(word)
	return true
}

// str reads the string at s.b[s.i] (a '"') and returns its raw body.
// Control characters must be escaped; bytes that are not UTF-8 are allowed
// (nextRune turns them into U+FFFD, as encoding/json does).
func (s *scanner) str() (raw []byte, ok bool) {
	start := s.i + 1
	for i := start; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			s.i = i + 1
			return s.b[start:i], true
		case c == '\\':
			i++
			if i >= len(s.b) {
				return nil, false
			}
			switch s.b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(s.b)-i <= 4 {
					return nil, false
				}
				for _, h := range s.b[i+1 : i+5] {
					if jsonstr.HexVal(h) < 0 {
						return nil, false
					}
				}
				i += 4
			default:
				return nil, false
			}
		case c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// num reads a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func (s *scanner) num() (lit []byte, ok bool) {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch j := digits(b, i); {
	case i < len(b) && b[i] == '0':
		i++
	case j == i:
		return nil, false
	default:
		i = j
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return nil, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return nil, false
		}
		i = j
	}
	lit, s.i = b[s.i:i], i
	return lit, true
}

// digits returns the index after the run of ASCII digits at b[i:].
func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// isNumber reports whether b is exactly one JSON number.
func isNumber(b []byte) bool {
	t := scanner{b: b}
	_, ok := t.num()
	return ok && t.i == len(b)
}

// parseFloat converts a JSON number as encoding/json does for a float64 or
// a json.Number's Float64: out of range is an error.
func parseFloat(lit []byte) (float64, bool) {
	f, err := strconv.ParseFloat(string(lit), 64)
	return f, err == nil
}

// scalar reads a string, number or literal. With checkNums a number must
// also fit a float64, as it must where encoding/json decodes it into an
// interface value.
func (s *scanner) scalar(checkNums bool) bool {
	switch c := s.peek(); {
	case c == '"':
		_, ok := s.str()
		return ok
	case c == 't':
		return s.lit("true")
	case c == 'f':
		return s.lit("false")
	case c == 'n':
		return s.lit("null")
	case c == '-' || c >= '0' && c <= '9':
		lit, ok := s.num()
		if ok && checkNums {
			_, ok = parseFloat(lit)
		}
		return ok
	}
	return false
}

// value reads any value.
func (s *scanner) value(checkNums bool) bool {
	if c := s.peek(); c == '{' || c == '[' {
		return s.container(checkNums)
	}
	return s.scalar(checkNums)
}

// container reads the array or object at s.b[s.i] with everything nested
// in it. It keeps the kinds of the open containers in a bit stack rather
// than recursing, so hostile nesting costs neither stack growth nor heap.
func (s *scanner) container(checkNums bool) bool {
	const (
		wantFirst = iota // just opened: a member or the closer
		wantKey          // after ',' in an object
		wantValue        // after ':', after ',' in an array, or on entry
		wantNext         // after a member: ',' or the closer
	)
	var objs [maxDepth/64 + 1]uint64 // bit d: container d is an object
	d := 0                           // containers opened here and not closed
	for st := wantValue; ; {
		s.ws()
		if s.i >= len(s.b) {
			return false
		}
		c := s.b[s.i]
		obj := d > 0 && objs[(d-1)/64]&(1<<((d-1)%64)) != 0
		switch st {
		case wantFirst, wantNext:
			if obj && c == '}' || !obj && c == ']' {
				s.i++
				d--
				s.depth--
				if d == 0 {
					return true
				}
				st = wantNext
				continue
			}
			if st == wantNext {
				if c != ',' {
					return false
				}
				s.i++
			}
			if st = wantValue; obj {
				st = wantKey
			}
		case wantKey:
			if c != '"' {
				return false
			}
			if _, ok := s.str(); !ok {
				return false
			}
			s.ws()
			if s.peek() != ':' {
				return false
			}
			s.i++
			st = wantValue
		case wantValue:
			if c == '{' || c == '[' {
				if s.depth >= maxDepth {
					return false
				}
				if c == '{' {
					objs[d/64] |= 1 << (d % 64)
				} else {
					objs[d/64] &^= 1 << (d % 64)
				}
				d++
				s.depth++
				s.i++
				st = wantFirst
				continue
			}
			if !s.scalar(checkNums) {
				return false
			}
			st = wantNext
		}
	}
}

// nextRune decodes the rune at raw[i:], a string body str accepted, and
// returns it with the index after it. It decodes as encoding/json does: a
// UTF-16 surrogate pair of \u escapes is one rune, a lone surrogate and a
// byte that is not UTF-8 are U+FFFD.
func nextRune(raw []byte, i int) (rune, int) {
	c := raw[i]
	if c != '\\' {
		if c < utf8.RuneSelf {
			return rune(c), i + 1
		}
		r, n := utf8.DecodeRune(raw[i:])
		return r, i + n
	}
	r, n := jsonstr.Escape(raw[i:])
	return r, i + n
}

// strEq reports whether the raw string body decodes to want, which must be
// ASCII.
func strEq(raw []byte, want string) bool {
	j := 0
	for i := 0; i < len(raw); j++ {
		var r rune
		r, i = nextRune(raw, i)
		if j >= len(want) || r != rune(want[j]) {
			return false
		}
	}
	return j == len(want)
}

// nameEq reports whether the raw key decodes to name (lower-case ASCII
// letters) under Unicode simple case folding, the rule encoding/json uses
// to match a key to a struct field.
func nameEq(raw []byte, name string) bool {
	j := 0
	for i := 0; i < len(raw); j++ {
		var r rune
		r, i = nextRune(raw, i)
		if j >= len(name) || !foldsTo(r, name[j]) {
			return false
		}
	}
	return j == len(name)
}

// foldsTo reports whether r is the lower-case ASCII letter c under simple
// folding: c itself, its upper case, and for s and k the two runes outside
// ASCII that fold to them (U+017F long s, U+212A Kelvin sign).
func foldsTo(r rune, c byte) bool {
	switch {
	case r == rune(c):
		return true
	case r >= 'A' && r <= 'Z':
		return r+('a'-'A') == rune(c)
	case r == 0x17F:
		return c == 's'
	case r == 0x212A:
		return c == 'k'
	}
	return false
}

// asciiInto decodes the raw string body into dst; it fails if the string
// holds a rune outside ASCII or does not fit. An ASCII result is never
// longer than raw.
func asciiInto(raw, dst []byte) (int, bool) {
	n := 0
	for i := 0; i < len(raw); n++ {
		var r rune
		r, i = nextRune(raw, i)
		if r >= utf8.RuneSelf || n >= len(dst) {
			return 0, false
		}
		dst[n] = byte(r)
	}
	return n, true
}
