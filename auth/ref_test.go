package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// refVerify is how the server verified tokens before this package: with
// golang-jwt, HS256 only, exp required, 5 s leeway, sub checked afterwards.
// VerifyToken must agree with it on the verdict (accept with the same sub,
// ErrTokenExpired, or ErrTokenInvalid).
func refVerify(secret []byte, token string, now time.Time) (string, error) {
	claims := jwt.RegisteredClaims{}
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return secret, nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired(), jwt.WithLeeway(5*time.Second),
		jwt.WithTimeFunc(func() time.Time { return now }))
	switch {
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "", ErrTokenExpired
	case err != nil:
		return "", fmt.Errorf("%w: %v", ErrTokenInvalid, err)
	}
	if !ValidID(claims.Subject) {
		return "", fmt.Errorf("%w: bad sub", ErrTokenInvalid)
	}
	return claims.Subject, nil
}

// verdict names the outcome of a verification for comparisons.
func verdict(sub string, err error) string {
	switch {
	case err == nil:
		return "ok " + sub
	case errors.Is(err, ErrTokenExpired):
		return "expired"
	case errors.Is(err, ErrTokenInvalid):
		return "invalid"
	}
	return "unexpected error " + err.Error()
}

// signed builds a token from raw header and claims JSON, signed with
// HMAC-SHA256 by crypto/hmac (not by the code under test).
func signed(secret []byte, header, claims string) string {
	enc := base64.RawURLEncoding
	in := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(claims))
	return in + "." + macOf(secret, in)
}

func macOf(secret []byte, in string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(in))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// compare checks VerifyToken against refVerify on one token and returns
// the common verdict.
func compare(t testing.TB, secret []byte, token string, now time.Time) string {
	t.Helper()
	sub, err := VerifyToken(secret, token, now)
	got := verdict(sub, err)
	want := verdict(refVerify(secret, token, now))
	if got != want {
		_, refErr := refVerify(secret, token, now)
		t.Fatalf("token %q at %v: VerifyToken says %s (%v), golang-jwt says %s (%v)", token, now.Unix(), got, err, want, refErr)
	}
	return got
}
