package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

// Token errors. VerifyToken wraps one of them with the reason; test with
// errors.Is. The messages are written for the LOGIN reply.
var (
	// ErrTokenExpired: the exp claim is in the past, or missing.
	ErrTokenExpired = errors.New("token expired or without exp")
	// ErrTokenInvalid: anything else wrong with a token.
	ErrTokenInvalid = errors.New("token invalid")
)

// The reasons, made once so that rejecting a token allocates nothing.
var (
	errNoSecret  = fmt.Errorf("%w: no secret to verify it with", ErrTokenInvalid)
	errSegments  = fmt.Errorf("%w: want three dot-separated segments", ErrTokenInvalid)
	errHeader    = fmt.Errorf("%w: header is not base64url JSON with alg HS256", ErrTokenInvalid)
	errSignature = fmt.Errorf("%w: signature does not verify", ErrTokenInvalid)
	errClaims    = fmt.Errorf("%w: claims are not a base64url JSON object of the registered claim types", ErrTokenInvalid)
	errNotYet    = fmt.Errorf("%w: nbf is in the future", ErrTokenInvalid)
	errSubject   = fmt.Errorf("%w: sub is not a valid user id", ErrTokenInvalid)
	errNoExp     = fmt.Errorf("%w: no exp claim", ErrTokenExpired)
	errPastExp   = fmt.Errorf("%w: exp is in the past", ErrTokenExpired)
)

// leeway is how far, in seconds, exp and nbf may be off the verifier's
// clock, for clock skew between the issuer and the node.
const leeway = 5

// hs256Headers are the header segments of the common HS256 headers, which
// VerifyToken recognizes without decoding; the first is the one MintToken
// writes (and golang-jwt, and most libraries).
var hs256Headers = [...]string{
	b64(`{"alg":"HS256","typ":"JWT"}`),
	b64(`{"typ":"JWT","alg":"HS256"}`),
	b64(`{"alg":"HS256"}`),
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// MintToken returns a token for user that expires ttl from now: an HS256
// JWT with the claims sub, exp and iat, as an application's auth service
// mints for LOGIN. A negative ttl mints an expired token (for tests).
func MintToken(secret []byte, user string, ttl time.Duration) (string, error) {
	return MintTokenAt(secret, user, time.Now(), ttl)
}

// MintTokenAt is MintToken issued at now (iat = now, exp = now+ttl, both
// truncated to the second).
func MintTokenAt(secret []byte, user string, now time.Time, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("auth: mint token: empty secret")
	}
	if !ValidID(user) {
		return "", fmt.Errorf("auth: mint token: invalid user id %q", user)
	}
	// The user id needs no JSON escaping; the member order is golang-jwt's.
	claims := make([]byte, 0, 64)
	claims = append(claims, `{"sub":"`...)
	claims = append(claims, user...)
	claims = append(claims, `","exp":`...)
	claims = strconv.AppendInt(claims, now.Add(ttl).Unix(), 10)
	claims = append(claims, `,"iat":`...)
	claims = strconv.AppendInt(claims, now.Unix(), 10)
	claims = append(claims, '}')

	enc := base64.RawURLEncoding
	tok := make([]byte, 0, len(hs256Headers[0])+enc.EncodedLen(len(claims))+enc.EncodedLen(sha256.Size)+2)
	tok = append(tok, hs256Headers[0]...)
	tok = append(tok, '.')
	tok = enc.AppendEncode(tok, claims)
	mac := sign(secret, tok)
	tok = append(tok, '.')
	tok = enc.AppendEncode(tok, mac[:])
	return string(tok), nil
}

