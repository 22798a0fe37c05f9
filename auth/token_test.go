package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	testSecret = []byte("test-secret")
	// testNow is the verifier's clock in the table tests.
	testNow = time.Unix(1_700_000_000, 0)
)

const hs256 = `{"alg":"HS256","typ":"JWT"}`

// claimsAt returns claims JSON with sub alice and exp = testNow + d seconds.
func claimsAt(d int) string {
	return fmt.Sprintf(`{"sub":"alice","exp":%d}`, testNow.Unix()+int64(d))
}

func TestMintTokenIsGolangJWTBytes(t *testing.T) {
	for _, now := range []time.Time{testNow, time.Unix(1_700_000_000, 999_999_999), time.Now()} {
		for _, ttl := range []time.Duration{time.Hour, -time.Minute, 1500 * time.Millisecond, 0} {
			for _, secret := range [][]byte{testSecret, []byte(strings.Repeat("k", 64)), []byte(strings.Repeat("long", 50))} {
				got, err := MintTokenAt(secret, "alice.B_-9", now, ttl)
				if err != nil {
					t.Fatal(err)
				}
				want, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
					Subject: "alice.B_-9", IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
				}).SignedString(secret)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Fatalf("now %v ttl %v:\n got  %s\n want %s", now, ttl, got, want)
				}
			}
		}
	}
}

func TestMintTokenVerifies(t *testing.T) {
	tok, err := MintToken(testSecret, "alice", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if sub, err := VerifyToken(testSecret, tok, time.Now()); err != nil || sub != "alice" {
		t.Fatalf("%q %v", sub, err)
	}
	if _, err := VerifyToken([]byte("other"), tok, time.Now()); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("wrong secret: %v", err)
	}
	expired, err := MintToken(testSecret, "alice", -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyToken(testSecret, expired, time.Now()); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}
}

func TestMintTokenErrors(t *testing.T) {
	if _, err := MintToken(nil, "alice", time.Minute); err == nil || !strings.Contains(err.Error(), "empty secret") {
		t.Fatalf("empty secret: %v", err)
	}
	for _, user := range []string{"", "bad user", strings.Repeat("a", 65), "é", `a"b`} {
		if _, err := MintToken(testSecret, user, time.Minute); err == nil || !strings.Contains(err.Error(), "invalid user id") {
			t.Fatalf("user %q: %v", user, err)
		}
	}
}

// TestGolangJWTTokensVerify: what other issuers mint with golang-jwt
// (extra registered and private claims, any secret length) verifies with
// the same subject.
func TestGolangJWTTokensVerify(t *testing.T) {
	exp := jwt.NewNumericDate(testNow.Add(time.Hour))
	for _, secret := range [][]byte{[]byte("k"), []byte(strings.Repeat("s", 64)), []byte(strings.Repeat("s", 65)), make([]byte, 300)} {
		for i, c := range []jwt.Claims{
			jwt.RegisteredClaims{Subject: "alice", ExpiresAt: exp},
			jwt.RegisteredClaims{Subject: "bob", ExpiresAt: exp, IssuedAt: jwt.NewNumericDate(testNow), NotBefore: jwt.NewNumericDate(testNow),
				Issuer: "auth.example", Audience: jwt.ClaimStrings{"imgn", "other"}, ID: "j-1"},
			jwt.MapClaims{"sub": "carol", "exp": testNow.Unix() + 60, "roles": []string{"a", "b"}, "meta": map[string]any{"n": 1.5, "x": nil}},
			jwt.MapClaims{"sub": "dave", "exp": float64(testNow.Unix()) + 0.75, "aud": "imgn"},
		} {
			tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
			if err != nil {
				t.Fatal(err)
			}
			if v := compare(t, secret, tok, testNow); !strings.HasPrefix(v, "ok ") {
				t.Fatalf("claims %d secret %d bytes: %s", i, len(secret), v)
			}
		}
	}
}

