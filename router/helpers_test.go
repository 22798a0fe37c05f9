package router

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh/membership"
)

// TestMain checks for leaked goroutines. Package mesh links gnet (through
// engine), whose package-level worker pool runs for the whole process.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaktest.Gnet()...) }

// defaultWait bounds polls on in-memory state.
const defaultWait = 5 * time.Second

// testLogger logs to t (Debug with IMGN_TEST_DEBUG=1).
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("IMGN_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// hub is an in-memory cluster membership: one MemoryRegistry per node.
type hub struct {
	t    testing.TB
	h    *membership.MemoryHub
	regs map[string]*membership.MemoryRegistry
}

func newHub(t testing.TB) *hub {
	return &hub{t: t, h: membership.NewMemoryHub(), regs: map[string]*membership.MemoryRegistry{}}
}

// set registers n, or updates it when already registered.
func (c *hub) set(nodes ...membership.NodeInfo) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range nodes {
		reg := c.regs[n.ID]
		if reg == nil {
			reg = c.h.NewRegistry()
			c.regs[n.ID] = reg
			c.t.Cleanup(func() { _ = reg.Close() })
		}
		if err := reg.Register(ctx, n); err != nil {
			c.t.Fatalf("register %s: %v", n.ID, err)
		}
	}
}

// remove makes node id leave (its registry closes, like a process exit).
func (c *hub) remove(id string) {
	c.t.Helper()
	if err := c.regs[id].Close(); err != nil {
		c.t.Fatal(err)
	}
	delete(c.regs, id)
}

// watcher returns a read-only watcher of the hub, closed at cleanup.
func (c *hub) watcher() *membership.MemoryRegistry {
	w := c.h.NewWatcher()
	c.t.Cleanup(func() { _ = w.Close() })
	return w
}

// node is a normal live node: weight lb.DefaultWeight, addresses from port.
func node(id string, port int) membership.NodeInfo {
	return membership.NodeInfo{
		ID: id, ClientAddr: fmt.Sprintf("127.0.0.1:%d", port), MeshAddr: fmt.Sprintf("127.0.0.1:%d", port+1000),
		AdminAddr: fmt.Sprintf("127.0.0.1:%d", port+2000), Weight: lb.DefaultWeight, BootEpoch: int64(port),
	}
}

func with(n membership.NodeInfo, f func(*membership.NodeInfo)) membership.NodeInfo {
	f(&n)
	return n
}

func newRouter(t testing.TB, w membership.Watcher, strategy string) *Router {
	t.Helper()
	r, err := New(Config{Watcher: w, Strategy: strategy, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// waitView waits until r's view is exactly want (any order).
func waitView(t testing.TB, r *Router, want ...membership.NodeInfo) {
	t.Helper()
	want = slices.Clone(want)
	slices.SortFunc(want, func(a, b membership.NodeInfo) int { return strings.Compare(a.ID, b.ID) })
	testutil.Eventually(t, 5*time.Second, "router view", func() error {
		if !r.Ready() {
			return fmt.Errorf("no view yet")
		}
		if got := r.Nodes(); !slices.Equal(got, want) {
			return fmt.Errorf("view %v, want %v", got, want)
		}
		return nil
	})
}

// do serves one request through h in-process.
func do(t testing.TB, h http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(target, "/metrics") && ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q", method, target, ct)
	}
	return rec
}

// routeAnswer is a decoded /v1/route answer.
type routeAnswer struct {
	Code int
	Route
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

// route asks h for uid's node over HTTP.
func route(t testing.TB, h http.Handler, uid string, exclude ...string) routeAnswer {
	t.Helper()
	q := url.Values{}
	if uid != "" {
		q.Set("uid", uid)
	}
	if len(exclude) > 0 {
		q.Set("exclude", strings.Join(exclude, ","))
	}
	rec := do(t, h, http.MethodGet, "/v1/route?"+q.Encode())
	a := routeAnswer{Code: rec.Code}
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatalf("route %q: %v in %q", uid, err, rec.Body.String())
	}
	if a.Code == http.StatusOK && (a.Addr == "" || a.NodeID == "") {
		t.Fatalf("route %q: 200 with an empty node: %q", uid, rec.Body.String())
	}
	if a.Code != http.StatusOK && a.Error == "" {
		t.Fatalf("route %q: %d without an error: %q", uid, a.Code, rec.Body.String())
	}
	return a
}

// mustRoute is route that requires a 200.
func mustRoute(t testing.TB, h http.Handler, uid string, exclude ...string) Route {
	t.Helper()
	a := route(t, h, uid, exclude...)
	if a.Code != http.StatusOK {
		t.Fatalf("route %q exclude %v: %d %s (%s)", uid, exclude, a.Code, a.Error, a.Reason)
	}
	return a.Route
}

func nodesOf(t testing.TB, h http.Handler) NodesResponse {
	t.Helper()
	rec := do(t, h, http.MethodGet, "/v1/nodes")
	var resp NodesResponse
	if rec.Code != http.StatusOK {
		t.Fatalf("/v1/nodes: %d %s", rec.Code, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func metricsText(t testing.TB, h http.Handler) string {
	t.Helper()
	rec := do(t, h, http.MethodGet, "/metrics")
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

// feedWatcher is a Watcher driven by the test: nothing until Publish.
type feedWatcher struct{ feed membership.ViewFeed }

func (w *feedWatcher) Nodes() []membership.NodeInfo { return w.feed.View() }
func (w *feedWatcher) Watch(ctx context.Context) <-chan []membership.NodeInfo {
	return w.feed.Subscribe(ctx)
}
func (w *feedWatcher) Close() error { w.feed.Close(); return nil }

func uids(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("user-%d", i)
	}
	return out
}
