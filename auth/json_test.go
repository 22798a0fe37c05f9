package auth

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// validObject reports whether the scanner accepts b as one JSON value that
// is an object (or null), skipping every member.
func validObject(b []byte) bool {
	s := scanner{b: b}
	null, ok := s.openObject()
	if !ok {
		return false
	}
	for !null {
		_, done, ok := s.nextMember()
		if !ok {
			return false
		}
		if done {
			break
		}
		if !s.value(false) {
			return false
		}
	}
	return s.end()
}

// isObjectOrNull is the encoding/json side of validObject.
func isObjectOrNull(b []byte) bool {
	if !json.Valid(b) {
		return false
	}
	var v any
	_ = json.Unmarshal(b, &v)
	_, obj := v.(map[string]any)
	return obj || v == nil
}

var jsonCorpus = []string{
	`{}`, `null`, ` { } `, `{"a":1}`, `{"a":[1,2,{"b":null}],"c":"d"}`, `{"a":-0.5e+10,"b":true,"c":false}`,
	`{"a":"\u00e9\ud83d\ude00\n\t\"\\\/"}`, "{\"a\":\"\xff\"}", `{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":-}`,
	`{"a":1e}`, `{"a":1e+}`, `{"a":+1}`, `{"a":[1,]}`, `{"a":[,1]}`, `{"a":{"b":1,}}`, `{,}`, `{"a"}`, `{"a":}`,
	`{"a" 1}`, `{"a":1 "b":2}`, `{"a":tru}`, `{"a":nul}`, `{"a":"\u12"}`, `{"a":"\uZZZZ"}`, `{"a":"\q"}`,
	"{\"a\":\"\x01\"}", `{"a":"`, `{"a":[`, `{"a":{`, `[`, `]`, `{]`, `{"a":[}]}`, `{"a":{]}`, `{"a":[[[]]]}`,
	`{"a":1}x`, `{"a":1}{}`, `[]`, `"s"`, `1`, `true`, ``, ` `, "\ufeff{}", `{"a":1}` + "\n\t\r ", `{"":""}`,
	`{"a":[{"b":[{"c":[]}]}]}`, `{"a":-01}`, `{"a":-0}`, `{"a":0e0}`, `{"a":1E-7}`, `{"a":"\/"}`, `nulll`,
	`{"a":[1 2]}`, `{"a":{"b" "c"}}`, `{"a":"\u0000"}`, "{\"a\"\t:\n1\r}",
}

func TestScannerMatchesEncodingJSON(t *testing.T) {
	for _, s := range jsonCorpus {
		if got, want := validObject([]byte(s)), isObjectOrNull([]byte(s)); got != want {
			t.Errorf("%q: scanner says %v, encoding/json %v", s, got, want)
		}
	}
	for _, depth := range []int{9998, 9999, 10000} {
		s := `{"a":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
		if got, want := validObject([]byte(s)), isObjectOrNull([]byte(s)); got != want || got != (depth < 10000) {
			t.Errorf("depth %d: scanner says %v, encoding/json %v", depth+1, got, want)
		}
	}
}

// TestNextRuneMatchesEncodingJSON: strings decode as encoding/json
// decodes them, including surrogates and bytes that are not UTF-8.
func TestNextRuneMatchesEncodingJSON(t *testing.T) {
	for _, body := range []string{
		`plain`, `\u00e9`, `\ud83d\ude00`, `\ud83d`, `\ud83dx`, `\ude00\ud83d`, `\ud83d\u0041`, `\ud83d\ud83d\ude00`,
		"\xff\xfe", "\xe2\x82", `\"\\\/\b\f\n\r\t`, `é€😀`, `\uD83D\uDE00`, `\u0000`, "a\xc0\x80b",
	} {
		var want string
		if err := json.Unmarshal([]byte(`"`+body+`"`), &want); err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		var got []rune
		raw := []byte(body)
		for i := 0; i < len(raw); {
			var r rune
			r, i = nextRune(raw, i)
			got = append(got, r)
		}
		if string(got) != want {
			t.Errorf("%q: decoded %q, encoding/json %q", body, string(got), want)
		}
		if ascii := utf8.RuneCountInString(want) == len(want); ascii && !strEq(raw, want) {
			t.Errorf("strEq(%q, %q) = false", body, want)
		}
	}
}

// TestNameEqIsEqualFold: keys match claim names exactly when
// strings.EqualFold (the rule encoding/json uses for struct fields) says.
func TestNameEqIsEqualFold(t *testing.T) {
	alphabet := []string{"s", "S", "ſ", "u", "U", "b", "B", "e", "x", "X", "p", "k", "K", "K", "i", "I", "İ", "ı", "a", "t", "\xff", "é"}
	var keys []string
	for _, a := range alphabet {
		for _, b := range alphabet {
			for _, c := range alphabet {
				keys = append(keys, a+b+c)
			}
			keys = append(keys, a+b)
		}
	}
	keys = append(keys, "subx", "su", "", "kid")
	for _, name := range append(claimNames[:], "kkk", "alg") {
		for _, key := range keys {
			if got, want := nameEq([]byte(key), name), strings.EqualFold(key, name); got != want {
				t.Errorf("nameEq(%q, %q) = %v, EqualFold %v", key, name, got, want)
			}
		}
	}
}