// TestVerifyCases runs every malformed case the golang-jwt path rejects,
// and the odd ones it accepts, through both verifiers: the verdicts must
// match each other and the table.
func TestVerifyCases(t *testing.T) {
	enc := base64.RawURLEncoding
	good := signed(testSecret, hs256, claimsAt(3600))
	parts := strings.Split(good, ".")
	mintWith := func(m jwt.SigningMethod, key any) string {
		tok, err := jwt.NewWithClaims(m, jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(testNow.Add(time.Hour))}).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	// A payload whose encoding needs padding and has '-' or '_', for the
	// padded and standard-alphabet cases.
	odd := `{"sub":"alice","exp":` + fmt.Sprint(testNow.Unix()+3600) + `,"x":"??>>~"}`
	if len(odd)%3 == 0 || !strings.ContainsAny(enc.EncodeToString([]byte(odd)), "-_") {
		t.Fatalf("test payload %q does not exercise padding and the URL alphabet", odd)
	}
	oddIn := enc.EncodeToString([]byte(hs256)) + "." + enc.EncodeToString([]byte(odd))
	padded := enc.EncodeToString([]byte(hs256)) + "." + base64.URLEncoding.EncodeToString([]byte(odd))
	stdAlpha := enc.EncodeToString([]byte(hs256)) + "." + base64.RawStdEncoding.EncodeToString([]byte(odd))
	deep := func(n int) string {
		return `{"sub":"alice","exp":` + fmt.Sprint(testNow.Unix()+60) + `,"x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`
	}
	withNL := parts[0] + "." + parts[1][:10] + "\n" + parts[1][10:]

	type tc struct {
		name, token, want string
	}
	cases := []tc{
		{"good", good, "ok alice"},
		{"golang-jwt HS256", mintWith(jwt.SigningMethodHS256, testSecret), "ok alice"},
		// Algorithms.
		{"alg none unsigned", enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".", "invalid"},
		{"alg none signed", signed(testSecret, `{"alg":"none","typ":"JWT"}`, claimsAt(3600)), "invalid"},
		{"HS384", mintWith(jwt.SigningMethodHS384, testSecret), "invalid"},
		{"HS512", mintWith(jwt.SigningMethodHS512, testSecret), "invalid"},
		{"RS256", mintWith(jwt.SigningMethodRS256, rsaKey), "invalid"},
		{"RS256 header, HMAC signature", signed(testSecret, `{"alg":"RS256","typ":"JWT"}`, claimsAt(3600)), "invalid"},
		{"alg lower case", signed(testSecret, `{"alg":"hs256"}`, claimsAt(3600)), "invalid"},
		{"alg key upper case", signed(testSecret, `{"ALG":"HS256"}`, claimsAt(3600)), "invalid"},
		{"alg missing", signed(testSecret, `{"typ":"JWT"}`, claimsAt(3600)), "invalid"},
		{"alg a number", signed(testSecret, `{"alg":256}`, claimsAt(3600)), "invalid"},
		{"alg only", signed(testSecret, `{"alg":"HS256"}`, claimsAt(3600)), "ok alice"},
		{"typ first", signed(testSecret, `{"typ":"JWT","alg":"HS256"}`, claimsAt(3600)), "ok alice"},
		{"extra header members", signed(testSecret, `{ "kid" : "k1", "alg":"HS256", "typ":"at+jwt", "x":[1,{"y":null}] }`, claimsAt(3600)), "ok alice"},
		{"alg escaped", signed(testSecret, `{"\u0061lg":"HS\u0032\u0035\u0036"}`, claimsAt(3600)), "ok alice"},
		{"alg twice, last HS256", signed(testSecret, `{"alg":"none","alg":"HS256"}`, claimsAt(3600)), "ok alice"},
		{"alg twice, last none", signed(testSecret, `{"alg":"HS256","alg":"none"}`, claimsAt(3600)), "invalid"},
		{"alg twice, last a number", signed(testSecret, `{"alg":"HS256","alg":1}`, claimsAt(3600)), "invalid"},
		{"header number out of range", signed(testSecret, `{"alg":"HS256","n":1e400}`, claimsAt(3600)), "invalid"},
		{"header null", signed(testSecret, `null`, claimsAt(3600)), "invalid"},
		{"header an array", signed(testSecret, `["HS256"]`, claimsAt(3600)), "invalid"},
		{"header not JSON", signed(testSecret, `{alg:HS256}`, claimsAt(3600)), "invalid"},
		{"header trailing garbage", signed(testSecret, hs256+`x`, claimsAt(3600)), "invalid"},
		{"header empty", signed(testSecret, ``, claimsAt(3600)), "invalid"},
		// Signatures.
		{"wrong secret", signed([]byte("other"), hs256, claimsAt(3600)), "invalid"},
		{"signature flipped", parts[0] + "." + parts[1] + "." + flip(parts[2]), "invalid"},
		{"signature empty", parts[0] + "." + parts[1] + ".", "invalid"},
		{"signature truncated", parts[0] + "." + parts[1] + "." + parts[2][:40], "invalid"},
		{"signature too long", parts[0] + "." + parts[1] + "." + parts[2] + "AAAA", "invalid"},
		{"signature of another payload", parts[0] + "." + enc.EncodeToString([]byte(claimsAt(7200))) + "." + parts[2], "invalid"},
		// Structure and encoding.
		{"empty", "", "invalid"},
		{"dots only", "..", "invalid"},
		{"one segment", parts[0], "invalid"},
		{"two segments", parts[0] + "." + parts[1], "invalid"},
		{"four segments", good + "." + parts[2], "invalid"},
		{"truncated", good[:len(good)/2], "invalid"},
		{"bad base64 in header", "*" + good[1:], "invalid"},
		{"bad base64 in claims", parts[0] + ".e!" + parts[1][2:] + "." + parts[2], "invalid"},
		{"bad base64 in signature", parts[0] + "." + parts[1] + "." + parts[2][:42] + "*", "invalid"},
		{"url alphabet, unpadded", oddIn + "." + macOf(testSecret, oddIn), "ok alice"},
		{"padding in claims", padded + "." + macOf(testSecret, padded), "invalid"},
		{"padding in signature", oddIn + "." + base64.URLEncoding.EncodeToString(mustMAC(testSecret, oddIn)), "invalid"},
		{"padding in header", base64.URLEncoding.EncodeToString([]byte(`{"alg":"HS256"}`)) + "." + parts[1] + ".x", "invalid"},
		{"standard alphabet", stdAlpha + "." + macOf(testSecret, stdAlpha), "invalid"},
		{"newline inside a segment (the decoder skips it)", withNL + "." + macOf(testSecret, withNL), "ok alice"},
		// exp.
		{"exp missing", signed(testSecret, hs256, `{"sub":"alice"}`), "expired"},
		{"exp null", signed(testSecret, hs256, `{"sub":"alice","exp":null}`), "expired"},
		{"exp an hour ago", signed(testSecret, hs256, claimsAt(-3600)), "expired"},
		{"exp now-5 (leeway used up)", signed(testSecret, hs256, claimsAt(-5)), "expired"},
		{"exp now-4 (within leeway)", signed(testSecret, hs256, claimsAt(-4)), "ok alice"},
		{"exp now-4.5 (floored to now-5)", signed(testSecret, hs256, `{"sub":"alice","exp":1699999995.5}`), "expired"},
		{"exp fractional future", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600.25}`), "ok alice"},
		{"exp with exponent", signed(testSecret, hs256, `{"sub":"alice","exp":1.7000036e9}`), "ok alice"},
		{"exp as a numeric string", signed(testSecret, hs256, `{"sub":"alice","exp":"1700003600"}`), "ok alice"},
		{"exp as an escaped numeric string", signed(testSecret, hs256, `{"sub":"alice","exp":"17000036\u0030\u0030"}`), "ok alice"},
		{"exp as a past numeric string", signed(testSecret, hs256, `{"sub":"alice","exp":"1600000000"}`), "expired"},
		{"exp as a word", signed(testSecret, hs256, `{"sub":"alice","exp":"soon"}`), "invalid"},
		{"exp as an empty string", signed(testSecret, hs256, `{"sub":"alice","exp":""}`), "invalid"},
		{"exp as a string with spaces", signed(testSecret, hs256, `{"sub":"alice","exp":" 1700003600"}`), "invalid"},
		{"exp true", signed(testSecret, hs256, `{"sub":"alice","exp":true}`), "invalid"},
		{"exp an object", signed(testSecret, hs256, `{"sub":"alice","exp":{"t":1}}`), "invalid"},
		{"exp an array", signed(testSecret, hs256, `{"sub":"alice","exp":[1700003600]}`), "invalid"},
		{"exp out of float range", signed(testSecret, hs256, `{"sub":"alice","exp":1e400}`), "invalid"},
		{"exp leading zero", signed(testSecret, hs256, `{"sub":"alice","exp":01700003600}`), "invalid"},
		{"exp negative", signed(testSecret, hs256, `{"sub":"alice","exp":-1}`), "expired"},
		{"exp far future", signed(testSecret, hs256, `{"sub":"alice","exp":1e17}`), "ok alice"},
		{"Exp key", signed(testSecret, hs256, `{"sub":"alice","EXP":1700003600}`), "ok alice"},
		{"exp twice, last past", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"exp":1}`), "expired"},
		{"exp twice, last null", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"exp":null}`), "expired"},
		{"exp twice, first a word", signed(testSecret, hs256, `{"sub":"alice","exp":"x","exp":1700003600}`), "invalid"},
		// nbf.
		{"nbf past", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"nbf":1699990000}`), "ok alice"},
		{"nbf an hour ahead", signed(testSecret, hs256, `{"sub":"alice","exp":1700007200,"nbf":1700003600}`), "invalid"},
		{"nbf now+5 (within leeway)", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"nbf":1700000005}`), "ok alice"},
		{"nbf now+5.9 (floored)", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"nbf":1700000005.9}`), "ok alice"},
		{"nbf now+6", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"nbf":1700000006}`), "invalid"},
		{"nbf as a string", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"nbf":"1700003600"}`), "invalid"},
		{"nbf null", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"nbf":null}`), "ok alice"},
		{"nbf a word", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"nbf":"x"}`), "invalid"},
		{"nbf future and exp past", signed(testSecret, hs256, `{"sub":"alice","exp":1,"nbf":1800000000}`), "expired"},
		{"nbf future and exp missing", signed(testSecret, hs256, `{"sub":"alice","nbf":1800000000}`), "expired"},
		// sub.
		{"sub missing", signed(testSecret, hs256, `{"exp":1700003600}`), "invalid"},
		{"sub null", signed(testSecret, hs256, `{"sub":null,"exp":1700003600}`), "invalid"},
		{"sub a number", signed(testSecret, hs256, `{"sub":42,"exp":1700003600}`), "invalid"},
		{"sub an array", signed(testSecret, hs256, `{"sub":["alice"],"exp":1700003600}`), "invalid"},
		{"sub empty", signed(testSecret, hs256, `{"sub":"","exp":1700003600}`), "invalid"},
		{"sub with a space", signed(testSecret, hs256, `{"sub":"al ice","exp":1700003600}`), "invalid"},
		{"sub 64 bytes", signed(testSecret, hs256, `{"sub":"`+strings.Repeat("a", 64)+`","exp":1700003600}`), "ok " + strings.Repeat("a", 64)},
		{"sub 65 bytes", signed(testSecret, hs256, `{"sub":"`+strings.Repeat("a", 65)+`","exp":1700003600}`), "invalid"},
		{"sub not ASCII", signed(testSecret, hs256, `{"sub":"alicé","exp":1700003600}`), "invalid"},
		{"sub not UTF-8", signed(testSecret, hs256, "{\"sub\":\"ali\xffce\",\"exp\":1700003600}"), "invalid"},
		{"sub escaped", signed(testSecret, hs256, `{"sub":"\u0061lice","exp":1700003600}`), "ok alice"},
		{"sub escaped slash", signed(testSecret, hs256, `{"sub":"a\/b","exp":1700003600}`), "invalid"},
		{"SUB key", signed(testSecret, hs256, `{"SUB":"alice","exp":1700003600}`), "ok alice"},
		{"long-s key (folds to sub)", signed(testSecret, hs256, `{"ſub":"alice","exp":1700003600}`), "ok alice"},
		{"escaped long-s key", signed(testSecret, hs256, `{"\u017fub":"alice","exp":1700003600}`), "ok alice"},
		{"sub twice, last wins", signed(testSecret, hs256, `{"sub":"alice","sub":"bob","exp":1700003600}`), "ok bob"},
		{"sub then Sub", signed(testSecret, hs256, `{"sub":"alice","Sub":"bob","exp":1700003600}`), "ok bob"},
		{"sub then null keeps sub", signed(testSecret, hs256, `{"sub":"alice","sub":null,"exp":1700003600}`), "ok alice"},
		{"sub then a number", signed(testSecret, hs256, `{"sub":"alice","sub":1,"exp":1700003600}`), "invalid"},
		{"sub invalid then valid", signed(testSecret, hs256, `{"sub":"a b","sub":"alice","exp":1700003600}`), "ok alice"},
		// Claims shape and the other registered claims.
		{"claims null", signed(testSecret, hs256, `null`), "expired"},
		{"claims an array", signed(testSecret, hs256, `[{"sub":"alice","exp":1700003600}]`), "invalid"},
		{"claims a string", signed(testSecret, hs256, `"alice"`), "invalid"},
		{"claims a number", signed(testSecret, hs256, `1700003600`), "invalid"},
		{"claims true", signed(testSecret, hs256, `true`), "invalid"},
		{"claims empty object", signed(testSecret, hs256, `{}`), "expired"},
		{"claims empty", signed(testSecret, hs256, ``), "invalid"},
		{"claims not JSON", signed(testSecret, hs256, `{sub:alice}`), "invalid"},
		{"claims trailing comma", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,}`), "invalid"},
		{"claims trailing garbage", signed(testSecret, hs256, claimsAt(60)+`}`), "invalid"},
		{"claims two objects", signed(testSecret, hs256, claimsAt(60)+claimsAt(60)), "invalid"},
		{"claims white space", signed(testSecret, hs256, " \t\r\n{ \"sub\" : \"alice\" ,\n\"exp\" : 1700003600 } \n"), "ok alice"},
		{"claims control character in a string", signed(testSecret, hs256, "{\"sub\":\"alice\",\"exp\":1700003600,\"x\":\"a\tb\"}"), "invalid"},
		{"claims bad escape", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"x":"\x"}`), "invalid"},
		{"claims lone surrogate", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"x":"\ud800"}`), "ok alice"},
		{"iss a number", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"iss":1}`), "invalid"},
		{"iss null", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"iss":null}`), "ok alice"},
		{"jti an object", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"jti":{}}`), "invalid"},
		{"aud a string", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"aud":"imgn"}`), "ok alice"},
		{"aud strings", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"aud":[ "a" , "b" ]}`), "ok alice"},
		{"aud empty array", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"aud":[]}`), "ok alice"},
		{"aud a number", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"aud":1}`), "invalid"},
		{"aud array with a number", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"aud":["a",1]}`), "invalid"},
		{"aud array with null", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"aud":[null]}`), "invalid"},
		{"iat a word", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"iat":"x"}`), "invalid"},
		{"iat in the future", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"iat":1800000000}`), "ok alice"},
		{"iat out of float range", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"iat":-1e999}`), "invalid"},
		{"private claims", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"roles":["x"],"n":1e999,"o":{"a":[true,false,null,-0.5e-3]}}`), "ok alice"},
		{"nesting 10000 deep", signed(testSecret, hs256, deep(9999)), "ok alice"},
		{"nesting 10001 deep", signed(testSecret, hs256, deep(10000)), "invalid"},
		{"unclosed nesting", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"x":[[{"a":1}]}`), "invalid"},
		{"mismatched brackets", signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"x":[}]}`), "invalid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := compare(t, testSecret, c.token, testNow); got != c.want {
				t.Fatalf("verdict %s, want %s", got, c.want)
			}
			// Half a second later the boundaries hold (exp and nbf are
			// floored to the second; now is not).
			compare(t, testSecret, c.token, testNow.Add(500*time.Millisecond))
		})
	}
}

