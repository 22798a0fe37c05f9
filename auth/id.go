package auth

// MaxIDLen is the longest user, device or group id, in bytes.
const MaxIDLen = 64

// ValidID reports whether s is a valid user, device or group id: 1 to
// MaxIDLen bytes, each one of A-Z a-z 0-9 _ . - (docs/protocol.md, the user
// id rule). Ids are case-sensitive.
func ValidID(s string) bool { return isID(s) }

// isID is ValidID for either representation, so the token parser can check
// a subject before it allocates a string for it.
func isID[S string | []byte](s S) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}
