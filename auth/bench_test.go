package auth

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The benchmarks verify and mint a typical login token ({"sub","exp","iat"},
// 16-byte secret) with this package and with golang-jwt as the server used
// it before (ParseWithClaims into RegisteredClaims, HS256 only, exp
// required, 5 s leeway).
func BenchmarkVerifyToken(b *testing.B) {
	secret := []byte("0123456789abcdef")
	tok, err := MintTokenAt(secret, "user-000042", testNow, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("auth", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := VerifyToken(secret, tok, testNow); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("golang-jwt", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := refVerify(secret, tok, testNow); err != nil {
				b.Fatal(err)
			}
		}
	})
	forged := tok[:len(tok)-2] + "AA"
	b.Run("auth/bad-signature", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := VerifyToken(secret, forged, testNow); err == nil {
				b.Fatal("forged token accepted")
			}
		}
	})
	b.Run("golang-jwt/bad-signature", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := refVerify(secret, forged, testNow); err == nil {
				b.Fatal("forged token accepted")
			}
		}
	})
}

func BenchmarkMintToken(b *testing.B) {
	secret := []byte("0123456789abcdef")
	b.Run("auth", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := MintTokenAt(secret, "user-000042", testNow, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("golang-jwt", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
				Subject: "user-000042", IssuedAt: jwt.NewNumericDate(testNow), ExpiresAt: jwt.NewNumericDate(testNow.Add(time.Hour)),
			}).SignedString(secret)
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
