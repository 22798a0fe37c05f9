package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/internal/testutil"
)

// fakeRouter is an httptest imrouter: answer decides each reply from the
// query; every query is recorded.
type fakeRouter struct {
	*httptest.Server
	mu      sync.Mutex
	queries []url.Values
	hits    atomic.Int64
}

func newFakeRouter(t *testing.T, answer func(q url.Values) (int, any)) *fakeRouter {
	t.Helper()
	fr := &fakeRouter{}
	fr.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fr.hits.Add(1)
		if r.URL.Path != "/v1/route" || r.Method != http.MethodGet {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		q := r.URL.Query()
		fr.mu.Lock()
		fr.queries = append(fr.queries, q)
		fr.mu.Unlock()
		code, body := answer(q)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	}))
	t.Cleanup(fr.Close)
	return fr
}

func (fr *fakeRouter) lastQuery() url.Values {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	if len(fr.queries) == 0 {
		return nil
	}
	return fr.queries[len(fr.queries)-1]
}

type route struct {
	NodeID   string `json:"node_id"`
	Addr     string `json:"addr"`
	Strategy string `json:"strategy"`
}

type routeErr struct {
	Error  string `json:"error"`
	Reason string `json:"reason,omitempty"`
}

func always(code int, body any) func(url.Values) (int, any) {
	return func(url.Values) (int, any) { return code, body }
}

func TestRouterResolverPassesUIDAndExclude(t *testing.T) {
	fr := newFakeRouter(t, func(q url.Values) (int, any) {
		if slices.Contains(strings.Split(q.Get("exclude"), ","), "n1") {
			return http.StatusOK, route{"n2", "127.0.0.1:9092", "consistent-hash"}
		}
		return http.StatusOK, route{"n1", "127.0.0.1:9091", "consistent-hash"}
	})
	res := RouterResolver(fr.URL, "alice", fr.Client())
	addr, node, err := res(ctx5(t), nil)
	if err != nil || addr != "127.0.0.1:9091" || node != "n1" {
		t.Fatalf("resolve = %q %q %v", addr, node, err)
	}
	if q := fr.lastQuery(); q.Get("uid") != "alice" || q.Has("exclude") {
		t.Fatalf("query %v", q)
	}
	addr, node, err = res(ctx5(t), []string{"n1", "n3"})
	if err != nil || addr != "127.0.0.1:9092" || node != "n2" {
		t.Fatalf("resolve with exclude = %q %q %v", addr, node, err)
	}
	if q := fr.lastQuery(); q.Get("uid") != "alice" || q.Get("exclude") != "n1,n3" {
		t.Fatalf("query %v", q)
	}
}

func TestRouterResolverUnavailable(t *testing.T) {
	fr := newFakeRouter(t, always(http.StatusServiceUnavailable, routeErr{"no available node", "2 live node(s), none usable: 2 draining"}))
	addr, node, err := RouterResolver(fr.URL, "alice", fr.Client())(ctx5(t), nil)
	if !errors.Is(err, ErrNoNodeAvailable) || addr != "" || node != "" {
		t.Fatalf("resolve = %q %q %v, want ErrNoNodeAvailable", addr, node, err)
	}
	if !strings.Contains(err.Error(), "2 draining") {
		t.Fatalf("error %q lacks the router's reason", err)
	}
}

func TestRouterResolverRejectsBadAnswers(t *testing.T) {
	for name, answer := range map[string]func(url.Values) (int, any){
		"empty addr":   always(http.StatusOK, route{NodeID: "n1"}),
		"not json":     always(http.StatusOK, "nonsense"),
		"bad request":  always(http.StatusBadRequest, routeErr{Error: "missing uid"}),
		"plain 503":    always(http.StatusServiceUnavailable, "proxy says no"),
		"server error": always(http.StatusInternalServerError, nil),
	} {
		t.Run(name, func(t *testing.T) {
			fr := newFakeRouter(t, answer)
			addr, _, err := RouterResolver(fr.URL, "alice", fr.Client())(ctx5(t), nil)
			if err == nil || addr != "" {
				t.Fatalf("resolve = %q %v, want an error", addr, err)
			}
			if name != "plain 503" && errors.Is(err, ErrNoNodeAvailable) {
				t.Fatalf("%v must not be ErrNoNodeAvailable", err)
			}
		})
	}
}

