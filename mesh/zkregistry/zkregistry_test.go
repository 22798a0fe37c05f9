package zkregistry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"
	"go.uber.org/goleak"

	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/registrytest"
)

// TestMain fails the package if a test leaves a goroutine behind. Goroutines
// that exist before the tests start (started by package initialisation of
// dependencies, e.g. the ants pool that gnet brings in) are not ours.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent())
}

// Session timeouts used by the tests. testsvc's ZooKeeper ticks every 100ms,
// so short timeouts are honoured and expiry is detected promptly.
const (
	sessionTimeout      = 4 * time.Second // conformance: robust on a loaded 2-core box
	shortSessionTimeout = 1500 * time.Millisecond
	converge            = 15 * time.Second
)

var roots atomic.Int64

// newRoot returns a root no other test uses.
func newRoot(prefix string) string {
	return fmt.Sprintf("/test/%s/r%d", prefix, roots.Add(1))
}

func newTestRegistry(t *testing.T, cfg Config, readOnly bool) *Registry {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	var r *Registry
	var err error
	if readOnly {
		r, err = NewWatcher(cfg)
	} else {
		r, err = New(cfg)
	}
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// TestShared runs the tests that do not disturb the server on one
// ZooKeeper; TestPauseZooKeeper and TestRestartZooKeeper have their own.
func TestShared(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartZooKeeper(t)
	t.Run("Conformance", func(t *testing.T) { t.Parallel(); testConformance(t, svc) })
	t.Run("SessionExpiry", func(t *testing.T) { t.Parallel(); testSessionExpiry(t, svc) })
	t.Run("StaleZnode", func(t *testing.T) { t.Parallel(); testStaleZnode(t, svc) })
	t.Run("WatcherMissingRoot", func(t *testing.T) { t.Parallel(); testWatcherMissingRoot(t, svc) })
}

func testConformance(t *testing.T, svc *testsvc.Service) {
	registrytest.Run(t, registrytest.Suite{
		NewCluster: func(t *testing.T) registrytest.Cluster {
			cfg := Config{Servers: []string{svc.Addr}, Root: newRoot("conformance"), SessionTimeout: sessionTimeout}
			return registrytest.Cluster{
				NewRegistry: func(t *testing.T) membership.Registry { return newTestRegistry(t, cfg, false) },
				NewWatcher:  func(t *testing.T) membership.Watcher { return newTestRegistry(t, cfg, true) },
			}
		},
		StartRounds: 20,
		Timeout:     converge,
	})
}

func TestConfig(t *testing.T) {
	bad := []Config{
		{},
		{Servers: []string{""}},
		{Servers: []string{"127.0.0.1:1"}, Root: "relative"},
		{Servers: []string{"127.0.0.1:1"}, Root: "/"},
		{Servers: []string{"127.0.0.1:1"}, Root: "/a/"},
		{Servers: []string{"127.0.0.1:1"}, Root: "/a//b"},
		{Servers: []string{"127.0.0.1:1"}, SessionTimeout: time.Millisecond},
		{Servers: []string{"127.0.0.1:1"}, ResyncInterval: -time.Second},
	}
	for _, cfg := range bad {
		if r, err := New(cfg); err == nil {
			_ = r.Close()
			t.Errorf("New(%+v) succeeded, want a config error", cfg)
		}
	}
	cfg := Config{Servers: []string{"127.0.0.1:1"}}.WithDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Root != DefaultRoot || cfg.SessionTimeout != DefaultSessionTimeout || cfg.ResyncInterval != DefaultResyncInterval {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
}

// TestConfigValidateApartFromDefaults: Validate judges the fields as given
// and changes nothing; WithDefaults fills the zero fields with the
// Default... constants and leaves a bad value for Validate.
func TestConfigValidateApartFromDefaults(t *testing.T) {
	c := Config{Servers: []string{"127.0.0.1:1"}, ResyncInterval: -time.Second}
	before := c
	err := c.Validate()
	if err == nil || !reflect.DeepEqual(c, before) {
		t.Fatalf("Validate of an undefaulted config: err %v, config changed %v", err, !reflect.DeepEqual(c, before))
	}
	for _, want := range []string{`Root must be an absolute, clean path other than /, got ""`, "SessionTimeout must be at least 100ms, got 0s",
		"ResyncInterval must be positive, got -1s", "Logger", "Dialer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate must report %q: %v", want, err)
		}
	}
	d := c.WithDefaults()
	if d.ResyncInterval != -time.Second || d.Root != DefaultRoot || d.SessionTimeout != DefaultSessionTimeout || d.Logger == nil || d.Dialer == nil {
		t.Fatalf("WithDefaults: %+v", d)
	}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "ResyncInterval") || strings.Contains(err.Error(), "Root") {
		t.Fatalf("after WithDefaults only ResyncInterval is wrong: %v", err)
	}
	if err := (Config{}).WithDefaults().Validate(); err == nil || !strings.Contains(err.Error(), "no Servers given") {
		t.Fatalf("the zero Config needs servers: %v", err)
	}
}

