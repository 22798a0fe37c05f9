package engine

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// loginLimiter bounds password attempts (LOGIN with a password, REGISTER)
// per source IP, before any hashing: each attempt costs an argon2id hash
// (~20 ms of CPU, 19 MiB), so one address must not be able to spend the
// node's CPU on guessing. Safe for concurrent use; its memory is bounded by
// maxKeys, and sweep drops the buckets of addresses that have gone quiet.
type loginLimiter struct {
	limit   rate.Limit
	burst   int
	maxKeys int
	mu      sync.Mutex
	byIP    map[netip.Addr]*rate.Limiter
}

func newLoginLimiter(perSecond float64, burst int) *loginLimiter {
	if perSecond <= 0 {
		return nil
	}
	return &loginLimiter{limit: rate.Limit(perSecond), burst: burst, maxKeys: 100000, byIP: map[netip.Addr]*rate.Limiter{}}
}

// allow takes one attempt for ip; when the bucket is empty it returns false
// and how long until the next attempt is allowed. A nil limiter allows all.
func (l *loginLimiter) allow(ip netip.Addr, now time.Time) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	lim := l.byIP[ip]
	if lim == nil {
		if len(l.byIP) >= l.maxKeys {
			l.sweepLocked(now)
		}
		if len(l.byIP) >= l.maxKeys {
			l.mu.Unlock()
			return false, time.Second // too many distinct addresses at once
		}
		lim = rate.NewLimiter(l.limit, l.burst)
		l.byIP[ip] = lim
	}
	l.mu.Unlock()
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// sweep forgets addresses whose bucket is full again (quiet long enough).
func (l *loginLimiter) sweep(now time.Time) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.sweepLocked(now)
	l.mu.Unlock()
}

func (l *loginLimiter) sweepLocked(now time.Time) {
	for ip, lim := range l.byIP {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.byIP, ip)
		}
	}
}
