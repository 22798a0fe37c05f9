// Package sessiontest is the conformance suite of persist.SessionStore:
// every implementation runs Run from its own tests, so that all session
// stores give the guarantees documented in persist/sessions.go. Bench holds
// the shared benchmarks.
//
// Lease expiry is checked by polling with a deadline, never by sleeping for
// a fixed time and asserting.
package sessiontest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/persist"
)

// Run runs the conformance suite against the stores made by open. open is
// called once per subtest, possibly from parallel subtests, and must return
// a fresh, empty store or fail t; stores from different calls must not share
// routes (e.g. a distinct key prefix on one Redis server). The suite closes
// every store it gets.
func Run(t *testing.T, open func(t *testing.T) persist.SessionStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s persist.SessionStore)
	}{
		{"PutLookupRoundTrip", testRoundTrip},
		{"DevicesAndUsersAreSeparate", testSeparation},
		{"PutReplacesAndReturnsOld", testReplace},
		{"PutSameConnectionReturnsNoOld", testPutSameConn},
		{"LeaseExpires", testExpiry},
		{"PutOverExpiredReturnsNoOld", testPutOverExpired},
		{"RenewExtends", testRenewExtends},
		{"RenewRecreatesMissing", testRenewRecreates},
		{"RenewReplaced", testRenewReplaced},
		{"RemoveIsCompareAndDelete", testRemove},
		{"Invalid", testInvalid},
		{"ContextDone", testContextDone},
		{"ConcurrentLoginsChain", testConcurrentLogins},
		{"ConcurrentMixedOps", testConcurrentMixed},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, openStore(t, open))
		})
	}
}

