package engine

import "time"

// reserveInbound counts n more bytes of queued requests against the node's
// bound, and reports false (counting nothing) when they do not fit.
func (s *Server) reserveInbound(n int) bool {
	if s.inBytes.Add(int64(n)) > int64(s.cfg.MaxNodeInbound) {
		s.inBytes.Add(-int64(n))
		return false
	}
	return true
}

// releaseInbound returns n bytes reserved by reserveInbound.
func (s *Server) releaseInbound(n int) {
	if n != 0 {
		s.inBytes.Add(-int64(n))
	}
}

// heartbeatInterval is the interval announced to a client logging in now:
// the configured one, lengthened as the node's connection count grows so
// the node answers at most HeartbeatRate heartbeats per second:
//
//	interval = clamp(connections / HeartbeatRate seconds, HeartbeatInterval, MaxHeartbeatInterval)
//
// With the defaults (30 s, 5,000/s, 5 min): 30 s up to 150,000
// connections, 200 s at 1,000,000.
func (s *Server) heartbeatInterval() time.Duration {
	hb := s.cfg.HeartbeatInterval
	if s.cfg.HeartbeatRate <= 0 {
		return hb
	}
	scaled := time.Duration(float64(s.conns.len()) / s.cfg.HeartbeatRate * float64(time.Second))
	if scaled > hb {
		hb = min(scaled, max(s.cfg.MaxHeartbeatInterval, s.cfg.HeartbeatInterval)).Truncate(time.Second)
	}
	return hb
}

// idleTimeout is how long a logged-in connection may stay silent: the
// configured IdleTimeout, stretched in proportion when the interval its
// client was told at login is longer than the configured one.
func (s *Server) idleTimeout(c *conn) time.Duration {
	idle := s.cfg.IdleTimeout
	if hb := time.Duration(c.hbSec) * time.Second; hb > s.cfg.HeartbeatInterval && s.cfg.HeartbeatInterval > 0 {
		idle = time.Duration(float64(idle) * float64(hb) / float64(s.cfg.HeartbeatInterval))
	}
	return idle
}
