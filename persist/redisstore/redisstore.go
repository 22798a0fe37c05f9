// Package redisstore is the Redis implementation of persist.SessionStore, on
// github.com/redis/rueidis (automatic pipelining: concurrent calls share a
// few connections and are written in batches; nothing is set up per call).
//
// Data layout: one hash per user, key <KeyPrefix>{<user>} (the braces make
// the user a Redis Cluster hash tag), field = device, value =
// "<expiry ms>|<boot epoch>|<conn id>|<node id>". Redis 7.0 (Debian 12) has
// no per-field expiry (HEXPIRE is 7.4+), so each route carries its own
// expiry, in Redis server time, and reads ignore expired routes; writes drop
// the expired fields of the hash they touch and set the key's expiry to the
// latest route expiry, so an idle user's hash disappears by itself.
//
// Every write is one Lua script (EVALSHA, falling back to EVAL after a
// script cache flush), so each is atomic, and all lease arithmetic uses the
// Redis server's clock (node clocks may differ).
//
// With Config.CacheTTL set, reads use Redis's server-assisted client-side
// caching (RESP3 CLIENT TRACKING, through rueidis): a user's hash read once
// is kept in this process and Redis invalidates the copy when any node
// writes the hash, so a lookup of an unchanged user costs no round trip.
// It is off by default: Redis 7 sends a writer its own invalidation after
// the write's reply, so a lookup right after this store's own write may
// still see the old routes (the conformance suite catches it under the
// race detector); other nodes' writes are seen one network delay late.
// The cache is dropped whenever the connection to Redis is lost. Expiry is
// checked against the server's clock, estimated from a TIME reply at most
// a second old (leases are seconds long, so the estimate's error does not
// matter).
// LookupMany reads many users' routes in one pipelined round trip (only the
// users not in the cache are asked for).
//
// Every round trip is counted by operation (imgn_redis_ops_total{op} when
// Config.Registry is set; Ops): put, renew, remove, lookup and time; cache
// hits are counted apart (CacheHits).
//
// Failure behaviour: each call is bounded by Config.OpTimeout (or the
// caller's earlier deadline); errors wrap persist.ErrUnavailable (and the
// context's error on timeout). rueidis reconnects by itself after Redis
// restarts; calls fail until then. When Redis loses its data (restart
// without persistence, FLUSHALL, failover), routes are empty until the
// nodes' next Renew, which re-creates missing routes.
package redisstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/imgn/imgn/internal/opcount"
	"github.com/imgn/imgn/persist"
)

// Defaults of Config.
const (
	DefaultKeyPrefix = "im:sess:"
	DefaultOpTimeout = 2 * time.Second
)

// clockMaxAge is how old the server-clock estimate may be.
const clockMaxAge = time.Second

// Config configures a Store. The zero value of every field but Addrs (or
// Client) means its default.
type Config struct {
	// Addrs are the Redis addresses, "host:port" (required unless Client is
	// set). One address of a standalone server gives a standalone client; a
	// cluster node gives a cluster client.
	Addrs []string
	// Username and Password authenticate (AUTH), if set.
	Username, Password string
	// DB selects the database (standalone only).
	DB int
	// KeyPrefix starts every key (default DefaultKeyPrefix).
	KeyPrefix string
	// OpTimeout bounds each call when the caller's context has no earlier
	// deadline (default DefaultOpTimeout). Keep it short: a hung Redis must
	// delay a send by this much at most.
	OpTimeout time.Duration
	// Client, if set, is used instead of dialing Addrs; Close does not close
	// it. It must have been created with rueidis defaults for pipelining.
	Client rueidis.Client
	// CacheTTL, when positive, turns the client-side cache on (see the
	// package doc for what it costs) and bounds how long a cached read is
	// kept; invalidations from Redis end it earlier. 0 (the default) reads
	// from Redis every time.
	CacheTTL time.Duration
	// Registry, if set, receives imgn_redis_ops_total{op}.
	Registry prometheus.Registerer
}

// Store is the Redis persist.SessionStore. It is safe for concurrent use;
// concurrent calls are pipelined over shared connections.
type Store struct {
	c         rueidis.Client
	ownClient bool
	prefix    string
	timeout   time.Duration
	cacheTTL  time.Duration // 0: no client-side cache
	closed    atomic.Bool

	// The server clock estimate: offset = server ms - local ms, taken at
	// sampled (local Unix ns).
	clockOffset  atomic.Int64
	clockSampled atomic.Int64

	ops       *opcount.Counter
	cacheHits atomic.Uint64
}

