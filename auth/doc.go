// Package auth holds the identity rules every part of imgn shares: the
// syntax of user, device and group ids (ValidID) and the HS256 JSON Web
// Tokens that LOGIN accepts (MintToken, VerifyToken). It imports nothing
// from the rest of the repository, so the client, the router and the load
// generator can use it without linking the server.
//
// # Tokens
//
// A token is a compact JWT signed with HMAC-SHA256 under a secret shared by
// the server and the issuer (docs/protocol.md, "Login by token"). MintToken
// writes the header {"alg":"HS256","typ":"JWT"} and the claims
// {"sub":...,"exp":...,"iat":...}, byte for byte what github.com/golang-jwt/jwt
// writes for the same values, so tokens minted elsewhere and here are
// interchangeable.
//
// VerifyToken accepts exactly the tokens the server accepted when it
// verified them with golang-jwt (HS256 only, exp required, 5 s leeway), and
// rejects the rest with the same sentinel; the tests compare the two on
// every malformed case and under a fuzzer. That compatibility fixes a few
// details that a hand-written parser would otherwise decide differently:
//
//   - The header must be a JSON object whose "alg" member is the string
//     "HS256". Other members (typ, kid, ...) are ignored; alg "none" and every
//     other algorithm are refused.
//   - Claim names match case-insensitively (as encoding/json matches struct
//     fields: "SUB" is sub). A claim that appears twice takes its last value
//     (RFC 7519 section 4 allows this instead of rejecting); a null leaves
//     sub as it was and unsets exp or nbf.
//   - exp, nbf and iat are NumericDates: a JSON number, or a string holding
//     one ("1700000000"), fractions allowed and floored to the second. exp is
//     required. iss and jti must be strings, aud a string or an array of
//     strings, when present. Other claims are ignored.
//   - Segments are unpadded base64url; a '=' anywhere is an error.
//
// # Cost
//
// VerifyToken uses no reflection and, for tokens whose claims fit in
// 512 bytes, allocates only the returned subject string; a rejected token
// allocates nothing. All functions are safe for concurrent use and keep no
// reference to their arguments.
package auth
