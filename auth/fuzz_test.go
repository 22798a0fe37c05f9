package auth

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

// FuzzVerifyToken signs fuzzed header and claims JSON with the secret and
// checks that VerifyToken reaches golang-jwt's verdict (accept with the
// same sub, expired, or invalid) at a fuzzed instant near testNow.
//
// One range is left out of the comparison: an exp or nbf of 1e18 seconds or
// more in magnitude, where golang-jwt's float-to-int64 conversion
// overflows and its verdict depends on the CPU. VerifyToken treats such an
// exp as far future or far past, as its value says.
func FuzzVerifyToken(f *testing.F) {
	for _, seed := range [][2]string{
		{hs256, claimsAt(3600)},
		{hs256, claimsAt(-5)},
		{`{"alg":"HS256"}`, `{"sub":"alice","exp":"1700000004","nbf":1700000005.5}`},
		{`{"alg":"none"}`, claimsAt(60)},
		{`{"alg":"HS256","alg":"HS384"}`, claimsAt(60)},
		{`{"\u0061lg":"HS256","x":[1e400]}`, claimsAt(60)},
		{hs256, `{"SUB":"a","ſub":"b","exp":1.7e9,"aud":["x"],"iss":null}`},
		{hs256, `{"sub":"\u0062ob","exp":1800000000,"iat":"1","jti":"j","x":{"y":[[]]}}`},
		{hs256, `null`},
		{hs256, `{"sub":"alice","sub":null,"exp":null}`},
	} {
		f.Add(seed[0], seed[1], int32(0))
		f.Add(seed[0], seed[1], int32(500))
	}
	f.Fuzz(func(t *testing.T, header, claims string, skewMillis int32) {
		if extremeTime(claims) {
			t.Skip("exp or nbf beyond 1e18 s: golang-jwt overflows")
		}
		now := testNow.Add(time.Duration(skewMillis) * time.Millisecond)
		compare(t, testSecret, signed(testSecret, header, claims), now)
	})
}

// FuzzVerifyRawToken feeds arbitrary strings as tokens: no panic, the same
// verdict as golang-jwt, and UnverifiedSubject returns a valid id or "".
func FuzzVerifyRawToken(f *testing.F) {
	f.Add(signed(testSecret, hs256, claimsAt(60)))
	f.Add("eyJhbGciOiJIUzI1NiJ9.e30.")
	f.Add("a.b.c")
	f.Add("..")
	f.Add("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0=.x")
	f.Fuzz(func(t *testing.T, token string) {
		compare(t, testSecret, token, testNow)
		if sub := UnverifiedSubject(token); sub != "" && !ValidID(sub) {
			t.Fatalf("UnverifiedSubject(%q) = %q, not a valid id", token, sub)
		}
	})
}

// extremeTime reports whether the claims, read by encoding/json as
// golang-jwt reads them, end with an exp or nbf of magnitude 1e18 or more.
func extremeTime(claims string) bool {
	var c struct{ Exp, Nbf json.RawMessage }
	if json.Unmarshal([]byte(claims), &c) != nil {
		return false
	}
	for _, raw := range []json.RawMessage{c.Exp, c.Nbf} {
		var n json.Number
		if json.Unmarshal(raw, &n) != nil {
			continue
		}
		if v, err := n.Float64(); err == nil && math.Abs(v) >= 1e18 {
			return true
		}
	}
	return false
}