var _ persist.SessionStore = (*Store)(nil)

// New connects to Redis and returns a Store. It fails (wrapping
// persist.ErrUnavailable) if Redis cannot be reached at all; once created,
// the store survives Redis restarts.
func New(cfg Config) (*Store, error) {
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = DefaultKeyPrefix
	}
	switch {
	case cfg.OpTimeout == 0:
		cfg.OpTimeout = DefaultOpTimeout
	case cfg.OpTimeout < 0:
		return nil, fmt.Errorf("redisstore: negative op timeout %v", cfg.OpTimeout)
	}
	if cfg.CacheTTL < 0 {
		return nil, fmt.Errorf("redisstore: negative cache TTL %v", cfg.CacheTTL)
	}
	ops, err := opcount.New(cfg.Registry, "imgn_redis_ops_total", "Round trips to Redis by the session store, by operation.")
	if err != nil {
		return nil, fmt.Errorf("redisstore: metrics: %w", err)
	}
	s := &Store{c: cfg.Client, prefix: cfg.KeyPrefix, timeout: cfg.OpTimeout, cacheTTL: cfg.CacheTTL, ops: ops}
	if s.c != nil {
		return s, nil
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("redisstore: no Redis address configured")
	}
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: cfg.Addrs,
		Username:    cfg.Username,
		Password:    cfg.Password,
		SelectDB:    cfg.DB,
		ClientName:  "imgn-sessions",
		// Server-assisted client-side caching only when asked for (see
		// the package doc).
		DisableCache:      cfg.CacheTTL == 0,
		CacheSizeEachConn: 16 << 20,
		// One pipelined connection carries reads and writes.
		PipelineMultiplex: -1,
		Dialer:            net.Dialer{Timeout: cfg.OpTimeout, KeepAlive: time.Second},
		// Detect a dead or hung server within a few seconds even when
		// callers pass no deadline, and reconnect.
		ConnWriteTimeout: max(3*time.Second, 2*cfg.OpTimeout),
	})
	if err != nil {
		ops.Unregister()
		return nil, fmt.Errorf("redisstore: connect %v: %w: %w", cfg.Addrs, persist.ErrUnavailable, err)
	}
	s.c, s.ownClient = c, true
	return s, nil
}

// key returns the hash key of user.
func (s *Store) key(user string) string { return s.prefix + "{" + user + "}" }

// ident encodes the connection part of a route: epoch|conn|node.
func ident(r persist.Route) string {
	b := make([]byte, 0, 42+len(r.NodeID))
	b = strconv.AppendInt(b, r.BootEpoch, 10)
	b = append(b, '|')
	b = strconv.AppendUint(b, r.ConnID, 10)
	b = append(b, '|')
	b = append(b, r.NodeID...)
	return string(b)
}

// parseIdent decodes ident into r.
func parseIdent(s string, r *persist.Route) error {
	epoch, rest, ok1 := strings.Cut(s, "|")
	conn, node, ok2 := strings.Cut(rest, "|")
	if !ok1 || !ok2 || node == "" {
		return fmt.Errorf("redisstore: malformed route %q", s)
	}
	var err error
	if r.BootEpoch, err = strconv.ParseInt(epoch, 10, 64); err != nil {
		return fmt.Errorf("redisstore: malformed route %q: %w", s, err)
	}
	if r.ConnID, err = strconv.ParseUint(conn, 10, 64); err != nil {
		return fmt.Errorf("redisstore: malformed route %q: %w", s, err)
	}
	r.NodeID = node
	return nil
}

// Lua: now in ms from the server clock, and the expiry of a stored value.
const luaPrelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function expiry(v)
  local sep = string.find(v, '|', 1, true)
  if not sep then return nil, nil end
  return tonumber(string.sub(v, 1, sep - 1)), string.sub(v, sep + 1)
