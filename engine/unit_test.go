package engine

import (
	"fmt"
	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/persist"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestIDGenUniqueMonotonicAcrossClockJumps(t *testing.T) {
	g := newIDGen(5)
	var now atomic.Int64
	now.Store(idEpoch + 1000)
	g.now = func() int64 { return now.Load() }
	var last uint64
	for i := range 20000 { // > 4096 per ms: borrows following milliseconds
		id := g.next()
		if id <= last {
			t.Fatalf("id %d not above %d at %d", id, last, i)
		}
		if (id>>12)&0x3FF != 5 {
			t.Fatalf("node bits %d", (id>>12)&0x3FF)
		}
		last = id
	}
	now.Store(idEpoch + 10) // the clock goes back
	if id := g.next(); id <= last {
		t.Fatal("id went backwards with the clock")
	}
	now.Store(idEpoch + 1_000_000)
	if id := g.next(); idTime(id) != idEpoch+1_000_000 {
		t.Fatalf("idTime %d", idTime(id))
	}
	// Concurrent callers never share an id.
	seen := sync.Map{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 5000 {
				if _, dup := seen.LoadOrStore(g.next(), true); dup {
					t.Error("duplicate id")
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestPasswordHash(t *testing.T) {
	h, err := hashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q", h)
	}
	if ok, err := verifyPassword(h, "correct horse"); !ok || err != nil {
		t.Fatal("right password rejected")
	}
	if ok, _ := verifyPassword(h, "correct horsf"); ok {
		t.Fatal("wrong password accepted")
	}
	h2, _ := hashPassword("correct horse")
	if h == h2 {
		t.Fatal("salt not random")
	}
	for _, bad := range []string{"", "$argon2i$v=19$m=1,t=1,p=1$AA$AA", "$argon2id$v=19$m=x$AA$AA", "$argon2id$v=19$m=99999999,t=1,p=1$AA$AA", "$argon2id$v=19$m=8,t=1,p=1$!!$AA"} {
		if _, err := verifyPassword(bad, "x"); err == nil {
			t.Errorf("malformed hash %q accepted", bad)
		}
	}
}

func TestTokens(t *testing.T) {
	// Package auth tests the token rules; here, that the engine uses them.
	tok, err := auth.MintToken(testSecret, "alice", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if sub, err := verifyToken(testSecret, tok); err != nil || sub != "alice" {
		t.Fatalf("%q %v", sub, err)
	}
	if _, err := verifyToken([]byte("other"), tok); err == nil {
		t.Fatal("wrong secret accepted")
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no store", Config{}, "Store is required"},
		{"negative outbound", Config{MaxOutbound: -1}, "MaxOutbound"},
		{"idle below heartbeat", Config{HeartbeatInterval: time.Minute, IdleTimeout: time.Second}, "IdleTimeout"},
		{"node num", Config{NodeNum: 2000}, "NodeNum"},
		{"sync limits", Config{SyncLimit: 600}, "SyncLimit"},
		{"huge body", Config{MaxBody: 1 << 30}, "MaxBody"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.WithDefaults().Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %s", err, tc.want)
			}
		})
	}
}

func TestSessionMap(t *testing.T) {
	m := newSessionMap()
	lim := func() *rate.Limiter { return rate.NewLimiter(1, 1) }
	a1 := &conn{user: "a", device: "pc"}
	a2 := &conn{user: "a", device: "phone"}
	a3 := &conn{user: "a", device: "pc"}
	if m.add(a1) != nil || m.add(a2) != nil {
		t.Fatal("fresh adds replaced something")
	}
	if old := m.add(a3); old != a1 {
		t.Fatal("same device did not replace")
	}
	if m.remove(a1) {
		t.Fatal("a replaced connection removed the live one")
	}
	if got := m.devices("a", nil); len(got) != 2 {
		t.Fatalf("devices %d", len(got))
	}
	if l1, l2 := m.limiter("a", lim), m.limiter("a", lim); l1 == nil || l1 != l2 || m.limiter("b", lim) != nil {
		t.Fatal("limiter: made once per user, only for users with a session")
	}
	m.remove(a2)
	m.remove(a3)
	if users, conns := m.count(); users != 0 || conns != 0 {
		t.Fatalf("count %d %d", users, conns)
	}
	var arr [8]*conn
	m.add(a1)
	if n := testing.AllocsPerRun(100, func() { _ = m.devices("a", arr[:0]) }); n != 0 {
		t.Fatalf("devices allocates %.1f", n)
	}
}

// TestSessionMapDevicesMatchesModel: random logins (new devices, the same
// device again) and logouts (live and replaced connections) over a few
// users, with limiters made on the way, checked after every step against
// a plain model of the live connections; and the first device's multi
// flag always says whether the user has more.
func TestSessionMapDevicesMatchesModel(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	m := newSessionMap()
	lim := func() *rate.Limiter { return rate.NewLimiter(1, 1) }
	users := []string{"u0", "u1", "u2"}
	devices := []string{"pc", "phone", "tab", "web"}
	live := map[string]map[string]*conn{} // user -> device -> live conn
	var all []*conn                       // every conn ever added, live or replaced
	for step := range 20_000 {
		u := users[r.IntN(len(users))]
		switch op := r.IntN(10); {
		case op < 5:
			c := &conn{user: u, device: devices[r.IntN(len(devices))]}
			old := m.add(c)
			if want := live[u][c.device]; old != want {
				t.Fatalf("step %d: add replaced %p, want %p", step, old, want)
			}
			if live[u] == nil {
				live[u] = map[string]*conn{}
			}
			live[u][c.device] = c
			all = append(all, c)
		case op < 9 && len(all) > 0:
			c := all[r.IntN(len(all))]
			want := live[c.user][c.device] == c
			if got := m.remove(c); got != want {
				t.Fatalf("step %d: remove = %v, want %v", step, got, want)
			}
			if want {
				delete(live[c.user], c.device)
			}
		default:
			m.limiter(u, lim)
		}
		for _, u := range users {
			got := m.devices(u, nil)
			if len(got) != len(live[u]) {
				t.Fatalf("step %d: %s has %d devices, want %d", step, u, len(got), len(live[u]))
			}
			for _, c := range got {
				if live[u][c.device] != c {
					t.Fatalf("step %d: %s lists a connection that is not live", step, u)
				}
			}
			sh := m.shard(u)
			if first := sh.one[u]; first != nil {
				x := sh.extra[u]
				if more := x != nil && len(x.more) > 0; first.multi != more {
					t.Fatalf("step %d: %s's first device says multi=%v, more=%v", step, u, first.multi, more)
				}
			}
		}
	}
}

// The session map is read on every push. The benchmarks compare the
// sharded map against the two obvious alternatives under a read-mostly
// load from all cores (one add/remove pair per 64 lookups).

// benchSessions is what the benchmark needs of a session index: the
// lookup every push makes, and a second device logging in and out.
type benchSessions interface {
	devices(user string, dst []*conn) []*conn
	churn(user string)
}

type shardedSessions struct{ *sessionMap }

func (s shardedSessions) churn(u string) {
	c := &conn{user: u, device: "tab"}
	s.add(c)
	s.remove(c)
}

type mutexSessions struct {
	mu sync.RWMutex
	m  map[string][]*conn
}

func (s *mutexSessions) devices(u string, dst []*conn) []*conn {
	s.mu.RLock()
	dst = append(dst, s.m[u]...)
	s.mu.RUnlock()
	return dst
}

func (s *mutexSessions) set(u string, c []*conn) {
	s.mu.Lock()
	s.m[u] = c
	s.mu.Unlock()
}

func (s *mutexSessions) churn(u string) {
	s.set(u, []*conn{{user: u, device: "pc"}, {user: u, device: "tab"}})
	s.set(u, []*conn{{user: u, device: "pc"}})
}

type syncMapSessions struct{ m sync.Map }

func (s *syncMapSessions) devices(u string, dst []*conn) []*conn {
	if v, ok := s.m.Load(u); ok {
		dst = append(dst, v.([]*conn)...)
	}
	return dst
}

func (s *syncMapSessions) churn(u string) {
	s.m.Store(u, []*conn{{user: u, device: "pc"}, {user: u, device: "tab"}})
	s.m.Store(u, []*conn{{user: u, device: "pc"}})
}

const benchUsers = 100000

func BenchmarkSessionLookup(b *testing.B) {
	names := make([]string, benchUsers)
	for i := range names {
		names[i] = fmt.Sprintf("user%06d", i)
	}
	sharded := shardedSessions{newSessionMap()}
	// senders: every user has sent, so every user has a limiter (an extra
	// entry) beside its one device, as in a chat where everyone talks.
	senders := shardedSessions{newSessionMap()}
	mutex := &mutexSessions{m: map[string][]*conn{}}
	var syncMap syncMapSessions
	for _, n := range names {
		sharded.add(&conn{user: n, device: "pc"})
		senders.add(&conn{user: n, device: "pc"})
		senders.limiter(n, func() *rate.Limiter { return rate.NewLimiter(1, 1) })
		mutex.m[n] = []*conn{{user: n, device: "pc"}}
		syncMap.m.Store(n, []*conn{{user: n, device: "pc"}})
	}
	for _, impl := range []struct {
		name string
		s    benchSessions
	}{{"sharded", sharded}, {"sharded-senders", senders}, {"rwmutex-map", mutex}, {"sync.Map", &syncMap}} {
		b.Run(impl.name, func(b *testing.B) {
			var ctr atomic.Uint64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var arr [8]*conn
				i := ctr.Add(1) * 7919
				for pb.Next() {
					i++
					n := names[i%benchUsers]
					if i%64 == 0 {
						impl.s.churn(n)
						continue
					}
					_ = impl.s.devices(n, arr[:0])
				}
			})
		})
	}
}

