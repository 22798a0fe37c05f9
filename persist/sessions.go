package persist

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrReplaced is returned by SessionStore.Renew when another connection now
// holds the (user, device) route: this connection was replaced by a newer
// login (possibly on another node) and should be closed.
var ErrReplaced = errors.New("persist: session route replaced by another connection")

// Session lease bounds accepted by every SessionStore.
const (
	// MinSessionTTL is the shortest lease (leases have millisecond
	// resolution).
	MinSessionTTL = time.Millisecond
	// MaxSessionTTL is the longest lease: a route must be renewed at least
	// this often.
	MaxSessionTTL = 24 * time.Hour
)

// Route says where one device of a user is connected: which node, which
// run of that node, which connection. Routes are leases: they disappear
// unless renewed.
type Route struct {
	// User and Device identify the session; one route per (User, Device)
	// exists at a time, cluster-wide.
	User   string
	Device string
	// NodeID is the node holding the connection.
	NodeID string
	// BootEpoch is that node's boot epoch (membership.NodeInfo.BootEpoch): a
	// route naming an older epoch than the registry's is stale.
	BootEpoch int64
	// ConnID identifies the connection within the node run.
	ConnID uint64
}

// SameConn reports whether r and o name the same connection (node, boot
// epoch and connection id; user and device are not compared).
func (r Route) SameConn(o Route) bool {
	return r.NodeID == o.NodeID && r.BootEpoch == o.BootEpoch && r.ConnID == o.ConnID
}

// CheckRoute returns nil when r can be stored (User, Device and NodeID are
// valid ids, see CheckID) and an error wrapping ErrInvalid otherwise.
func CheckRoute(r Route) error {
	if err := CheckID("user", r.User); err != nil {
		return err
	}
	if err := CheckID("device", r.Device); err != nil {
		return err
	}
	return CheckID("node id", r.NodeID)
}

// CheckSessionTTL returns nil when ttl is within [MinSessionTTL,
// MaxSessionTTL] and an error wrapping ErrInvalid otherwise.
func CheckSessionTTL(ttl time.Duration) error {
	if ttl < MinSessionTTL || ttl > MaxSessionTTL {
		return fmt.Errorf("%w: session ttl %v outside [%v, %v]", ErrInvalid, ttl, MinSessionTTL, MaxSessionTTL)
	}
	return nil
}

// SessionStore records where each user's devices are connected
// (docs/cluster.md): user -> device -> route, each route a lease renewed by the
// connection's heartbeat. It is advisory: a route may point at a node that
// died (FilterLive drops those), and a lost route only delays delivery
// (messages stay in the inbox for sync), never loses it.
//
// Implementations are safe for concurrent use. Each operation on one
// (user, device) is atomic. Errors from the backend wrap ErrUnavailable (and
// the context's error when ctx ended); after Close, ErrClosed.
type SessionStore interface {
	// Put registers r with a lease of ttl, replacing any route of the same
	// (User, Device). If the replaced route was live and named another
	// connection, it is returned so that the caller can kick that
	// connection cluster-wide; otherwise old is nil (putting the same
	// connection again just renews it).
	Put(ctx context.Context, r Route, ttl time.Duration) (old *Route, err error)

	// Renew extends the lease of r to ttl from now if r is still the
	// route of (User, Device). If no live route exists (it expired, or
	// the backend lost its data, e.g. a Redis FLUSHALL or a restart
	// without persistence), Renew re-creates r, so routes heal at the next
	// heartbeat. If another connection holds the route, Renew changes
	// nothing and returns ErrReplaced. Because of the re-creation, a
	// connection must stop renewing before its route is removed: a Renew
	// that lands after Remove brings the route back until its lease ends.
	Renew(ctx context.Context, r Route, ttl time.Duration) error

	// Remove deletes the route of (r.User, r.Device) only if it still
	// names r's connection (compare-and-delete), so a late logout never
	// removes a newer login. Removing a missing or replaced route is a
	// no-op.
	Remove(ctx context.Context, r Route) error

	// Lookup returns the live routes of user (all devices), sorted by
	// Device; none is not an error.
	Lookup(ctx context.Context, user string) ([]Route, error)

	// Close releases the store; later calls return ErrClosed. Close is
	// idempotent.
	Close() error
}

// FilterLive returns the routes whose node is live, i.e. for which
// isLive(NodeID, BootEpoch) is true: a route to a node missing from the
// registry, or naming an older boot epoch than the registered one, is stale
// (the message stays in the inbox for sync). It returns a new slice, in
// the order of routes, and does not modify routes. isLive is called once
// per route.
func FilterLive(routes []Route, isLive func(nodeID string, bootEpoch int64) bool) []Route {
	live := make([]Route, 0, len(routes))
	for _, r := range routes {
		if isLive(r.NodeID, r.BootEpoch) {
			live = append(live, r)
		}
	}
	return live
}

