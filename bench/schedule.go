package bench

import "math"

// Schedule is an open-loop send schedule: event j (j = 0, 1, 2, ...) is
// intended to happen at Start + j/Rate seconds, whatever happened to the
// events before it. Times are nanoseconds on the loop's monotonic clock.
//
// The intended time is computed from j, never accumulated, so it does not
// drift however long the run: Intended(j) is within 1 ns of the exact
// Start + j*1e9/Rate for every j below 2^52.
type Schedule struct {
	Start int64   // intended time of event 0, ns
	Rate  float64 // events per second, > 0
}

// Intended returns the intended time of event j.
func (s Schedule) Intended(j uint64) int64 {
	return s.Start + int64(math.Floor(float64(j)*1e9/s.Rate))
}

// Due returns how many events are due at time now: the number of j with
// Intended(j) <= now. Events are sent in order, so a sender that has sent n
// events sends events n..Due(now)-1 now (all of them late if Due jumped by
// more than one: the lateness is part of their latency).
func (s Schedule) Due(now int64) uint64 {
	if now < s.Start || s.Rate <= 0 {
		return 0
	}
	n := uint64(math.Floor(float64(now-s.Start)*s.Rate/1e9)) + 1
	// Correct the float rounding at the boundary so that Due agrees exactly
	// with Intended.
	for n > 0 && s.Intended(n-1) > now {
		n--
	}
	for s.Intended(n) <= now {
		n++
	}
	return n
}

// Count returns how many events have an intended time in [from, to).
func (s Schedule) Count(from, to int64) uint64 {
	if to <= from {
		return 0
	}
	return s.Due(to-1) - s.Due(from-1)
}

// Window is a measurement window [From, To) on the loop clock. An event
// belongs to the window when its intended time does.
type Window struct{ From, To int64 }

// Contains reports whether t is in the window.
func (w Window) Contains(t int64) bool { return t >= w.From && t < w.To }
