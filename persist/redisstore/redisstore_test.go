package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/goleak"

	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/sessiontest"
)

// TestMain fails the package if a test leaves a goroutine behind. Goroutines
// that exist before the tests start (started by package initialisation of
// dependencies, e.g. the ants pool that gnet brings in) are not ours.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent(),
		// rueidis sleeps out a reconnect backoff (under a second) in a goroutine
		// that outlives Close and then exits on its own.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"))
}

var prefixes atomic.Int64

// newStore returns a store with a key prefix no other store uses, closed
// when the test ends.
func newStore(t testing.TB, addr string, opTimeout time.Duration) *Store {
	t.Helper()
	s, err := New(Config{Addrs: []string{addr}, KeyPrefix: fmt.Sprintf("t%d:sess:", prefixes.Add(1)), OpTimeout: opTimeout})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// rawClient is a plain client for inspecting and disturbing Redis.
func rawClient(t testing.TB, addr string) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestShared(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartRedis(t)
	t.Run("Conformance", func(t *testing.T) {
		sessiontest.Run(t, func(t *testing.T) persist.SessionStore { return newStore(t, svc.Addr, 0) })
	})
	t.Run("KeyLayout", func(t *testing.T) { testKeyLayout(t, svc) })
	t.Run("ForeignValuesIgnored", func(t *testing.T) { testForeignValues(t, svc) })
}

func TestConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without an address succeeded")
	}
	if _, err := New(Config{Addrs: []string{"127.0.0.1:1"}, OpTimeout: -1}); err == nil {
		t.Error("New with a negative timeout succeeded")
	}
	port, err := testsvc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = New(Config{Addrs: []string{fmt.Sprintf("127.0.0.1:%d", port)}, OpTimeout: 200 * time.Millisecond})
	if !errors.Is(err, persist.ErrUnavailable) {
		t.Errorf("New with nothing listening = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("New took %v to fail", d)
	}
}

