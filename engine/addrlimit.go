package engine

import (
	"net"
	"net/netip"
	"sync"
)

// addrConns counts open client connections per source address, for
// Config.MaxConnsPerIP. The map holds only addresses with a connection
// open, so its size is bounded by MaxConns. Safe for concurrent use; one
// lock is enough: it is taken once per accept and once per close, never
// per frame.
type addrConns struct {
	max int
	mu  sync.Mutex
	n   map[netip.Addr]int32
}

func newAddrConns(max int) *addrConns {
	if max <= 0 {
		return nil
	}
	return &addrConns{max: max, n: map[netip.Addr]int32{}}
}

// addrOf is the source address of a connection (IPv4-mapped IPv6
// addresses count as IPv4); ok is false when the transport has none.
func addrOf(a net.Addr) (netip.Addr, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ap := ta.AddrPort()
	return ap.Addr().Unmap(), true
}

// acquire counts one more connection from a and reports whether it is
// within the cap. A nil addrConns (no cap) always allows.
func (l *addrConns) acquire(a net.Addr) bool {
	if l == nil {
		return true
	}
	ip, ok := addrOf(a)
	if !ok {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if int(l.n[ip]) >= l.max {
		return false
	}
	l.n[ip]++
	return true
}

// release undoes one acquire that succeeded.
func (l *addrConns) release(a net.Addr) {
	if l == nil {
		return
	}
	ip, ok := addrOf(a)
	if !ok {
		return
	}
	l.mu.Lock()
	if l.n[ip]--; l.n[ip] <= 0 {
		delete(l.n, ip)
	}
	l.mu.Unlock()
}
