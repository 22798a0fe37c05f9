package engine

import (
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// sessionShards is the number of lock shards of a sessionMap: enough that
// workers on every core rarely meet on one lock.
const sessionShards = 256

// sessionMap maps user -> device -> live connection on this node. It is the
// structure every push looks up, so it is sharded by user to keep lock
// contention off the hot path. Safe for concurrent use.
type sessionMap struct {
	shards [sessionShards]sessionShard
}

type sessionShard struct {
	mu sync.RWMutex
	// one holds each user's first device: most users have one, so a
	// session costs one small map entry. extra holds, for the few users
	// that need it, further devices and the send limiter.
	one   map[string]*conn
	extra map[string]*userExtra
	_     [16]byte // keep neighbouring shards' locks off one cache line
}

// userExtra is what a user has beyond one device: more devices, and the
// user's send and typing rate limiters (per user, so opening more devices
// does not raise the rate), made on the user's first send (typing): most
// connections are idle, and a limiter costs 80 bytes.
type userExtra struct {
	more    []*conn
	limiter *rate.Limiter
	typing  *rate.Limiter
}

func newSessionMap() *sessionMap {
	m := &sessionMap{}
	for i := range m.shards {
		m.shards[i].one = make(map[string]*conn)
		m.shards[i].extra = make(map[string]*userExtra)
	}
	return m
}

func (m *sessionMap) shard(user string) *sessionShard {
	return &m.shards[maphash.String(shardSeed, user)%sessionShards]
}

// shardSeed spreads users over the shards (the process's own: shard
// placement never leaves it).
var shardSeed = maphash.MakeSeed()

// add registers c (logged in, user and device set) and returns the
// connection it replaces for the same (user, device), or nil.
func (m *sessionMap) add(c *conn) (old *conn) {
	sh := m.shard(c.user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	first := sh.one[c.user]
	switch {
	case first == nil:
		c.multi = false
		sh.one[c.user] = c
		return nil
	case first.device == c.device:
		c.multi = first.multi
		sh.one[c.user] = c
		return first
	}
	x := sh.extra[c.user]
	if x == nil {
		x = &userExtra{}
		sh.extra[c.user] = x
	}
	if i := slices.IndexFunc(x.more, func(d *conn) bool { return d.device == c.device }); i >= 0 {
		old, x.more[i] = x.more[i], c
		return old
	}
	x.more = append(x.more, c)
	first.multi = true
	return nil
}

// remove unregisters c if it is still the live connection of its (user,
// device); a connection that was replaced by a newer login removes nothing.
func (m *sessionMap) remove(c *conn) bool {
	sh := m.shard(c.user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	first := sh.one[c.user]
	if first == nil {
		return false
	}
	x := sh.extra[c.user]
	switch {
	case first == c && x != nil && len(x.more) > 0:
		last := len(x.more) - 1
		next := x.more[last]
		sh.one[c.user], x.more[last] = next, nil
		x.more = x.more[:last]
		next.multi = len(x.more) > 0
	case first == c:
		delete(sh.one, c.user)
		delete(sh.extra, c.user) // the limiter goes with the user's last session
		return true
	case x != nil:
		i := slices.Index(x.more, c)
		if i < 0 {
			return false
		}
		last := len(x.more) - 1
		x.more[i], x.more[last] = x.more[last], nil
		x.more = x.more[:last]
		first.multi = len(x.more) > 0
	default:
		return false
	}
	if len(x.more) == 0 && x.limiter == nil {
		delete(sh.extra, c.user)
	}
	return true
}

// devices appends user's live connections to dst and returns it. With a dst
// of enough capacity it does not allocate. A user with one device (most of
// them) costs one map lookup: extra, which every user who has sent holds
// for the limiter, is read only when the first device says there are more.
func (m *sessionMap) devices(user string, dst []*conn) []*conn {
	sh := m.shard(user)
	sh.mu.RLock()
	if first := sh.one[user]; first != nil {
		dst = append(dst, first)
		if first.multi {
			if x := sh.extra[user]; x != nil {
				dst = append(dst, x.more...)
			}
		}
	}
	sh.mu.RUnlock()
	return dst
}

// online reports whether user has a live session on this node.
func (m *sessionMap) online(user string) bool {
	sh := m.shard(user)
	sh.mu.RLock()
	_, ok := sh.one[user]
	sh.mu.RUnlock()
	return ok
}

// limiter returns user's send limiter, making it with newLimiter on first
// use; nil when the user has no session on this node.
func (m *sessionMap) limiter(user string, newLimiter func() *rate.Limiter) *rate.Limiter {
	return m.userLimiter(user, func(x *userExtra) **rate.Limiter { return &x.limiter }, newLimiter)
}

// typingLimiter is limiter for TYPING notifications.
func (m *sessionMap) typingLimiter(user string, newLimiter func() *rate.Limiter) *rate.Limiter {
	return m.userLimiter(user, func(x *userExtra) **rate.Limiter { return &x.typing }, newLimiter)
}

// userLimiter returns the limiter of user that which selects, making it
// with newLimiter on first use; nil when the user has no session here.
func (m *sessionMap) userLimiter(user string, which func(*userExtra) **rate.Limiter, newLimiter func() *rate.Limiter) *rate.Limiter {
	sh := m.shard(user)
	sh.mu.RLock()
	var lim *rate.Limiter
	if x := sh.extra[user]; x != nil {
		lim = *which(x)
	}
	_, ok := sh.one[user]
	sh.mu.RUnlock()
	if !ok || lim != nil {
		return lim
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.one[user]; !ok {
		return nil
	}
	x := sh.extra[user]
	if x == nil {
		x = &userExtra{}
		sh.extra[user] = x
	}
	if p := which(x); *p == nil {
		*p = newLimiter()
	}
	return *which(x)
}

// each calls fn for every live connection; fn must not call back into m.
func (m *sessionMap) each(fn func(*conn)) {
	var batch []*conn
	for i := range m.shards {
		sh := &m.shards[i]
		batch = batch[:0]
		sh.mu.RLock()
		for _, c := range sh.one {
			batch = append(batch, c)
		}
		for _, x := range sh.extra {
			batch = append(batch, x.more...)
		}
		sh.mu.RUnlock()
		for _, c := range batch {
			fn(c)
		}
	}
}

// count returns the number of logged-in users and connections.
func (m *sessionMap) count() (users, conns int) {
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.RLock()
		users += len(sh.one)
		conns += len(sh.one)
		for _, x := range sh.extra {
			conns += len(x.more)
		}
		sh.mu.RUnlock()
	}
	return users, conns
}

// connSet is every open connection of the node (logged in or not), for the
// timeout scan, broadcast and shutdown: intrusive lists (conn.prev, next)
// in a few lock shards, so a connection costs no map entry. Safe for
// concurrent use.
type connSet struct {
	n      atomic.Int64
	shards [16]struct {
		mu   sync.Mutex
		head *conn
		_    [48]byte // one shard per cache line
	}
}

func newConnSet() *connSet { return &connSet{} }

func (s *connSet) add(c *conn) {
	sh := &s.shards[c.id%uint64(len(s.shards))]
	sh.mu.Lock()
	c.next = sh.head
	if sh.head != nil {
		sh.head.prev = c
	}
	sh.head = c
	sh.mu.Unlock()
	s.n.Add(1)
}

func (s *connSet) remove(c *conn) {
	sh := &s.shards[c.id%uint64(len(s.shards))]
	sh.mu.Lock()
	if c.prev == nil && sh.head != c {
		sh.mu.Unlock()
		return // not in the set (removed already)
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		sh.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
	sh.mu.Unlock()
	s.n.Add(-1)
}

// each calls fn for every connection, outside the shard locks.
func (s *connSet) each(fn func(*conn)) {
	var batch []*conn
	for i := range s.shards {
		sh := &s.shards[i]
		batch = batch[:0]
		sh.mu.Lock()
		for c := sh.head; c != nil; c = c.next {
			batch = append(batch, c)
		}
		sh.mu.Unlock()
		for _, c := range batch {
			fn(c)
		}
	}
}

func (s *connSet) len() int { return int(s.n.Load()) }
