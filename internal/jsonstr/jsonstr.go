// Package jsonstr decodes the escapes of JSON strings (RFC 8259) the way
// encoding/json does, for the project's two hand-written JSON scanners (the
// codec's fast decoder and auth's token claims). It imports nothing from
// the project.
package jsonstr

import (
	"unicode/utf16"
	"unicode/utf8"
)

// Escape decodes the escape at the start of raw (raw[0] == '\\'), which a
// scanner has already checked is well formed: a known escape letter, and
// four hex digits after \u. It returns the rune and the bytes it used. A
// UTF-16 surrogate pair of \u escapes is one rune; a lone or mismatched
// surrogate is U+FFFD.
func Escape(raw []byte) (rune, int) {
	switch raw[1] {
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case 'n':
		return '\n', 2
	case 'r':
		return '\r', 2
	case 't':
		return '\t', 2
	case 'u':
		r := Hex4(raw[2:])
		if !utf16.IsSurrogate(r) {
			return r, 6
		}
		if len(raw) >= 12 && raw[6] == '\\' && raw[7] == 'u' {
			if dec := utf16.DecodeRune(r, Hex4(raw[8:])); dec != utf8.RuneError {
				return dec, 12
			}
		}
		return utf8.RuneError, 6
	}
	return rune(raw[1]), 2 // '"', '\\' or '/'
}

// Hex4 decodes four hex digits (checked by the caller).
func Hex4(b []byte) rune {
	return HexVal(b[0])<<12 | HexVal(b[1])<<8 | HexVal(b[2])<<4 | HexVal(b[3])
}

// HexVal returns the value of a hex digit, or -1.
func HexVal(c byte) rune {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0')
	case c >= 'a' && c <= 'f':
		return rune(c - 'a' + 10)
	case c >= 'A' && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}