// VerifyToken checks an HS256 token against secret at time now and returns
// its subject. It refuses every algorithm but HS256 (including "none"),
// compares the HMAC-SHA256 signature in constant time, requires exp
// (ErrTokenExpired if it is missing or not after now-5s), refuses an nbf
// after now+5s (exp and nbf floored to the second; the 5 s absorb clock
// skew), and requires sub to be a valid id (ValidID); every other failure
// is ErrTokenInvalid. An empty secret verifies nothing. The package
// documentation lists the exact syntax it accepts.
//
// A successful call allocates only the returned string when the claims
// decode to at most 512 bytes; a failed one allocates nothing. token and
// secret are not retained.
func VerifyToken(secret []byte, token string, now time.Time) (string, error) {
	if len(secret) == 0 {
		return "", errNoSecret
	}
	header, payload, sig, ok := split(token)
	if !ok {
		return "", errSegments
	}
	var hbuf [256]byte
	if !knownHeader(header, hbuf[:]) {
		return "", errHeader
	}
	var sbuf [64]byte
	got, ok := decode(sig, sbuf[:])
	if !ok {
		return "", errSignature
	}
	want := sign(secret, bytesOf(token[:len(header)+1+len(payload)]))
	if !hmac.Equal(got, want[:]) {
		return "", errSignature
	}
	var cbuf [512]byte
	js, ok := decode(payload, cbuf[:])
	if !ok {
		return "", errClaims
	}
	c, ok := scanClaims(js)
	if !ok {
		return "", errClaims
	}
	// exp and nbf are floored to the second: with t = now's second,
	// "now is before exp+leeway" is floor(exp) > t-leeway, i.e.
	// exp >= t-leeway+1, and "now is not before nbf-leeway" is
	// floor(nbf) <= t+leeway, i.e. nbf < t+leeway+1.
	t := now.Unix()
	switch {
	case !c.hasExp:
		return "", errNoExp
	case c.exp < float64(t-leeway+1):
		return "", errPastExp
	case c.hasNbf && c.nbf >= float64(t+leeway+1):
		return "", errNotYet
	}
	sub, ok := c.subject()
	if !ok {
		return "", errSubject
	}
	return sub, nil
}

// UnverifiedSubject returns the sub claim of a well-formed HS256 token
// without checking its signature or times, or "" when token is not one or
// its sub is not a valid id. It is for hints only (imctl uses it to ask the
// router where a token's user lives); never trust its answer.
func UnverifiedSubject(token string) string {
	header, payload, _, ok := split(token)
	if !ok {
		return ""
	}
	var hbuf [256]byte
	var cbuf [512]byte
	if !knownHeader(header, hbuf[:]) {
		return ""
	}
	js, ok := decode(payload, cbuf[:])
	if !ok {
		return ""
	}
	c, ok := scanClaims(js)
	if !ok {
		return ""
	}
	sub, _ := c.subject()
	return sub
}

// split cuts a token at its two dots; a third dot makes it malformed.
func split(token string) (header, payload, sig string, ok bool) {
	header, rest, ok1 := strings.Cut(token, ".")
	payload, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.IndexByte(sig, '.') >= 0 {
		return "", "", "", false
	}
	return header, payload, sig, true
}

// knownHeader reports whether the header segment says HS256: one of the
// common encodings, or else decoded (into buf if it fits) and parsed.
func knownHeader(seg string, buf []byte) bool {
	for _, h := range hs256Headers {
		if seg == h {
			return true
		}
	}
	js, ok := decode(seg, buf)
	return ok && headerOK(js)
}

// decode decodes an unpadded base64url segment into buf, or into a new
// slice if it does not fit. It is the decoder golang-jwt uses, so it also
// skips CR and LF and ignores nonzero padding bits. ([]byte(seg) does not
// copy: the compiler sees that Decode only reads it.)
func decode(seg string, buf []byte) ([]byte, bool) {
	enc := base64.RawURLEncoding
	if enc.DecodedLen(len(seg)) > len(buf) {
		buf = make([]byte, enc.DecodedLen(len(seg)))
	}
	n, err := enc.Decode(buf, []byte(seg))
	return buf[:n], err == nil
}

// sign returns HMAC-SHA256(secret, msg) (RFC 2104). It is written out
// because crypto/hmac allocates its state on every call; this allocates
// nothing.
func sign(secret, msg []byte) [sha256.Size]byte {
	var key [sha256.BlockSize]byte
	if len(secret) > len(key) {
		sum := sha256.Sum256(secret)
		copy(key[:], sum[:])
	} else {
		copy(key[:], secret)
	}
	var pad [sha256.BlockSize]byte
	for i := range pad {
		pad[i] = key[i] ^ 0x36
	}
	var inner, outer [sha256.Size]byte
	h := sha256.New()
	h.Write(pad[:])
	h.Write(msg)
	h.Sum(inner[:0])
	for i := range pad {
		pad[i] = key[i] ^ 0x5c
	}
	h.Reset()
	h.Write(pad[:])
	h.Write(inner[:])
	h.Sum(outer[:0])
	return outer
}

// bytesOf views s as bytes without copying; the bytes must only be read.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