func openStore(t *testing.T, open func(t *testing.T) persist.SessionStore) persist.SessionStore {
	t.Helper()
	s := open(t)
	if s == nil {
		t.Fatal("open returned a nil store")
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, persist.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

const (
	long   = time.Minute
	settle = 10 * time.Second // bound for lease expiry to become visible
	short  = 300 * time.Millisecond
)

func route(user, device, node string, epoch int64, conn uint64) persist.Route {
	return persist.Route{User: user, Device: device, NodeID: node, BootEpoch: epoch, ConnID: conn}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustPut(t *testing.T, s persist.SessionStore, r persist.Route, ttl time.Duration) *persist.Route {
	t.Helper()
	old, err := s.Put(ctx(t), r, ttl)
	if err != nil {
		t.Fatalf("Put(%+v): %v", r, err)
	}
	return old
}

func lookup(t *testing.T, s persist.SessionStore, user string) []persist.Route {
	t.Helper()
	routes, err := s.Lookup(ctx(t), user)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", user, err)
	}
	return routes
}

func wantRoutes(t *testing.T, s persist.SessionStore, user string, want ...persist.Route) {
	t.Helper()
	if got := lookup(t, s, user); !sameRoutes(got, want) {
		t.Fatalf("Lookup(%q) = %+v, want %+v", user, got, want)
	}
}

func sameRoutes(got, want []persist.Route) bool {
	return len(got) == 0 && len(want) == 0 || slices.Equal(got, want)
}

// eventually polls until Lookup(user) returns want or settle passes.
func eventually(t *testing.T, s persist.SessionStore, user string, what string, want ...persist.Route) {
	t.Helper()
	testutil.Eventually(t, settle, what, func() error {
		if got := lookup(t, s, user); !sameRoutes(got, want) {
			return fmt.Errorf("Lookup(%q) = %+v, want %+v", user, got, want)
		}
		return nil
	})
}

func testRoundTrip(t *testing.T, s persist.SessionStore) {
	wantRoutes(t, s, "alice") // unknown user: empty, no error
	r := route("alice", "phone", "node-1", 1234567890123456789, 1<<63+5)
	if old := mustPut(t, s, r, long); old != nil {
		t.Fatalf("first Put returned old %+v", old)
	}
	wantRoutes(t, s, "alice", r)
	// Every field survives, including awkward characters.
	odd := route("user|{x}:é", "dev|ice 1", "node|with:sep", -7, 0)
	mustPut(t, s, odd, long)
	wantRoutes(t, s, odd.User, odd)
	big := route(strings.Repeat("u", persist.MaxIDLen), strings.Repeat("d", persist.MaxIDLen), strings.Repeat("n", persist.MaxIDLen), 1, 1)
	mustPut(t, s, big, long)
	wantRoutes(t, s, big.User, big)
}

func testSeparation(t *testing.T, s persist.SessionStore) {
	a1 := route("a", "phone", "n1", 1, 1)
	a2 := route("a", "laptop", "n2", 1, 2)
	ab := route("ab", "phone", "n1", 1, 3)
	b := route("b", "phone", "n1", 1, 4)
	for _, r := range []persist.Route{a1, a2, ab, b} {
		if old := mustPut(t, s, r, long); old != nil {
			t.Fatalf("Put(%+v) returned old %+v", r, old)
		}
	}
	wantRoutes(t, s, "a", a2, a1) // sorted by device
	wantRoutes(t, s, "ab", ab)
	wantRoutes(t, s, "b", b)
}

func testReplace(t *testing.T, s persist.SessionStore) {
	first := route("bob", "phone", "node-a", 10, 1)
	other := route("bob", "tablet", "node-a", 10, 9)
	mustPut(t, s, first, long)
	mustPut(t, s, other, long)
	// Same device: another connection on the same node, then one on
	// another node, then a new run of the first node.
	for i, next := range []persist.Route{
		route("bob", "phone", "node-a", 10, 2),
		route("bob", "phone", "node-b", 10, 2),
		route("bob", "phone", "node-b", 11, 2),
	} {
		old := mustPut(t, s, next, long)
		if old == nil || *old != first {
			t.Fatalf("step %d: Put returned old %+v, want %+v", i, old, first)
		}
		wantRoutes(t, s, "bob", route("bob", "phone", next.NodeID, next.BootEpoch, next.ConnID), other)
		first = next
	}
}

func testPutSameConn(t *testing.T, s persist.SessionStore) {
	r := route("carol", "phone", "node-a", 1, 7)
	mustPut(t, s, r, long)
	if old := mustPut(t, s, r, long); old != nil {
		t.Fatalf("Put of the same connection returned old %+v: the caller would kick itself", old)
	}
	wantRoutes(t, s, "carol", r)
}

func testExpiry(t *testing.T, s persist.SessionStore) {
	shortR := route("dave", "phone", "node-a", 1, 1)
	longR := route("dave", "laptop", "node-a", 1, 2)
	mustPut(t, s, shortR, short)
	mustPut(t, s, longR, long)
	start := time.Now()
	eventually(t, s, "dave", "the short lease expires", longR)
	if d := time.Since(start); d < short-50*time.Millisecond {
		t.Fatalf("a %v lease vanished after %v", short, d)
	}
	// A user whose every route expired is simply empty.
	mustPut(t, s, route("erin", "phone", "node-a", 1, 1), short)
	eventually(t, s, "erin", "the only lease expires")
}

func testPutOverExpired(t *testing.T, s persist.SessionStore) {
	mustPut(t, s, route("fay", "phone", "node-a", 1, 1), 50*time.Millisecond)
	eventually(t, s, "fay", "the lease expires")
	next := route("fay", "phone", "node-b", 1, 2)
	if old := mustPut(t, s, next, long); old != nil {
		t.Fatalf("Put over an expired route returned old %+v (nothing to kick)", old)
	}
	wantRoutes(t, s, "fay", next)
}

func testRenewExtends(t *testing.T, s persist.SessionStore) {
	r := route("gus", "phone", "node-a", 1, 1)
	const ttl = 400 * time.Millisecond
	mustPut(t, s, r, ttl)
	// Renew every ttl/4 for 3 ttl: the route never disappears.
	end := time.Now().Add(3 * ttl)
	for time.Now().Before(end) {
		if err := s.Renew(ctx(t), r, ttl); err != nil {
			t.Fatalf("Renew: %v", err)
		}
		wantRoutes(t, s, "gus", r)
		time.Sleep(ttl / 4)
	}
	// A renewal sets the lease to ttl from now: a shorter one shortens it.
	if err := s.Renew(ctx(t), r, short); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	eventually(t, s, "gus", "the renewed short lease expires")
}

func testRenewRecreates(t *testing.T, s persist.SessionStore) {
	r := route("hal", "phone", "node-a", 1, 1)
	if err := s.Renew(ctx(t), r, long); err != nil {
		t.Fatalf("Renew of a missing route: %v", err)
	}
	wantRoutes(t, s, "hal", r)
	// After expiry, too.
	if err := s.Renew(ctx(t), r, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	eventually(t, s, "hal", "the lease expires")
	if err := s.Renew(ctx(t), r, long); err != nil {
		t.Fatalf("Renew of an expired route: %v", err)
	}
	wantRoutes(t, s, "hal", r)
	// An expired route of another connection does not block it either.
	other := route("hal", "laptop", "node-b", 1, 5)
	mustPut(t, s, other, 50*time.Millisecond)
	eventually(t, s, "hal", "the other lease expires", r)
	mine := route("hal", "laptop", "node-a", 1, 6)
	if err := s.Renew(ctx(t), mine, long); err != nil {
		t.Fatalf("Renew over another connection's expired route: %v", err)
	}
	wantRoutes(t, s, "hal", mine, r)
}

func testRenewReplaced(t *testing.T, s persist.SessionStore) {
	oldConn := route("ivy", "phone", "node-a", 1, 1)
	newConn := route("ivy", "phone", "node-b", 2, 1)
	mustPut(t, s, oldConn, long)
	mustPut(t, s, newConn, long)
	if err := s.Renew(ctx(t), oldConn, long); !errors.Is(err, persist.ErrReplaced) {
		t.Fatalf("Renew of a replaced route = %v, want ErrReplaced", err)
	}
	wantRoutes(t, s, "ivy", newConn)
	// Same conn id and node, other boot epoch: a different connection.
	if err := s.Renew(ctx(t), route("ivy", "phone", "node-b", 1, 1), long); !errors.Is(err, persist.ErrReplaced) {
		t.Fatalf("Renew with an older boot epoch = %v, want ErrReplaced", err)
	}
	wantRoutes(t, s, "ivy", newConn)
}

func testRemove(t *testing.T, s persist.SessionStore) {
	r := route("jon", "phone", "node-a", 3, 42)
	keep := route("jon", "laptop", "node-a", 3, 43)
	mustPut(t, s, r, long)
	mustPut(t, s, keep, long)
	for _, stale := range []persist.Route{
		route("jon", "phone", "node-a", 3, 41), // older connection
		route("jon", "phone", "node-b", 3, 42), // same conn id, other node
		route("jon", "phone", "node-a", 2, 42), // same conn id, older run
	} {
		if err := s.Remove(ctx(t), stale); err != nil {
			t.Fatalf("Remove(%+v): %v", stale, err)
		}
		wantRoutes(t, s, "jon", keep, r)
	}
	if err := s.Remove(ctx(t), r); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	wantRoutes(t, s, "jon", keep)
	if err := s.Remove(ctx(t), r); err != nil {
		t.Fatalf("second Remove: %v, want nil (no-op)", err)
	}
	if err := s.Remove(ctx(t), route("nobody", "phone", "n", 1, 1)); err != nil {
		t.Fatalf("Remove of an unknown user: %v", err)
	}
}

func testInvalid(t *testing.T, s persist.SessionStore) {
	good := route("kim", "phone", "node-a", 1, 1)
	bad := []persist.Route{
		route("", "phone", "node-a", 1, 1),
		route("kim", "", "node-a", 1, 1),
		route("kim", "phone", "", 1, 1),
		route(strings.Repeat("u", persist.MaxIDLen+1), "phone", "node-a", 1, 1),
	}
	for _, r := range bad {
		if _, err := s.Put(ctx(t), r, long); !errors.Is(err, persist.ErrInvalid) {
			t.Errorf("Put(%+v) = %v, want ErrInvalid", r, err)
		}
		if err := s.Renew(ctx(t), r, long); !errors.Is(err, persist.ErrInvalid) {
			t.Errorf("Renew(%+v) = %v, want ErrInvalid", r, err)
		}
		if err := s.Remove(ctx(t), r); !errors.Is(err, persist.ErrInvalid) {
			t.Errorf("Remove(%+v) = %v, want ErrInvalid", r, err)
		}
	}
	for _, ttl := range []time.Duration{0, -time.Second, time.Microsecond, persist.MaxSessionTTL + time.Second} {
		if _, err := s.Put(ctx(t), good, ttl); !errors.Is(err, persist.ErrInvalid) {
			t.Errorf("Put with ttl %v = %v, want ErrInvalid", ttl, err)
		}
		if err := s.Renew(ctx(t), good, ttl); !errors.Is(err, persist.ErrInvalid) {
			t.Errorf("Renew with ttl %v = %v, want ErrInvalid", ttl, err)
		}
	}
	if _, err := s.Lookup(ctx(t), ""); !errors.Is(err, persist.ErrInvalid) {
		t.Errorf("Lookup(\"\") = %v, want ErrInvalid", err)
	}
	wantRoutes(t, s, "kim")
}

func testContextDone(t *testing.T, s persist.SessionStore) {
	r := route("lee", "phone", "node-a", 1, 1)
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Put(done, r, long); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with a canceled ctx = %v, want context.Canceled", err)
	}
	if err := s.Renew(done, r, long); !errors.Is(err, context.Canceled) {
		t.Errorf("Renew with a canceled ctx = %v, want context.Canceled", err)
	}
	if err := s.Remove(done, r); !errors.Is(err, context.Canceled) {
		t.Errorf("Remove with a canceled ctx = %v, want context.Canceled", err)
	}
	if _, err := s.Lookup(done, "lee"); !errors.Is(err, context.Canceled) {
		t.Errorf("Lookup with a canceled ctx = %v, want context.Canceled", err)
	}
	wantRoutes(t, s, "lee")
}

// testConcurrentLogins: n logins of one (user, device) race; each Put
// replaces exactly the route before it, so the returned old routes and
// the final route account for every login exactly once.
func testConcurrentLogins(t *testing.T, s persist.SessionStore) {
	const n = 32
	olds := make([]*persist.Route, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			olds[i], errs[i] = s.Put(ctx(t), route("max", "phone", fmt.Sprintf("node-%d", i%4), 1, uint64(i+1)), long)
		})
	}
	close(start)
	wg.Wait()
	seen := make(map[uint64]int)
	nilOlds := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Put %d: %v", i, errs[i])
		}
		if olds[i] == nil {
			nilOlds++
			continue
		}
		seen[olds[i].ConnID]++
	}
	final := lookup(t, s, "max")
	if len(final) != 1 {
		t.Fatalf("Lookup = %+v, want exactly one route", final)
	}
	seen[final[0].ConnID]++
	if nilOlds != 1 {
		t.Fatalf("%d Puts replaced nothing, want exactly 1 (the first)", nilOlds)
	}
	for id := uint64(1); id <= n; id++ {
		if seen[id] != 1 {
			t.Fatalf("connection %d appears %d times among the replaced and final routes, want 1 (%v)", id, seen[id], seen)
		}
	}
}