// TestRouterResolverFailover: routers are tried in turn (down, 503, ok);
// the next call starts with the router that answered.
func TestRouterResolverFailover(t *testing.T) {
	down := newFakeRouter(t, always(http.StatusOK, route{"x", "127.0.0.1:1", "round-robin"}))
	busy := newFakeRouter(t, always(http.StatusServiceUnavailable, routeErr{"no available node", "no live nodes in the registry"}))
	good := newFakeRouter(t, always(http.StatusOK, route{"n7", "127.0.0.1:9097", "round-robin"}))
	// Closed only now: a router started after the close could be given the
	// freed port and be counted twice.
	downURL := down.URL
	down.Close() // connection refused from now on
	hc := &http.Client{Timeout: 2 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)

	res := RouterResolver(" "+downURL+", "+busy.URL+" ,"+good.URL+"/", "alice", hc)
	addr, node, err := res(ctx5(t), nil)
	if err != nil || addr != "127.0.0.1:9097" || node != "n7" {
		t.Fatalf("resolve = %q %q %v", addr, node, err)
	}
	if busy.hits.Load() != 1 || good.hits.Load() != 1 {
		t.Fatalf("hits: busy %d good %d", busy.hits.Load(), good.hits.Load())
	}
	if _, _, err := res(ctx5(t), nil); err != nil {
		t.Fatal(err)
	}
	if busy.hits.Load() != 1 || good.hits.Load() != 2 {
		t.Fatalf("second call did not start at the router that answered: busy %d good %d", busy.hits.Load(), good.hits.Load())
	}

	// All fail: the error names each router, and is ErrNoNodeAvailable
	// because one of them answered 503.
	res = RouterResolver(downURL+","+busy.URL, "alice", hc)
	_, _, err = res(ctx5(t), nil)
	if !errors.Is(err, ErrNoNodeAvailable) || !strings.Contains(err.Error(), downURL) || !strings.Contains(err.Error(), busy.URL) {
		t.Fatalf("err = %v", err)
	}
}

func TestRouterResolverHonoursContext(t *testing.T) {
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hung.Close)
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := RouterResolver(hung.URL, "alice", hung.Client())(ctx, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("returned after %v", d)
	}
}

func TestRouterResolverConfig(t *testing.T) {
	for _, tc := range []struct{ urls, uid string }{
		{"", "alice"},
		{" , ", "alice"},
		{"ftp://r1:9080", "alice"},
		{"http://", "alice"},
		{"http://r1:9080?x=1", "alice"},
		{"http://r1:9080", ""},
		{"http://r1:9080", "bad user"},
	} {
		_, _, err := RouterResolver(tc.urls, tc.uid, nil)(context.Background(), nil)
		if !errors.Is(err, ErrRouterConfig) {
			t.Errorf("RouterResolver(%q, %q): err %v, want ErrRouterConfig", tc.urls, tc.uid, err)
		}
	}
	bases, err := parseRouterURLs("127.0.0.1:9080, https://r2.example/im/")
	if err != nil || !slices.Equal(bases, []string{"http://127.0.0.1:9080", "https://r2.example/im"}) {
		t.Fatalf("parseRouterURLs = %v %v", bases, err)
	}
}

// TestRouterModeClient: a Client in router mode connects where the router
// says and, after a GO_AWAY, asks again excluding the node that left.
func TestRouterModeClient(t *testing.T) {
	n1, n2 := newServer(t), newServer(t)
	n1.SetNodeID("n1")
	n2.SetNodeID("n2")
	fr := newFakeRouter(t, func(q url.Values) (int, any) {
		if q.Get("uid") != "bob" {
			return http.StatusBadRequest, routeErr{Error: "wrong uid"}
		}
		if slices.Contains(strings.Split(q.Get("exclude"), ","), "n1") {
			return http.StatusOK, route{"n2", n2.Addr, "consistent-hash"}
		}
		return http.StatusOK, route{"n1", n1.Addr, "consistent-hash"}
	})
	cfg := testConfig(t, n1, "bob")
	cfg.Addr = ""
	cfg.Resolver = RouterResolver(fr.URL, "bob", fr.Client())
	bob := dial(t, cfg)
	if n1.Logins() != 1 || n2.Logins() != 0 {
		t.Fatalf("logins n1 %d n2 %d", n1.Logins(), n2.Logins())
	}
	n1.GoAway("bob", 10*time.Millisecond, "drain")
	testutil.Until(t, 5*time.Second, "reconnect to n2", func() bool { return n2.Logins() == 1 })
	if q := fr.lastQuery(); q.Get("exclude") != "n1" {
		t.Fatalf("reconnect query %v, want exclude=n1", q)
	}
	if _, err := bob.Send(ctx5(t), "alice", []byte("via n2")); err != nil {
		t.Fatal(err)
	}
}