end
`

// luaWrite stores ARGV[2] for field ARGV[1] with a lease of ARGV[3] ms,
// drops expired fields and sets the key's expiry to the latest lease.
const luaWrite = `
local function write()
  local exp = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', exp) .. '|' .. ARGV[2])
  local latest = exp
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local e = expiry(all[i + 1])
    if not e or e <= now then
      redis.call('HDEL', KEYS[1], all[i])
    elseif e > latest then
      latest = e
    end
  end
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', latest))
end
`

// putScript returns the replaced live route's ident if it names another
// connection, nil otherwise.
var putScript = rueidis.NewLuaScript(luaPrelude + luaWrite + `
local prev = false
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local e, id = expiry(old)
  if e and e > now and id ~= ARGV[2] then prev = id end
end
write()
return prev
`)

// renewScript returns 0 (replaced: another live connection holds the
// route), 1 (renewed) or 2 (re-created).
var renewScript = rueidis.NewLuaScriptRetryable(luaPrelude + luaWrite + `
local old = redis.call('HGET', KEYS[1], ARGV[1])
local res = 2
if old then
  local e, id = expiry(old)
  if e and e > now then
    if id ~= ARGV[2] then return 0 end
    res = 1
  end
end
write()
return res
`)

// removeScript deletes field ARGV[1] if its ident is ARGV[2]; returns 1 if
// deleted.
var removeScript = rueidis.NewLuaScriptRetryable(luaPrelude + `
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local _, id = expiry(old)
  if id == ARGV[2] then
    redis.call('HDEL', KEYS[1], ARGV[1])
    return 1
  end