func flip(s string) string {
	b := []byte(s)
	if b[3] == 'A' {
		b[3] = 'B'
	} else {
		b[3] = 'A'
	}
	return string(b)
}

func mustMAC(secret []byte, in string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(in))
	return m.Sum(nil)
}

func TestVerifyTokenErrors(t *testing.T) {
	good := signed(testSecret, hs256, claimsAt(60))
	if _, err := VerifyToken(nil, good, testNow); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("empty secret: %v", err)
	}
	// The reason follows the sentinel's text, for the LOGIN reply.
	_, err := VerifyToken([]byte("other"), good, testNow)
	if err == nil || err.Error() != "token invalid: signature does not verify" {
		t.Fatalf("wrong secret: %v", err)
	}
	_, err = VerifyToken(testSecret, signed(testSecret, hs256, claimsAt(-60)), testNow)
	if !errors.Is(err, ErrTokenExpired) || !strings.HasPrefix(err.Error(), "token expired or without exp: ") {
		t.Fatalf("expired: %v", err)
	}
}

func TestVerifyTokenAllocs(t *testing.T) {
	good := signed(testSecret, hs256, `{"sub":"alice","exp":1700003600,"iat":1700000000,"aud":["imgn"],"roles":{"admin":false}}`)
	slow := signed(testSecret, `{"kid":"key-1","alg":"HS256"}`, `{"sub":"\u0061lice","exp":"1700003600.5","nbf":1699990000}`)
	longKey := []byte(strings.Repeat("k", 100))
	long := signed(longKey, hs256, `{"sub":"alice","exp":1700003600,"pad":"`+strings.Repeat("p", 400)+`"}`)
	for _, tok := range []string{good, slow, long} {
		secret := testSecret
		if tok == long {
			secret = longKey
		}
		if sub, err := VerifyToken(secret, tok, testNow); err != nil || sub != "alice" {
			t.Fatalf("%q %v", sub, err)
		}
		if n := testing.AllocsPerRun(200, func() { _, _ = VerifyToken(secret, tok, testNow) }); n > 1 {
			t.Errorf("token %.40s...: %v allocations per successful verification, want at most 1 (the sub)", tok, n)
		}
	}
	for _, bad := range []string{good + "x", signed(testSecret, hs256, claimsAt(-60)), signed(testSecret, `{"alg":"none"}`, claimsAt(60)), "a.b"} {
		if n := testing.AllocsPerRun(200, func() { _, _ = VerifyToken(testSecret, bad, testNow) }); n != 0 {
			t.Errorf("token %.40s...: %v allocations per rejection, want 0", bad, n)
		}
	}
}

