package engine

import (
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
	mu    sync.RWMutex
	users map[string]userSessions
	_     [32]byte // keep neighbouring shards' locks off one cache line
}

// userSessions is one user's live devices on this node, and the user's send
// rate limiter (per user, so opening more devices does not raise the rate),
// made on the user's first send: most connections are idle, and a limiter
// costs 80 bytes. It is stored in the map by value, with the first device
// inline, so a user with one device costs one map entry and no allocation.
type userSessions struct {
	one     *conn
	more    []*conn
	limiter *rate.Limiter
}

func newSessionMap() *sessionMap {
	m := &sessionMap{}
	for i := range m.shards {
		m.shards[i].users = make(map[string]userSessions)
	}
	return m
}

// fnv1a is the 32-bit FNV-1a hash; it does not allocate.
func fnv1a(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

func (m *sessionMap) shard(user string) *sessionShard {
	return &m.shards[fnv1a(user)%sessionShards]
}

// add registers c (logged in, user and device set) and returns the
// connection it replaces for the same (user, device), or nil.
func (m *sessionMap) add(c *conn) (old *conn) {
	sh := m.shard(c.user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	us := sh.users[c.user]
	switch {
	case us.one == nil:
		us.one = c
	case us.one.device == c.device:
		old, us.one = us.one, c
	default:
		i := slices.IndexFunc(us.more, func(d *conn) bool { return d.device == c.device })
		if i >= 0 {
			old, us.more[i] = us.more[i], c
		} else {
			us.more = append(us.more, c)
		}
	}
	sh.users[c.user] = us
	return old
}

// remove unregisters c if it is still the live connection of its (user,
// device); a connection that was replaced by a newer login removes nothing.
func (m *sessionMap) remove(c *conn) bool {
	sh := m.shard(c.user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	us, ok := sh.users[c.user]
	if !ok {
		return false
	}
	last := len(us.more) - 1
	switch i := slices.Index(us.more, c); {
	case us.one == c && last >= 0:
		us.one, us.more[last] = us.more[last], nil
		us.more = us.more[:last]
	case us.one == c:
		delete(sh.users, c.user)
		return true
	case i >= 0:
		us.more[i], us.more[last] = us.more[last], nil
		us.more = us.more[:last]
	default:
		return false
	}
	if len(us.more) == 0 {
		us.more = nil
	}
	sh.users[c.user] = us
	return true
}

// devices appends user's live connections to dst and returns it. With a dst
// of enough capacity it does not allocate.
func (m *sessionMap) devices(user string, dst []*conn) []*conn {
	sh := m.shard(user)
	sh.mu.RLock()
	if us, ok := sh.users[user]; ok {
		dst = append(dst, us.one)
		dst = append(dst, us.more...)
	}
	sh.mu.RUnlock()
	return dst
}

// online reports whether user has a live session on this node.
func (m *sessionMap) online(user string) bool {
	sh := m.shard(user)
	sh.mu.RLock()
	_, ok := sh.users[user]
	sh.mu.RUnlock()
	return ok
}

// limiter returns user's send limiter, making it with newLimiter on first
// use; nil when the user has no session on this node.
func (m *sessionMap) limiter(user string, newLimiter func() *rate.Limiter) *rate.Limiter {
	sh := m.shard(user)
	sh.mu.RLock()
	us, ok := sh.users[user]
	sh.mu.RUnlock()
	if !ok || us.limiter != nil {
		return us.limiter
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	us, ok = sh.users[user]
	if !ok {
		return nil
	}
	if us.limiter == nil {
		us.limiter = newLimiter()
		sh.users[user] = us
	}
	return us.limiter
}

// each calls fn for every live connection; fn must not call back into m.
func (m *sessionMap) each(fn func(*conn)) {
	var batch []*conn
	for i := range m.shards {
		sh := &m.shards[i]
		batch = batch[:0]
		sh.mu.RLock()
		for _, us := range sh.users {
			batch = append(batch, us.one)
			batch = append(batch, us.more...)
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
		users += len(sh.users)
		for _, us := range sh.users {
			conns += 1 + len(us.more)
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