// TestConfigValidateApartFromDefaults: Validate judges the fields as given
// and changes nothing (a zero it would have defaulted is an error to it);
// WithDefaults fills without judging; together they accept the zero Config
// with a store, and the defaults are the exported constants.
func TestConfigValidateApartFromDefaults(t *testing.T) {
	var st persist.Store = struct{ persist.Store }{} // Validate only checks that one is set
	c := Config{Store: st, MaxOutbound: -1}
	before := c
	err := c.Validate()
	if err == nil || !reflect.DeepEqual(c, before) {
		t.Fatalf("Validate of an undefaulted config: err %v, config changed %v", err, !reflect.DeepEqual(c, before))
	}
	for _, want := range []string{"Addr", "NodeID", "NodeNum must be in 1..1023", "Workers must be at least 1", "MaxOutbound must be at least 1, got -1", "HeartbeatInterval must be positive", "SendRate"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate must report %q: %v", want, err)
		}
	}
	d := Config{Store: st, MaxOutbound: -1}.WithDefaults()
	if d.MaxOutbound != -1 || d.Workers != DefaultWorkers || d.IdleTimeout != DefaultIdleHeartbeats*DefaultHeartbeatInterval ||
		d.Addr != DefaultAddr || d.MaxBody != DefaultMaxBody || d.Edge.MaxTLSHandshakes != DefaultMaxTLSHandshakes {
		t.Fatalf("WithDefaults: %+v", d)
	}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "MaxOutbound") {
		t.Fatalf("WithDefaults must leave a negative field for Validate: %v", err)
	}
	if err := (Config{Store: st}).WithDefaults().Validate(); err != nil {
		t.Fatalf("the defaulted zero Config is refused: %v", err)
	}
	if err := (Config{}).WithDefaults().Validate(); err == nil || !strings.Contains(err.Error(), "Store") {
		t.Fatalf("no Store: %v", err)
	}
}
