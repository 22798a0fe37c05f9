package auth

// The registered claims, in the order a key is tried against them. A key
// names one of them when it equals it under case folding (nameEq).
const (
	claimSub = iota
	claimExp
	claimNbf
	claimIat
	claimIss
	claimJti
	claimAud
	claimOther
)

var claimNames = [claimOther]string{"sub", "exp", "nbf", "iat", "iss", "jti", "aud"}

func claimOf(key []byte) int {
	for c, name := range claimNames {
		if nameEq(key, name) {
			return c
		}
	}
	return claimOther
}

// claims is what VerifyToken reads from the claims object. sub points into
// the decoded claims, so it lives only as long as that buffer.
type claims struct {
	sub      []byte // raw string body of the last string sub
	hasSub   bool
	exp, nbf float64 // seconds since the epoch, as written
	hasExp   bool
	hasNbf   bool
}

// scanClaims reads the claims JSON and reports whether it is a JSON object
// (or null) whose registered claims have their registered types; see the
// package documentation for the rules. It returns the claims by value so
// that b, which c.sub points into, can stay on the caller's stack.
func scanClaims(b []byte) (c claims, ok bool) {
	s := scanner{b: b}
	null, ok := s.openObject()
	if !ok {
		return c, false
	}
	for !null {
		key, done, ok := s.nextMember()
		if !ok {
			return c, false
		}
		if done {
			break
		}
		switch claimOf(key) {
		case claimSub:
			switch s.peek() {
			case '"':
				if c.sub, c.hasSub = s.str(); !c.hasSub {
					return c, false
				}
			case 'n': // null leaves a string as it was
				ok = s.lit("null")
			default:
				ok = false
			}
		case claimExp:
			c.exp, c.hasExp, ok = s.numericDate()
		case claimNbf:
			c.nbf, c.hasNbf, ok = s.numericDate()
		case claimIat:
			_, _, ok = s.numericDate()
		case claimIss, claimJti:
			ok = s.stringOrNull()
		case claimAud:
			ok = s.audience()
		default:
			ok = s.value(false)
		}
		if !ok {
			return c, false
		}
	}
	return c, s.end()
}

// subject returns the final sub if it is a valid id. The string is the one
// allocation of a successful VerifyToken.
func (c *claims) subject() (string, bool) {
	if !c.hasSub {
		return "", false
	}
	var buf [MaxIDLen]byte
	n, ok := asciiInto(c.sub, buf[:])
	if !ok || !isID(buf[:n]) {
		return "", false
	}
	return string(buf[:n]), true
}

// numericDate reads a NumericDate: a number, a string holding a number, or
// null (set false).
func (s *scanner) numericDate() (v float64, set, ok bool) {
	switch c := s.peek(); {
	case c == 'n':
		return 0, false, s.lit("null")
	case c == '"':
		raw, ok := s.str()
		if !ok {
			return 0, false, false
		}
		var buf [32]byte
		dst := buf[:]
		if len(raw) > len(buf) {
			dst = make([]byte, len(raw))
		}
		n, ok := asciiInto(raw, dst)
		if !ok || !isNumber(dst[:n]) {
			return 0, false, false
		}
		v, ok = parseFloat(dst[:n])
		return v, ok, ok
	case c == '-' || c >= '0' && c <= '9':
		lit, ok := s.num()
		if !ok {
			return 0, false, false
		}
		v, ok = parseFloat(lit)
		return v, ok, ok
	}
	return 0, false, false
}

func (s *scanner) stringOrNull() bool {
	switch s.peek() {
	case '"':
		_, ok := s.str()
		return ok
	case 'n':
		return s.lit("null")
	}
	return false
}

// audience reads aud: a string, an array of strings, or null.
func (s *scanner) audience() bool {
	if s.peek() != '[' {
		return s.stringOrNull()
	}
	s.i++
	s.ws()
	if s.peek() == ']' {
		s.i++
		return true
	}
	for {
		if s.peek() != '"' {
			return false
		}
		if _, ok := s.str(); !ok {
			return false
		}
		s.ws()
		switch s.peek() {
		case ']':
			s.i++
			return true
		case ',':
			s.i++
			s.ws()
		default:
			return false
		}
	}
}

// headerOK reports whether the decoded header is a JSON object whose last
// "alg" member is the string "HS256". As where encoding/json decodes the
// header into a map, every number in it must fit a float64.
func headerOK(b []byte) bool {
	s := scanner{b: b}
	null, ok := s.openObject()
	if !ok || null {
		return false
	}
	hs256 := false
	for {
		key, done, ok := s.nextMember()
		if !ok {
			return false
		}
		if done {
			return hs256 && s.end()
		}
		if !strEq(key, "alg") {
			ok = s.value(true)
		} else if s.peek() == '"' {
			var alg []byte
			alg, ok = s.str()
			hs256 = strEq(alg, "HS256")
		} else {
			ok = s.value(true)
			hs256 = false
		}
		if !ok {
			return false
		}
	}
}