// memShards is the number of independently locked parts of a
// MemorySessionStore.
const memShards = 64

// memSweepEvery bounds how often a shard is scanned for expired routes.
const memSweepEvery = 5 * time.Second

// MemorySessionStore is the in-process SessionStore: the single-node
// default, and the reference for the conformance suite. Routes live in a
// sharded map (one lock per shard, by user); expired routes are invisible
// at once and reclaimed by an occasional sweep of a shard during writes to
// it, so the store has no goroutines. Leases use the monotonic clock.
type MemorySessionStore struct {
	seed   maphash.Seed
	closed atomic.Bool
	shards [memShards]memShard
}

type memShard struct {
	mu        sync.Mutex
	users     map[string]map[string]memRoute // user -> device -> route
	lastSweep time.Time
}

type memRoute struct {
	r   Route
	exp time.Time
}

var _ SessionStore = (*MemorySessionStore)(nil)

// NewMemorySessionStore returns an empty store.
func NewMemorySessionStore() *MemorySessionStore {
	s := &MemorySessionStore{seed: maphash.MakeSeed()}
	now := time.Now()
	for i := range s.shards {
		s.shards[i].users = make(map[string]map[string]memRoute)
		s.shards[i].lastSweep = now
	}
	return s
}

func (s *MemorySessionStore) shard(user string) *memShard {
	return &s.shards[maphash.String(s.seed, user)%memShards]
}

func (s *MemorySessionStore) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Put implements SessionStore.
func (s *MemorySessionStore) Put(ctx context.Context, r Route, ttl time.Duration) (*Route, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if err := CheckRoute(r); err != nil {
		return nil, err
	}
	if err := CheckSessionTTL(ttl); err != nil {
		return nil, err
	}
	sh := s.shard(r.User)
	now := time.Now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	devices := sh.users[r.User]
	if devices == nil {
		devices = make(map[string]memRoute, 1)
		sh.users[r.User] = devices
	}
	var old *Route
	if cur, ok := devices[r.Device]; ok && cur.exp.After(now) && !cur.r.SameConn(r) {
		o := cur.r
		old = &o
	}
	devices[r.Device] = memRoute{r: r, exp: now.Add(ttl)}
	sh.maybeSweep(now)
	return old, nil
}

// Renew implements SessionStore.
func (s *MemorySessionStore) Renew(ctx context.Context, r Route, ttl time.Duration) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if err := CheckRoute(r); err != nil {
		return err
	}
	if err := CheckSessionTTL(ttl); err != nil {
		return err
	}
	sh := s.shard(r.User)
	now := time.Now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	devices := sh.users[r.User]
	if cur, ok := devices[r.Device]; ok && cur.exp.After(now) && !cur.r.SameConn(r) {
		return ErrReplaced
	}
	if devices == nil {
		devices = make(map[string]memRoute, 1)
		sh.users[r.User] = devices
	}
	devices[r.Device] = memRoute{r: r, exp: now.Add(ttl)}
	sh.maybeSweep(now)
	return nil
}

// Remove implements SessionStore.
func (s *MemorySessionStore) Remove(ctx context.Context, r Route) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if err := CheckRoute(r); err != nil {
		return err
	}
	sh := s.shard(r.User)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	devices := sh.users[r.User]
	if cur, ok := devices[r.Device]; ok && cur.r.SameConn(r) {
		delete(devices, r.Device)
		if len(devices) == 0 {
			delete(sh.users, r.User)
		}
	}
	return nil
}

// Lookup implements SessionStore.
func (s *MemorySessionStore) Lookup(ctx context.Context, user string) ([]Route, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if err := CheckID("user", user); err != nil {
		return nil, err
	}
	sh := s.shard(user)
	now := time.Now()
	sh.mu.Lock()
	devices := sh.users[user]
	routes := make([]Route, 0, len(devices))
	for _, cur := range devices {
		if cur.exp.After(now) {
			routes = append(routes, cur.r)
		}
	}
	sh.mu.Unlock()
	slices.SortFunc(routes, func(a, b Route) int { return cmp.Compare(a.Device, b.Device) })
	return routes, nil
}

// Close implements SessionStore.
func (s *MemorySessionStore) Close() error {
	s.closed.Store(true)
	return nil
}

// maybeSweep drops the shard's expired routes if it was not swept for a
// while. The shard's lock must be held.
func (sh *memShard) maybeSweep(now time.Time) {
	if now.Sub(sh.lastSweep) < memSweepEvery {
		return
	}
	sh.lastSweep = now
	for user, devices := range sh.users {
		for device, cur := range devices {
			if !cur.exp.After(now) {
				delete(devices, device)
			}
		}
		if len(devices) == 0 {
			delete(sh.users, user)
		}
	}
}