// testConcurrentMixed runs every operation concurrently on a few users and
// devices; afterwards each device has at most one route, and it is one of
// the connections that were put.
func testConcurrentMixed(t *testing.T, s persist.SessionStore) {
	const workers, ops = 8, 60
	users := []string{"u1", "u2", "u3"}
	devices := []string{"d1", "d2"}
	var conn atomic.Uint64
	var wg sync.WaitGroup
	var failed atomic.Bool
	for w := range workers {
		wg.Go(func() {
			for i := range ops {
				u, d := users[(w+i)%len(users)], devices[(w*7+i)%len(devices)]
				r := route(u, d, fmt.Sprintf("node-%d", w%3), 1, conn.Add(1))
				var err error
				switch i % 4 {
				case 0:
					_, err = s.Put(ctx(t), r, long)
				case 1:
					err = s.Renew(ctx(t), r, long)
					if errors.Is(err, persist.ErrReplaced) {
						err = nil
					}
				case 2:
					err = s.Remove(ctx(t), r)
				case 3:
					_, err = s.Lookup(ctx(t), u)
				}
				if err != nil && failed.CompareAndSwap(false, true) {
					t.Errorf("worker %d op %d: %v", w, i, err)
				}
			}
		})
	}
	wg.Wait()
	for _, u := range users {
		routes := lookup(t, s, u)
		seen := map[string]bool{}
		for _, r := range routes {
			if r.User != u || seen[r.Device] || r.ConnID == 0 || r.ConnID > conn.Load() {
				t.Fatalf("Lookup(%q) = %+v: inconsistent", u, routes)
			}
			seen[r.Device] = true
		}
	}
}

func testClosed(t *testing.T, s persist.SessionStore) {
	r := route("ned", "phone", "node-a", 1, 1)
	mustPut(t, s, r, long)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil && !errors.Is(err, persist.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Put(ctx(t), r, long); !errors.Is(err, persist.ErrClosed) {
		t.Errorf("Put after Close = %v, want ErrClosed", err)
	}
	if err := s.Renew(ctx(t), r, long); !errors.Is(err, persist.ErrClosed) {
		t.Errorf("Renew after Close = %v, want ErrClosed", err)
	}
	if err := s.Remove(ctx(t), r); !errors.Is(err, persist.ErrClosed) {
		t.Errorf("Remove after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Lookup(ctx(t), "ned"); !errors.Is(err, persist.ErrClosed) {
		t.Errorf("Lookup after Close = %v, want ErrClosed", err)
	}
}