func testKeyLayout(t *testing.T, svc *testsvc.Service) {
	s := newStore(t, svc.Addr, 0)
	raw := rawClient(t, svc.Addr)
	ctx := context.Background()
	r := persist.Route{User: "alice", Device: "phone", NodeID: "node-1", BootEpoch: 42, ConnID: 7}
	if _, err := s.Put(ctx, r, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	key := s.prefix + "{alice}"
	v, err := raw.Do(ctx, raw.B().Hget().Key(key).Field("phone").Build()).ToString()
	if err != nil {
		t.Fatalf("HGET %s phone: %v", key, err)
	}
	exp, rest, _ := strings.Cut(v, "|")
	if rest != "42|7|node-1" || len(exp) < 13 {
		t.Fatalf("stored value %q, want <expiry ms>|42|7|node-1", v)
	}
	pttl, err := raw.Do(ctx, raw.B().Pttl().Key(key).Build()).AsInt64()
	if err != nil || pttl <= 0 || pttl > 30000 {
		t.Fatalf("PTTL = %d, %v: want the route's lease", pttl, err)
	}
	// A longer lease on another device extends the key; expired fields
	// are dropped by the next write.
	if _, err := s.Put(ctx, persist.Route{User: "alice", Device: "laptop", NodeID: "node-1", BootEpoch: 42, ConnID: 8}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if pttl, _ := raw.Do(ctx, raw.B().Pttl().Key(key).Build()).AsInt64(); pttl <= 30000 {
		t.Fatalf("PTTL = %d after a one-hour lease", pttl)
	}
	if _, err := s.Put(ctx, persist.Route{User: "alice", Device: "watch", NodeID: "node-1", BootEpoch: 42, ConnID: 9}, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the watch route expires", func() error {
		routes, err := s.Lookup(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) != 2 {
			return fmt.Errorf("routes %+v", routes)
		}
		return nil
	})
	if n, _ := raw.Do(ctx, raw.B().Hlen().Key(key).Build()).AsInt64(); n != 3 {
		t.Fatalf("HLEN = %d before the next write, want 3 (reads do not write)", n)
	}
	if err := s.Renew(ctx, r, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if n, _ := raw.Do(ctx, raw.B().Hlen().Key(key).Build()).AsInt64(); n != 2 {
		t.Fatalf("HLEN = %d after a write, want 2 (the expired field dropped)", n)
	}
	// Removing every route removes the key.
	for _, d := range []persist.Route{r, {User: "alice", Device: "laptop", NodeID: "node-1", BootEpoch: 42, ConnID: 8}} {
		if err := s.Remove(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := raw.Do(ctx, raw.B().Exists().Key(key).Build()).AsInt64(); n != 0 {
		t.Fatalf("key %s still exists after every route was removed", key)
	}
}

// testForeignValues: values this package did not write are ignored by
// Lookup and replaced by writes, never a crash or an error.
func testForeignValues(t *testing.T, svc *testsvc.Service) {
	s := newStore(t, svc.Addr, 0)
	raw := rawClient(t, svc.Addr)
	ctx := context.Background()
	key := s.prefix + "{bob}"
	far := fmt.Sprint(time.Now().Add(time.Hour).UnixMilli())
	for field, v := range map[string]string{"a": "garbage", "b": far + "|x|1|n", "c": far + "|1|2|", "d": far + "|1|2|node"} {
		if err := raw.Do(ctx, raw.B().Hset().Key(key).FieldValue().FieldValue(field, v).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	routes, err := s.Lookup(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if want := []persist.Route{{User: "bob", Device: "d", NodeID: "node", BootEpoch: 1, ConnID: 2}}; len(routes) != 1 || routes[0] != want[0] {
		t.Fatalf("Lookup = %+v, want %+v", routes, want)
	}
	old, err := s.Put(ctx, persist.Route{User: "bob", Device: "b", NodeID: "n2", BootEpoch: 1, ConnID: 3}, time.Minute)
	if err != nil || old != nil {
		t.Fatalf("Put over a malformed value = %+v, %v; want nil, nil", old, err)
	}
}

// TestRedisRestart stops Redis: calls fail fast with ErrUnavailable; after a
// restart (no persistence: the data is gone) the same store works again
// without any action, and Renew re-creates the lost routes.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartRedis(t)
	s := newStore(t, svc.Addr, 500*time.Millisecond)
	ctx := context.Background()
	r := persist.Route{User: "carol", Device: "phone", NodeID: "node-1", BootEpoch: 1, ConnID: 1}
	if _, err := s.Put(ctx, r, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := svc.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, op := range []func() error{
		func() error { _, err := s.Lookup(ctx, "carol"); return err },
		func() error { _, err := s.Put(ctx, r, time.Minute); return err },
		func() error { return s.Renew(ctx, r, time.Minute) },
		func() error { return s.Remove(ctx, r) },
	} {
		start := time.Now()
		err := op()
		if !errors.Is(err, persist.ErrUnavailable) {
			t.Fatalf("call with Redis down = %v, want ErrUnavailable", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("call with Redis down took %v (op timeout 500ms)", d)
		}
	}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	deadline := restarted.Add(10 * time.Second)
	for {
		routes, err := s.Lookup(ctx, "carol")
		if err == nil {
			if len(routes) != 0 {
				t.Fatalf("Lookup after a restart without persistence = %+v, want empty", routes)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover within 10s of the restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("store usable %v after the restart", time.Since(restarted).Round(time.Millisecond))
	if err := s.Renew(ctx, r, time.Minute); err != nil {
		t.Fatalf("Renew after the restart: %v", err)
	}
	if routes, err := s.Lookup(ctx, "carol"); err != nil || len(routes) != 1 || routes[0] != r {
		t.Fatalf("Lookup after Renew = %+v, %v; want the re-created route", routes, err)
	}
}

// TestRedisPause freezes Redis: calls time out (ErrUnavailable and
// DeadlineExceeded) within the op timeout, then work again after resume.
func TestRedisPause(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartRedis(t)
	s := newStore(t, svc.Addr, 300*time.Millisecond)
	ctx := context.Background()
	r := persist.Route{User: "dave", Device: "phone", NodeID: "node-1", BootEpoch: 1, ConnID: 1}
	if _, err := s.Put(ctx, r, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := svc.Pause(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := s.Lookup(ctx, "dave")
	if !errors.Is(err, persist.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lookup with Redis paused = %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Lookup with Redis paused took %v (op timeout 300ms)", d)
	}
	// The caller's own deadline wins when it is earlier.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	start = time.Now()
	err = s.Renew(short, r, time.Minute)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("Renew with a 50ms deadline = %v after %v", err, time.Since(start))
	}
	if err := svc.Resume(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the store recovers after the resume", func() error {
		routes, err := s.Lookup(ctx, "dave")
		if err == nil && (len(routes) != 1 || routes[0] != r) {
			t.Fatalf("Lookup after resume = %+v", routes)
		}
		return err
	})
}

// TestFlushAll: Redis loses every route (FLUSHALL, as after a failover to
// an empty replica): lookups are empty, nothing fails, and the nodes'
// next Renew publishes the routes again.
func TestFlushAll(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartRedis(t)
	s := newStore(t, svc.Addr, 0)
	raw := rawClient(t, svc.Addr)
	ctx := context.Background()
	routes := []persist.Route{
		{User: "erin", Device: "phone", NodeID: "node-1", BootEpoch: 1, ConnID: 1},
		{User: "erin", Device: "laptop", NodeID: "node-2", BootEpoch: 3, ConnID: 9},
		{User: "fred", Device: "phone", NodeID: "node-1", BootEpoch: 1, ConnID: 2},
	}
	for _, r := range routes {
		if _, err := s.Put(ctx, r, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if err := raw.Do(ctx, raw.B().Flushall().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// Scripts are still cached after FLUSHALL; flush them too, as a
	// restart would (EVALSHA then falls back to EVAL).
	if err := raw.Do(ctx, raw.B().ScriptFlush().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"erin", "fred"} {
		got, err := s.Lookup(ctx, u)
		if err != nil || len(got) != 0 {
			t.Fatalf("Lookup(%s) after FLUSHALL = %+v, %v; want empty", u, got, err)
		}
	}
	for _, r := range routes {
		if err := s.Renew(ctx, r, time.Minute); err != nil {
			t.Fatalf("Renew after FLUSHALL: %v", err)
		}
	}
	got, err := s.Lookup(ctx, "erin")
	if err != nil || len(got) != 2 || got[0] != routes[1] || got[1] != routes[0] {
		t.Fatalf("Lookup(erin) after renewals = %+v, %v", got, err)
	}
}

func TestIdentRoundTrip(t *testing.T) {
	for _, r := range []persist.Route{
		{NodeID: "n", BootEpoch: 0, ConnID: 0},
		{NodeID: "node|with|bars", BootEpoch: -1 << 63, ConnID: 1<<64 - 1},
		{NodeID: "é", BootEpoch: 1<<63 - 1, ConnID: 5},
	} {
		var got persist.Route
		if err := parseIdent(ident(r), &got); err != nil || got != r {
			t.Errorf("parseIdent(ident(%+v)) = %+v, %v", r, got, err)
		}
	}
	for _, bad := range []string{"", "1", "1|2", "1|2|", "x|2|n", "1|x|n", "1|-2|n"} {
		var got persist.Route
		if err := parseIdent(bad, &got); err == nil {
			t.Errorf("parseIdent(%q) succeeded: %+v", bad, got)
		}
	}
}

// BenchmarkSessions measures the store against a real local Redis (one
// redis-server, loopback). See docs/BENCHMARKS.md (session store).
func BenchmarkSessions(b *testing.B) {
	svc := testsvc.StartRedis(b)
	sessiontest.Bench(b, func(b *testing.B) persist.SessionStore { return newStore(b, svc.Addr, 0) })
}

// BenchmarkRawHGETALL is the floor for Lookup: the same hashes read with a
// plain HGETALL over the same kind of client, without the script, the
// expiry filter and the decoding.
func BenchmarkRawHGETALL(b *testing.B) {
	svc := testsvc.StartRedis(b)
	s := newStore(b, svc.Addr, 0)
	ctx := context.Background()
	for i := range 10000 {
		for d := range 2 {
			r := persist.Route{User: fmt.Sprintf("user-%d", i), Device: fmt.Sprintf("dev-%d", d), NodeID: "node-1", BootEpoch: 1, ConnID: uint64(i + 1)}
			if _, err := s.Put(ctx, r, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	}
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(n.Add(1)) * 7919
		for pb.Next() {
			i++
			key := s.key(fmt.Sprintf("user-%d", i%10000))
			if _, err := s.c.Do(ctx, s.c.B().Hgetall().Key(key).Build()).AsStrMap(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if sec := b.Elapsed().Seconds(); sec > 0 {
		b.ReportMetric(float64(b.N)/sec, "lookups/s")
	}
}

// TestCachedLookups: lookups are answered from the client-side cache
// until some node writes the user's hash; another node's write, a raw
// write and a FLUSHALL all reach this node's cache (Redis invalidates it);
// LookupMany asks for every uncached user in one round trip.
func TestCachedLookups(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartRedis(t)
	prefix := fmt.Sprintf("t%d:sess:", prefixes.Add(1))
	open := func() *Store {
		s, err := New(Config{Addrs: []string{svc.Addr}, KeyPrefix: prefix, CacheTTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := open(), open()
	ctx := t.Context()
	bob := persist.Route{User: "bob", Device: "phone", NodeID: "n2", BootEpoch: 1, ConnID: 7}
	if _, err := b.Put(ctx, bob, time.Minute); err != nil {
		t.Fatal(err)
	}
	users := []string{"bob", "carol", "dave"}
	before := a.Ops()["lookup"]
	got, err := a.LookupMany(ctx, users)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || len(got[0]) != 1 || got[0][0] != bob || len(got[1]) != 0 || len(got[2]) != 0 {
		t.Fatalf("LookupMany = %+v", got)
	}
	if n := a.Ops()["lookup"] - before; n != 1 {
		t.Fatalf("LookupMany of 3 uncached users took %d round trips, want 1", n)
	}
	hits := a.CacheHits()
	for range 5 {
		if _, err := a.LookupMany(ctx, users); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.Ops()["lookup"] - before; n != 1 || a.CacheHits()-hits != 15 {
		t.Fatalf("unchanged users: %d lookup round trips, %d cache hits; want 1 and 15", n, a.CacheHits()-hits)
	}
	// Another node moves carol's session: a sees it.
	carol := persist.Route{User: "carol", Device: "pc", NodeID: "n3", BootEpoch: 2, ConnID: 9}
	if _, err := b.Put(ctx, carol, time.Minute); err != nil {
		t.Fatal(err)
	}
	seen := func(user string, want ...persist.Route) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			rs, err := a.Lookup(ctx, user)
			if err == nil && fmt.Sprint(rs) == fmt.Sprint(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("Lookup(%s) = %+v, %v; want %+v (stale cache?)", user, rs, err, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	seen("carol", carol)
	// This node's own write reaches its cache too (Redis 7 sends the
	// writer's invalidation after the write's reply, so not necessarily
	// at once: why the cache is off by default).
	dave := persist.Route{User: "dave", Device: "pc", NodeID: "n1", BootEpoch: 3, ConnID: 1}
	if _, err := a.Put(ctx, dave, time.Minute); err != nil {
		t.Fatal(err)
	}
	seen("dave", dave)
	// A FLUSHALL empties the cache too.
	raw := rawClient(t, svc.Addr)
	if err := raw.Do(ctx, raw.B().Flushall().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	seen("bob")
	seen("dave")
}