end
return 0
`)

// begin checks the store and bounds ctx by the op timeout.
func (s *Store) begin(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return nil, nil, persist.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	return ctx, cancel, nil
}

// fail maps a driver error.
func fail(op string, err error) error {
	return fmt.Errorf("redisstore: %s: %w: %w", op, persist.ErrUnavailable, err)
}

func ttlArg(ttl time.Duration) string { return strconv.FormatInt(ttl.Milliseconds(), 10) }

// Put implements persist.SessionStore.
func (s *Store) Put(ctx context.Context, r persist.Route, ttl time.Duration) (*persist.Route, error) {
	if err := persist.CheckRoute(r); err != nil {
		return nil, err
	}
	if err := persist.CheckSessionTTL(ttl); err != nil {
		return nil, err
	}
	ctx, cancel, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	s.ops.Inc("put")
	res := putScript.Exec(ctx, s.c, []string{s.key(r.User)}, []string{r.Device, ident(r), ttlArg(ttl)})
	prev, err := res.ToString()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fail("put", err)
	}
	old := persist.Route{User: r.User, Device: r.Device}
	if err := parseIdent(prev, &old); err != nil {
		// A corrupt value was replaced: nothing to kick.
		return nil, nil
	}
	return &old, nil
}

// Renew implements persist.SessionStore.
func (s *Store) Renew(ctx context.Context, r persist.Route, ttl time.Duration) error {
	if err := persist.CheckRoute(r); err != nil {
		return err
	}
	if err := persist.CheckSessionTTL(ttl); err != nil {
		return err
	}
	ctx, cancel, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	s.ops.Inc("renew")
	res, err := renewScript.Exec(ctx, s.c, []string{s.key(r.User)}, []string{r.Device, ident(r), ttlArg(ttl)}).AsInt64()
	if err != nil {
		return fail("renew", err)
	}
	if res == 0 {
		return persist.ErrReplaced
	}
	return nil
}

// Remove implements persist.SessionStore.
func (s *Store) Remove(ctx context.Context, r persist.Route) error {
	if err := persist.CheckRoute(r); err != nil {
		return err
	}
	ctx, cancel, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	s.ops.Inc("remove")
	if err := removeScript.Exec(ctx, s.c, []string{s.key(r.User)}, []string{r.Device, ident(r)}).Error(); err != nil {
		return fail("remove", err)
	}
	return nil
}

// Lookup implements persist.SessionStore: LookupMany of one user.
func (s *Store) Lookup(ctx context.Context, user string) ([]persist.Route, error) {
	all, err := s.LookupMany(ctx, []string{user})
	if err != nil {
		return nil, err
	}
	return all[0], nil
}

// LookupMany returns the live routes of each of users (out[i] for
// users[i], each sorted by Device), reading the users missing from the
// client-side cache in one pipelined round trip. Expired routes are
// filtered against the server's clock (see the package doc).
func (s *Store) LookupMany(ctx context.Context, users []string) ([][]persist.Route, error) {
	for _, u := range users {
		if err := persist.CheckID("user", u); err != nil {
			return nil, err
		}
	}
	ctx, cancel, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	now, err := s.serverNow(ctx)
	if err != nil {
		return nil, fail("lookup", err)
	}
	var resps []rueidis.RedisResult
	if s.cacheTTL > 0 {
		cmds := make([]rueidis.CacheableTTL, len(users))
		for i, u := range users {
			cmds[i] = rueidis.CT(s.c.B().Hgetall().Key(s.key(u)).Cache(), s.cacheTTL)
		}
		resps = s.c.DoMultiCache(ctx, cmds...)
		missed := false
		for _, r := range resps {
			if r.IsCacheHit() {
				s.cacheHits.Add(1)
			} else {
				missed = true
			}
		}
		if missed {
			s.ops.Inc("lookup")
		}
	} else {
		cmds := make(rueidis.Commands, len(users))
		for i, u := range users {
			cmds[i] = s.c.B().Hgetall().Key(s.key(u)).Build()
		}
		s.ops.Inc("lookup")
		resps = s.c.DoMulti(ctx, cmds...)
	}
	out := make([][]persist.Route, len(users))
	for i, u := range users {
		fields, err := resps[i].AsStrMap()
		if err != nil {
			return nil, fail("lookup", err)
		}
		out[i] = parseRoutes(u, fields, now)
	}
	return out, nil
}

// parseRoutes decodes a user's hash, keeping the routes live at now.
func parseRoutes(user string, fields map[string]string, now int64) []persist.Route {
	routes := make([]persist.Route, 0, len(fields))
	for device, v := range fields {
		exp, id, ok := strings.Cut(v, "|")
		if !ok {
			continue // not written by this package: ignore
		}
		if e, err := strconv.ParseInt(exp, 10, 64); err != nil || e <= now {
			continue
		}
		r := persist.Route{User: user, Device: device}
		if parseIdent(id, &r) != nil {
			continue
		}
		routes = append(routes, r)
	}
	sortByDevice(routes)
	return routes
}

// serverNow returns the Redis server's clock in Unix ms: the local clock
// plus an offset measured with TIME at most clockMaxAge ago (one round trip
// when older).
func (s *Store) serverNow(ctx context.Context) (int64, error) {
	local := time.Now()
	if sampled := s.clockSampled.Load(); sampled != 0 && local.UnixNano()-sampled < int64(clockMaxAge) {
		return local.UnixMilli() + s.clockOffset.Load(), nil
	}
	s.ops.Inc("time")
	t0 := time.Now()
	server, err := serverMillis(s.c.Do(ctx, s.c.B().Time().Build()))
	if err != nil {
		return 0, err
	}
	// The reply was made somewhere between t0 and now: take the middle.
	t1 := time.Now()
	mid := t0.Add(t1.Sub(t0) / 2)
	s.clockOffset.Store(server - mid.UnixMilli())
	s.clockSampled.Store(t1.UnixNano())
	return t1.UnixMilli() + s.clockOffset.Load(), nil
}

// Ops returns the round trips to Redis so far, by operation.
func (s *Store) Ops() map[string]uint64 { return s.ops.Snapshot() }

// CacheHits returns how many user lookups the client-side cache answered.
func (s *Store) CacheHits() uint64 { return s.cacheHits.Load() }

// serverMillis decodes a TIME reply into Unix milliseconds.
func serverMillis(res rueidis.RedisResult) (int64, error) {
	t, err := res.AsStrSlice()
	if err != nil {
		return 0, err
	}
	if len(t) != 2 {
		return 0, fmt.Errorf("redisstore: TIME reply %q", t)
	}
	sec, err1 := strconv.ParseInt(t[0], 10, 64)
	usec, err2 := strconv.ParseInt(t[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("redisstore: TIME reply %q", t)
	}
	return sec*1000 + usec/1000, nil
}

// sortByDevice sorts a user's few routes (insertion sort: no allocation).
func sortByDevice(routes []persist.Route) {
	for i := 1; i < len(routes); i++ {
		for j := i; j > 0 && routes[j].Device < routes[j-1].Device; j-- {
			routes[j], routes[j-1] = routes[j-1], routes[j]
		}
	}
}

// Close implements persist.SessionStore. It closes the client if the store
// created it (stopping its background goroutines); later calls return
// persist.ErrClosed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.ownClient {
		s.c.Close()
	}
	s.ops.Unregister()
	return nil
}
