package jsonstr

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// TestEscapeAgreesWithEncodingJSON decodes each escape as encoding/json
// decodes the string made of it.
func TestEscapeAgreesWithEncodingJSON(t *testing.T) {
	for _, esc := range []string{`\n`, `\t`, `\b`, `\f`, `\r`, `\"`, `\\`, `\/`, `\u0041`, `\u00e9`, `\uD83D\uDE00`, `\uD83D`, `\uDE00`, `\uD83D\u0041`, `\uFFFF`} {
		var want string
		if err := json.Unmarshal([]byte(`"`+esc+`"`), &want); err != nil {
			t.Fatal(err)
		}
		r, n := Escape([]byte(esc))
		if got := string(utf8.AppendRune(nil, r)); got != want[:len(got)] {
			t.Errorf("%s: rune %q, encoding/json %q", esc, got, want)
		}
		if n != len(esc) && !(esc == `\uD83D\u0041` && n == 6) {
			t.Errorf("%s: used %d bytes", esc, n)
		}
	}
	if HexVal('g') != -1 || Hex4([]byte("beef")) != 0xbeef {
		t.Fatal("hex digits")
	}
}
