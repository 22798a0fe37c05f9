package client

import (
	mrand "math/rand/v2"
	"time"
)

// backoff computes capped exponential delays with full jitter: attempt n
// waits a uniformly random duration in [0, min(max, base*2^n)).
// The zero value waits 0. It is safe for concurrent use when rnd is.
type backoff struct {
	base, max time.Duration
	// rnd returns a value in [0, 1); nil means math/rand/v2.Float64.
	rnd func() float64
}

// ceiling is the upper bound of attempt's delay: min(max, base*2^attempt).
func (b backoff) ceiling(attempt int) time.Duration {
	if b.base <= 0 {
		return 0
	}
	if attempt < 0 {
		attempt = 0
	}
	if attempt >= 62 {
		return b.max
	}
	c := b.base << uint(attempt)
	if c <= 0 || c > b.max || c>>uint(attempt) != b.base {
		return b.max
	}
	return c
}

// delay returns attempt's jittered delay (attempt counts from 0).
func (b backoff) delay(attempt int) time.Duration {
	c := b.ceiling(attempt)
	if c <= 0 {
		return 0
	}
	f := b.rnd
	if f == nil {
		f = mrand.Float64
	}
	return time.Duration(f() * float64(c))
}

// retryDelay is the wait before retrying after a server error: the backoff
// delay, but never less than the server's retry_after hint (plus up to 10%
// jitter so that clients told the same hint do not retry in lockstep).
func (b backoff) retryDelay(attempt int, retryAfter time.Duration) time.Duration {
	d := b.delay(attempt)
	if retryAfter > 0 && d < retryAfter {
		f := b.rnd
		if f == nil {
			f = mrand.Float64
		}
		d = retryAfter + time.Duration(f()*float64(retryAfter)/10)
	}
	return d
}