// TestUnreachable: with no ZooKeeper, New succeeds, Nodes is nil, Register
// reports ErrUnavailable when its ctx ends, and Close is prompt.
func TestUnreachable(t *testing.T) {
	port, err := testsvc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := newTestRegistry(t, Config{Servers: []string{fmt.Sprintf("127.0.0.1:%d", port)}, SessionTimeout: time.Second}, false)
	if v := r.Nodes(); v != nil {
		t.Fatalf("Nodes = %+v before any read, want nil", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = r.Register(ctx, node("n1", 1))
	if !errors.Is(err, membership.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Register = %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	if st := r.Status(); st.Connected || st.Registered || !errors.Is(st.Err, membership.ErrUnavailable) {
		t.Fatalf("Status = %+v", st)
	}
	start := time.Now()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Close took %v with ZooKeeper down", d)
	}
}

func node(id string, epoch int64) membership.NodeInfo {
	return membership.NodeInfo{ID: id, ClientAddr: "127.0.0.1:7000", MeshAddr: "127.0.0.1:7100", Weight: 100, Conns: 1, BootEpoch: epoch}
}

func seesExactly(t *testing.T, w membership.Watcher, want ...membership.NodeInfo) {
	t.Helper()
	testutil.Eventually(t, converge, "view converges", func() error {
		got := w.Nodes()
		if len(got) == 0 && len(want) == 0 {
			return nil
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("view %+v, want %+v", got, want)
		}
		return nil
	})
}

// rawConn opens a plain client connection for inspecting and seeding
// ZooKeeper state.
func rawConn(t *testing.T, addr string) *zk.Conn {
	t.Helper()
	c, _, err := zk.Connect([]string{addr}, 4*time.Second, zk.WithLogInfo(false), zk.WithLogger(zkLogger{testLogger(t)}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	testutil.Eventually(t, 10*time.Second, "raw connection", func() error {
		if c.State() != zk.StateHasSession {
			return fmt.Errorf("state %v", c.State())
		}
		return nil
	})
	return c
}

func mkdirs(t *testing.T, c *zk.Conn, p string) {
	t.Helper()
	cur := ""
	for _, part := range splitPath(p) {
		cur += "/" + part
		if _, err := c.Create(cur, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			t.Fatal(err)
		}
	}
}

func splitPath(p string) []string {
	var parts []string
	start := 1
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			parts = append(parts, p[start:i])
			start = i + 1
		}
	}
	return parts
}

// testSessionExpiry force-expires a registered node's session: the node
// re-registers on a new session and its peers see it again.
func testSessionExpiry(t *testing.T, svc *testsvc.Service) {
	root := newRoot("expiry")
	var sniff sessionSniffer
	a := newTestRegistry(t, Config{Servers: []string{svc.Addr}, Root: root, SessionTimeout: shortSessionTimeout, Dialer: sniff.Dial}, false)
	b := newTestRegistry(t, Config{Servers: []string{svc.Addr}, Root: root, SessionTimeout: shortSessionTimeout}, false)
	w := newTestRegistry(t, Config{Servers: []string{svc.Addr}, Root: root, SessionTimeout: shortSessionTimeout}, true)
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()
	na, nb := node("node-a", 1), node("node-b", 1)
	if err := a.Register(ctx, na); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(ctx, nb); err != nil {
		t.Fatal(err)
	}
	seesExactly(t, w, na, nb)
	raw := rawConn(t, svc.Addr)

	for round := range 3 {
		oldID := a.Status().SessionID
		passwd := sniff.passwd(oldID)
		if oldID == 0 || passwd == nil {
			t.Fatalf("round %d: registration session %#x not seen by the dialer", round, oldID)
		}
		start := time.Now()
		testutil.Eventually(t, converge, "session expired", func() error {
			if a.Status().SessionID != oldID {
				return nil
			}
			if err := expireSession(svc.Addr, oldID, passwd); err != nil {
				return err
			}
			time.Sleep(200 * time.Millisecond)
			if a.Status().SessionID == oldID {
				return fmt.Errorf("session %#x still alive", oldID)
			}
			return nil
		})
		// The znode went with the session (a watcher may or may not see
		// the gap: views are coalesced and re-registration is quick) and
		// came back, owned by the new session.
		testutil.Eventually(t, converge, "node-a re-registered", func() error {
			_, stat, err := raw.Get(root + "/node-a")
			if err != nil {
				return err
			}
			st := a.Status()
			if stat.EphemeralOwner == oldID || stat.EphemeralOwner != st.SessionID || !st.Registered {
				return fmt.Errorf("owner %#x, old session %#x, status %+v", stat.EphemeralOwner, oldID, st)
			}
			return nil
		})
		seesExactly(t, w, na, nb)
		t.Logf("round %d: session %#x expired; node-a back after %v", round, oldID, time.Since(start).Round(time.Millisecond))

		// Updates go to the new znode.
		na.Conns = int64(100 + round)
		if err := a.Update(ctx, na); err != nil {
			t.Fatalf("Update after re-registration: %v", err)
		}
		seesExactly(t, w, na, nb)
		seesExactly(t, b, na, nb)
	}
}

// TestPauseZooKeeper freezes ZooKeeper past the session timeout: the view is
// kept during the pause; afterwards every node is registered again (on a
// new session if the server expired the old one) and views heal.
func TestPauseZooKeeper(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartZooKeeper(t)
	root := newRoot("pause")
	cfg := Config{Servers: []string{svc.Addr}, Root: root, SessionTimeout: shortSessionTimeout, ResyncInterval: 500 * time.Millisecond}
	a, b := newTestRegistry(t, cfg, false), newTestRegistry(t, cfg, false)
	w := newTestRegistry(t, cfg, true)
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()
	na, nb := node("node-a", 1), node("node-b", 1)
	if err := a.Register(ctx, na); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(ctx, nb); err != nil {
		t.Fatal(err)
	}
	// Every registry must have the full view before the pause: it is
	// what they keep serving.
	for _, r := range []*Registry{a, b, w} {
		seesExactly(t, r, na, nb)
	}
	sessA, sessB := a.Status().SessionID, b.Status().SessionID

	if err := svc.Pause(); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	// While ZooKeeper is frozen, the last view is served.
	for time.Since(pausedAt) < 2*shortSessionTimeout {
		for _, r := range []*Registry{a, b, w} {
			if v := r.Nodes(); !slices.Equal(v, []membership.NodeInfo{na, nb}) {
				t.Fatalf("view during the pause: %+v", v)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := svc.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	for _, r := range []*Registry{a, b, w} {
		seesExactly(t, r, na, nb)
	}
	testutil.Eventually(t, converge, "both registered", func() error {
		if !a.Status().Registered || !b.Status().Registered {
			return fmt.Errorf("a %+v, b %+v", a.Status(), b.Status())
		}
		return nil
	})
	t.Logf("healed %v after resume; sessions a %#x->%#x, b %#x->%#x", time.Since(resumed).Round(time.Millisecond),
		sessA, a.Status().SessionID, sessB, b.Status().SessionID)
	na.Conns = 55
	if err := a.Update(ctx, na); err != nil {
		t.Fatal(err)
	}
	seesExactly(t, w, na, nb)
}

// TestRestartZooKeeper stops ZooKeeper (longer than the session timeout),
// checks that the last view is kept and that writes wait, then starts it
// again: the latest state is published and views heal.
func TestRestartZooKeeper(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartZooKeeper(t)
	root := newRoot("restart")
	cfg := Config{Servers: []string{svc.Addr}, Root: root, SessionTimeout: shortSessionTimeout, ResyncInterval: 500 * time.Millisecond}
	a, b := newTestRegistry(t, cfg, false), newTestRegistry(t, cfg, false)
	w := newTestRegistry(t, cfg, true)
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()
	na, nb := node("node-a", 1), node("node-b", 1)
	if err := a.Register(ctx, na); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(ctx, nb); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Registry{a, b, w} {
		seesExactly(t, r, na, nb)
	}

	if err := svc.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	testutil.Eventually(t, converge, "disconnect noticed", func() error {
		if a.Status().Connected {
			return errors.New("still connected")
		}
		return nil
	})
	// Writes during the outage are kept and reported as unavailable.
	na.Conns, na.Draining = 77, true
	short, cancelShort := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err := a.Update(short, na)
	cancelShort()
	if !errors.Is(err, membership.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Update during the outage = %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	// The last view is served for as long as the outage lasts (here more
	// than the session timeout).
	for time.Since(stopped) < 2*shortSessionTimeout {
		for _, r := range []*Registry{a, b, w} {
			if v := r.Nodes(); !slices.Equal(v, []membership.NodeInfo{{ID: "node-a", ClientAddr: "127.0.0.1:7000", MeshAddr: "127.0.0.1:7100", Weight: 100, Conns: 1, BootEpoch: 1}, nb}) {
				t.Fatalf("view during the outage: %+v", v)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := w.Status(); st.LastSync.After(stopped) {
		t.Fatalf("LastSync %v after the stop at %v", st.LastSync, stopped)
	}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	for _, r := range []*Registry{a, b, w} {
		seesExactly(t, r, na, nb)
	}
	t.Logf("healed %v after restart", time.Since(restarted).Round(time.Millisecond))
	if err := a.Update(ctx, na); err != nil {
		t.Fatalf("Update after the restart: %v", err)
	}
}

// TestStaleZnodeOfOurInstance: a znode with our instance id but another
// session's ownership (left by our own expired session) is replaced.
func testStaleZnode(t *testing.T, svc *testsvc.Service) {
	root := newRoot("stale")
	r := newTestRegistry(t, Config{Servers: []string{svc.Addr}, Root: root, SessionTimeout: sessionTimeout}, false)
	raw := rawConn(t, svc.Addr)
	mkdirs(t, raw, root)
	n := node("node-a", 5)
	stale := n
	stale.Conns = 999
	data, _ := json.Marshal(wireNode{NodeInfo: stale, Instance: r.instance})
	if _, err := raw.Create(root+"/node-a", data, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	seesExactly(t, r, stale)
	ctx, cancel := context.WithTimeout(context.Background(), converge)
	defer cancel()
	if err := r.Register(ctx, n); err != nil {
		t.Fatalf("Register over our own stale znode: %v", err)
	}
	_, stat, err := raw.Get(root + "/node-a")
	if err != nil {
		t.Fatal(err)
	}
	if stat.EphemeralOwner != r.Status().SessionID {
		t.Fatalf("znode owner %#x, want our session %#x", stat.EphemeralOwner, r.Status().SessionID)
	}
	seesExactly(t, r, n)

	// A crashed older incarnation (another instance, lower epoch, its
	// session still alive) is replaced at once; a newer one is not.
	old := node("node-b", 1)
	data, _ = json.Marshal(wireNode{NodeInfo: old, Instance: "crashed"})
	if _, err := raw.Create(root+"/node-b", data, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	r2 := newTestRegistry(t, Config{Servers: []string{svc.Addr}, Root: root, SessionTimeout: sessionTimeout}, false)
	restarted := node("node-b", 2)
	if err := r2.Register(ctx, restarted); err != nil {
		t.Fatalf("Register over an older incarnation: %v", err)
	}
	seesExactly(t, r, n, restarted)
}

// TestWatcherMissingRoot: a watcher of a root that does not exist yet sees
// an empty membership, then the first node as soon as it registers.
func testWatcherMissingRoot(t *testing.T, svc *testsvc.Service) {
	root := newRoot("missing") + "/deeper/nodes"
	cfg := Config{Servers: []string{svc.Addr}, Root: root, SessionTimeout: sessionTimeout, ResyncInterval: time.Hour}
	w := newTestRegistry(t, cfg, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := w.Watch(ctx)
	select {
	case v := <-ch:
		if len(v) != 0 {
			t.Fatalf("initial view %+v, want empty", v)
		}
	case <-time.After(converge):
		t.Fatal("no initial view")
	}
	// With the timer out of the way (1h), only the exists watch on the
	// missing root can tell the watcher.
	r := newTestRegistry(t, cfg, false)
	n := node("node-a", 1)
	start := time.Now()
	if err := r.Register(ctx, n); err != nil {
		t.Fatal(err)
	}
	seesExactly(t, w, n)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("watcher took %v: not watch-driven", d)
	}
}