// TestSignIsHMAC: the written-out HMAC equals crypto/hmac for keys shorter
// than, equal to and longer than a SHA-256 block.
func TestSignIsHMAC(t *testing.T) {
	for _, klen := range []int{0, 1, 31, 63, 64, 65, 128, 300} {
		for _, mlen := range []int{0, 1, 55, 56, 64, 119, 1000} {
			key, msg := make([]byte, klen), make([]byte, mlen)
			_, _ = rand.Read(key)
			_, _ = rand.Read(msg)
			got := sign(key, msg)
			if want := mustMAC(key, string(msg)); !hmac.Equal(got[:], want) {
				t.Fatalf("key %d msg %d: %x, want %x", klen, mlen, got, want)
			}
		}
	}
}

func TestUnverifiedSubject(t *testing.T) {
	tok, err := MintToken(testSecret, "bob", -time.Hour) // expired: still read
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ token, want string }{
		{tok, "bob"},
		{signed([]byte("any"), hs256, `{"sub":"carol"}`), "carol"},
		{signed(testSecret, `{"alg":"none"}`, `{"sub":"carol"}`), ""},
		{signed(testSecret, hs256, `{"sub":"not an id"}`), ""},
		{signed(testSecret, hs256, `{"sub":1}`), ""},
		{"jwt", ""},
		{"", ""},
	} {
		if got := UnverifiedSubject(c.token); got != c.want {
			t.Errorf("UnverifiedSubject(%q) = %q, want %q", c.token, got, c.want)
		}
	}
}
