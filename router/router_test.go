package router

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh/membership"
)

func TestConfig(t *testing.T) {
	w := newHub(t).watcher()
	for name, cfg := range map[string]Config{
		"no watcher":       {Strategy: lb.RoundRobin},
		"unknown strategy": {Watcher: w, Strategy: "random"},
		"bad vnodes":       {Watcher: w, VirtualNodes: -1},
		"huge vnodes":      {Watcher: w, VirtualNodes: lb.MaxVirtualNodes + 1},
	} {
		if r, err := New(cfg); !errors.Is(err, ErrConfig) {
			if r != nil {
				_ = r.Close()
			}
			t.Errorf("%s: New = %v, want ErrConfig", name, err)
		}
	}
	if _, err := New(Config{Watcher: w, Strategy: "random"}); !errors.Is(err, lb.ErrUnknownStrategy) {
		t.Errorf("unknown strategy: %v, want lb.ErrUnknownStrategy", err)
	}

	r := newRouter(t, w, "")
	if r.Strategy() != lb.ConsistentHash {
		t.Fatalf("default strategy %q", r.Strategy())
	}
	// One Router per prometheus Registry; a failed New leaves the first
	// Router's metrics registered.
	reg := prometheus.NewRegistry()
	r1, err := New(Config{Watcher: w, Registry: reg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	if r2, err := New(Config{Watcher: w, Registry: reg, Logger: testLogger(t)}); !errors.Is(err, ErrConfig) {
		if r2 != nil {
			_ = r2.Close()
		}
		t.Fatalf("second Router on one Registry: %v, want ErrConfig", err)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) == 0 {
		t.Fatalf("first Router's metrics gone: %v %v", mfs, err)
	}
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r1.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
}

// TestNotReady: before the first membership view, routes are 503 with a
// reason, /readyz is 503 and /healthz is 200.
func TestNotReady(t *testing.T) {
	w := &feedWatcher{}
	r := newRouter(t, w, lb.ConsistentHash)
	h := r.Handler()
	if a := route(t, h, "alice"); a.Code != http.StatusServiceUnavailable || !strings.Contains(a.Reason, "no membership view") {
		t.Fatalf("route before a view: %+v", a)
	}
	if rec := do(t, h, http.MethodGet, "/healthz"); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"ready":false`) {
		t.Fatalf("/healthz: %d %s", rec.Code, rec.Body)
	}
	if rec := do(t, h, http.MethodGet, "/readyz"); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before a view: %d %s", rec.Code, rec.Body)
	}
	if n := nodesOf(t, h); n.Ready || n.Nodes == nil || len(n.Nodes) != 0 || n.Updated != nil {
		t.Fatalf("/v1/nodes before a view: %+v", n)
	}

	w.feed.Publish(nil) // an empty cluster is a view too
	testutil.Eventually(t, defaultWait, "ready", func() error {
		if !r.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	if rec := do(t, h, http.MethodGet, "/readyz"); rec.Code != http.StatusOK {
		t.Fatalf("/readyz after a view: %d %s", rec.Code, rec.Body)
	}
	if a := route(t, h, "alice"); a.Code != http.StatusServiceUnavailable || a.Error != "no available node" || !strings.Contains(a.Reason, "no live nodes") {
		t.Fatalf("route in an empty cluster: %+v", a)
	}
}

// TestConsistentHash: a user always gets the same node, users spread over
// the nodes, and the answer is the inbox owner of the cluster's ring.
func TestConsistentHash(t *testing.T) {
	c := newHub(t)
	nodes := []membership.NodeInfo{node("n1", 9010), node("n2", 9020), node("n3", 9030)}
	c.set(nodes...)
	r := newRouter(t, c.watcher(), lb.ConsistentHash)
	waitView(t, r, nodes...)
	h := r.Handler()

	ring := ownershipRing(t, nodes)
	count := map[string]int{}
	const users = 3000
	for i, uid := range uids(users) {
		got, err := r.Pick(uid)
		if err != nil {
			t.Fatal(err)
		}
		if owner, _ := ring.Owner(uid); got.NodeID != owner {
			t.Fatalf("%s routed to %s, inbox owner %s", uid, got.NodeID, owner)
		}
		if got.Strategy != lb.ConsistentHash || got.Addr != addrOf(nodes, got.NodeID) {
			t.Fatalf("%s: %+v", uid, got)
		}
		if i%10 == 0 { // the HTTP answer is the same, every time
			for range 2 {
				if hr := mustRoute(t, h, uid); hr != got {
					t.Fatalf("%s: HTTP %+v, Pick %+v", uid, hr, got)
				}
			}
		}
		count[got.NodeID]++
	}
	for _, n := range nodes {
		if share := float64(count[n.ID]) / users; share < 0.25 || share > 0.42 {
			t.Errorf("%s got %.1f%% of users, want about a third: %v", n.ID, 100*share, count)
		}
	}
}

// TestLeastActive: picks go to the node with the fewest connections per
// unit of weight, and a burst levels the load.
func TestLeastActive(t *testing.T) {
	c := newHub(t)
	nodes := []membership.NodeInfo{
		with(node("n1", 9010), func(n *membership.NodeInfo) { n.Conns = 50 }),
		with(node("n2", 9020), func(n *membership.NodeInfo) { n.Conns = 10 }),
		with(node("n3", 9030), func(n *membership.NodeInfo) { n.Conns, n.Weight = 30, 50 }),
		with(node("n4", 9040), func(n *membership.NodeInfo) { n.Conns, n.Draining = 0, true }),
		with(node("n5", 9050), func(n *membership.NodeInfo) { n.Conns, n.Weight = 0, 0 }),
	}
	c.set(nodes...)
	r := newRouter(t, c.watcher(), lb.LeastActive)
	waitView(t, r, nodes...)
	h := r.Handler()
	if got := mustRoute(t, h, "alice"); got.NodeID != "n2" || got.Strategy != lb.LeastActive {
		t.Fatalf("first pick %+v, want n2 (10 conns / weight 100)", got)
	}
	// 89 more picks: equal load per weight L when 50+a = 10+b = 2*(30+c)
	// and a+b+c = 90: L = 72, so a = 22, b = 62 (with the first), c = 6.
	count := map[string]int{"n2": 1}
	for i := range 89 {
		count[mustRoute(t, h, fmt.Sprint("u", i)).NodeID]++
	}
	want := map[string]int{"n1": 22, "n2": 62, "n3": 6}
	for id, w := range want {
		if d := count[id] - w; d < -2 || d > 2 {
			t.Errorf("%s picked %d times, want %d±2 (all: %v)", id, count[id], w, count)
		}
	}
	if count["n4"]+count["n5"] > 0 {
		t.Fatalf("draining or weight-0 node picked: %v", count)
	}
}

// TestWeightedRandom: picks follow the weights.
func TestWeightedRandom(t *testing.T) {
	c := newHub(t)
	nodes := []membership.NodeInfo{
		with(node("n1", 9010), func(n *membership.NodeInfo) { n.Weight = 100 }),
		with(node("n2", 9020), func(n *membership.NodeInfo) { n.Weight = 300 }),
		with(node("n3", 9030), func(n *membership.NodeInfo) { n.Weight = 600; n.Draining = true }),
		with(node("n4", 9040), func(n *membership.NodeInfo) { n.Weight = 0 }),
	}
	c.set(nodes...)
	r := newRouter(t, c.watcher(), lb.WeightedRandom)
	waitView(t, r, nodes...)
	const picks = 20000
	count := map[string]int{}
	for i := range picks {
		got, err := r.Pick(fmt.Sprint("u", i))
		if err != nil {
			t.Fatal(err)
		}
		count[got.NodeID]++
	}
	// Binomial: sd = sqrt(n p (1-p)) ~ 61 picks (0.3%); allow 2%.
	if share := float64(count["n1"]) / picks; math.Abs(share-0.25) > 0.02 {
		t.Errorf("n1 share %.3f, want 0.25: %v", share, count)
	}
	if count["n1"]+count["n2"] != picks {
		t.Fatalf("draining or weight-0 node picked: %v", count)
	}
}

// TestRoundRobin: picks cycle through the nodes in proportion to weight.
func TestRoundRobin(t *testing.T) {
	c := newHub(t)
	nodes := []membership.NodeInfo{node("n1", 9010), node("n2", 9020), node("n3", 9030),
		with(node("n4", 9040), func(n *membership.NodeInfo) { n.Draining = true })}
	c.set(nodes...)
	r := newRouter(t, c.watcher(), lb.RoundRobin)
	waitView(t, r, nodes...)
	h := r.Handler()
	var seq []string
	for range 9 {
		seq = append(seq, mustRoute(t, h, "same-user").NodeID)
	}
	for i := 0; i < len(seq); i += 3 {
		cycle := slices.Clone(seq[i : i+3])
		slices.Sort(cycle)
		if !slices.Equal(cycle, []string{"n1", "n2", "n3"}) {
			t.Fatalf("picks %v: window %d is not a cycle over n1..n3", seq, i/3)
		}
	}

	// Weights 100:200 (n3 leaves): n2 twice in every window of three.
	c.set(with(nodes[1], func(n *membership.NodeInfo) { n.Weight = 200 }))
	c.remove("n3")
	waitView(t, r, nodes[0], with(nodes[1], func(n *membership.NodeInfo) { n.Weight = 200 }), nodes[3])
	count := map[string]int{}
	for range 30 {
		count[mustRoute(t, h, "u").NodeID]++
	}
	if count["n1"] < 9 || count["n1"] > 11 || count["n1"]+count["n2"] != 30 {
		t.Fatalf("weighted cycle: %v, want n1 10±1 n2 20±1", count)
	}
}

// TestNeverUnusable: no strategy ever hands out a draining node, a node of
// weight 0, or one without a client address; when no node is left the
// answer is a 503 with a JSON reason.
func TestNeverUnusable(t *testing.T) {
	for _, strategy := range lb.Strategies() {
		t.Run(strategy, func(t *testing.T) {
			c := newHub(t)
			good := node("ok", 9010)
			draining := with(node("draining", 9020), func(n *membership.NodeInfo) { n.Draining = true })
			zero := with(node("zero", 9030), func(n *membership.NodeInfo) { n.Weight = 0 })
			noAddr := with(node("noaddr", 9040), func(n *membership.NodeInfo) { n.ClientAddr = "" })
			huge := with(node("huge", 9050), func(n *membership.NodeInfo) { n.Weight = lb.MaxWeight + 1 })
			c.set(good, draining, zero, noAddr, huge)
			r := newRouter(t, c.watcher(), strategy)
			waitView(t, r, good, draining, zero, noAddr, huge)
			h := r.Handler()
			for _, uid := range uids(300) {
				if got := mustRoute(t, h, uid); got.NodeID != "ok" || got.Addr != good.ClientAddr {
					t.Fatalf("%s routed to %+v", uid, got)
				}
			}
			avail := map[string]bool{}
			for _, n := range nodesOf(t, h).Nodes {
				avail[n.ID] = n.Available
			}
			if len(avail) != 5 || !avail["ok"] || avail["draining"] || avail["zero"] || avail["noaddr"] || avail["huge"] {
				t.Fatalf("/v1/nodes availability %v", avail)
			}

			// The last usable node drains: 503, never a crash or an empty
			// address (the original design's nextInt(0)).
			c.set(with(good, func(n *membership.NodeInfo) { n.Draining = true }))
			testutil.Eventually(t, defaultWait, "503", func() error {
				if a := route(t, h, "alice"); a.Code != http.StatusServiceUnavailable {
					return fmt.Errorf("%+v", a)
				}
				return nil
			})
			rec := do(t, h, http.MethodGet, "/v1/route?uid=alice")
			a := route(t, h, "alice")
			if a.Error != "no available node" || rec.Header().Get("Retry-After") == "" ||
				!strings.Contains(a.Reason, "2 draining") || !strings.Contains(a.Reason, "1 at weight 0") ||
				!strings.Contains(a.Reason, "without a client address") || !strings.Contains(a.Reason, "invalid") {
				t.Fatalf("503 answer %+v (headers %v)", a, rec.Header())
			}
			if _, err := r.Pick("alice"); !errors.Is(err, lb.ErrNoAvailableNode) {
				t.Fatalf("Pick = %v, want lb.ErrNoAvailableNode", err)
			}
		})
	}
}

// TestAllZeroWeight is the original design's crash: every node publishes weight 0.
func TestAllZeroWeight(t *testing.T) {
	for _, strategy := range lb.Strategies() {
		c := newHub(t)
		var nodes []membership.NodeInfo
		for i := range 3 {
			nodes = append(nodes, with(node(fmt.Sprint("n", i), 9010+10*i), func(n *membership.NodeInfo) { n.Weight = 0 }))
		}
		c.set(nodes...)
		r := newRouter(t, c.watcher(), strategy)
		waitView(t, r, nodes...)
		if a := route(t, r.Handler(), "alice"); a.Code != http.StatusServiceUnavailable || !strings.Contains(a.Reason, "3 at weight 0") {
			t.Fatalf("%s: %+v", strategy, a)
		}
	}
}

func TestExclude(t *testing.T) {
	c := newHub(t)
	nodes := []membership.NodeInfo{node("n1", 9010), node("n2", 9020), node("n3", 9030)}
	c.set(nodes...)
	r := newRouter(t, c.watcher(), lb.ConsistentHash)
	waitView(t, r, nodes...)
	h := r.Handler()
	for _, uid := range uids(50) {
		owner := mustRoute(t, h, uid).NodeID
		second := mustRoute(t, h, uid, owner, "unknown-node")
		if second.NodeID == owner {
			t.Fatalf("%s: exclude %s ignored", uid, owner)
		}
		if again := mustRoute(t, h, uid, owner); again != second {
			t.Fatalf("%s: failover target not stable: %+v then %+v", uid, second, again)
		}
		// Repeated parameters work like a comma list.
		rec := do(t, h, http.MethodGet, "/v1/route?uid="+uid+"&exclude="+owner+"&exclude="+second.NodeID)
		third := route(t, h, uid, owner, second.NodeID)
		if rec.Code != http.StatusOK || third.Code != http.StatusOK || third.NodeID == owner || third.NodeID == second.NodeID {
			t.Fatalf("%s: excluding two: %d %+v", uid, rec.Code, third)
		}
		if !strings.Contains(rec.Body.String(), `"node_id":"`+third.NodeID+`"`) {
			t.Fatalf("%s: repeated exclude parameters gave %s, comma list %s", uid, rec.Body, third.NodeID)
		}
	}
	a := route(t, h, "alice", "n1", "n2", "n3")
	if a.Code != http.StatusServiceUnavailable || !strings.Contains(a.Reason, "3 excluded") {
		t.Fatalf("everything excluded: %+v", a)
	}
	// Other strategies honour exclude too.
	for _, strategy := range []string{lb.LeastActive, lb.WeightedRandom, lb.RoundRobin} {
		r := newRouter(t, c.watcher(), strategy)
		waitView(t, r, nodes...)
		for i := range 30 {
			if got := mustRoute(t, r.Handler(), fmt.Sprint("u", i), "n1", "n3"); got.NodeID != "n2" {
				t.Fatalf("%s: excluded node picked: %+v", strategy, got)
			}
		}
	}
}

func TestBadRequests(t *testing.T) {
	c := newHub(t)
	c.set(node("n1", 9010))
	r := newRouter(t, c.watcher(), lb.ConsistentHash)
	waitView(t, r, node("n1", 9010))
	h := r.Handler()
	for _, tc := range []struct {
		method, target string
		code           int
		err            string
	}{
		{"GET", "/v1/route", 400, "missing uid"},
		{"GET", "/v1/route?uid=", 400, "missing uid"},
		{"GET", "/v1/route?uid=a%20b", 400, "invalid uid"},
		{"GET", "/v1/route?uid=" + strings.Repeat("x", 65), 400, "invalid uid"},
		{"GET", "/v1/route?uid=alice&exclude=" + strings.Repeat("n,", MaxExclude+1), 400, "too many"},
		{"POST", "/v1/route?uid=alice", 405, "method not allowed"},
		{"DELETE", "/v1/nodes", 405, "method not allowed"},
		{"GET", "/v2/route?uid=alice", 404, "not found"},
	} {
		rec := do(t, h, tc.method, tc.target)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), `"error":"`+tc.err) {
			t.Errorf("%s %s: %d %s, want %d %q", tc.method, tc.target, rec.Code, rec.Body, tc.code, tc.err)
		}
	}
	if got := mustRoute(t, h, strings.Repeat("x", 64)); got.NodeID != "n1" {
		t.Fatalf("64-byte uid: %+v", got)
	}
	if rec := do(t, h, "HEAD", "/v1/route?uid=alice"); rec.Code != http.StatusOK {
		t.Fatalf("HEAD: %d", rec.Code)
	}
}

// TestRoutersAgree: two independent routers over the same membership give
// identical consistent-hash answers, with and without exclude.
func TestRoutersAgree(t *testing.T) {
	c := newHub(t)
	var nodes []membership.NodeInfo
	for i := range 5 {
		nodes = append(nodes, with(node(fmt.Sprint("node-", i), 9010+10*i), func(n *membership.NodeInfo) { n.Weight = 50 + 50*i }))
	}
	c.set(nodes...)
	r1 := newRouter(t, c.watcher(), lb.ConsistentHash)
	r2 := newRouter(t, c.watcher(), lb.ConsistentHash)
	waitView(t, r1, nodes...)
	waitView(t, r2, nodes...)
	s1, s2 := httptest.NewServer(r1.Handler()), httptest.NewServer(r2.Handler())
	defer s1.Close()
	defer s2.Close()
	for i, uid := range uids(2000) {
		a, b := mustRoute(t, r1.Handler(), uid), mustRoute(t, r2.Handler(), uid)
		if a != b {
			t.Fatalf("%s: router 1 %+v, router 2 %+v", uid, a, b)
		}
		if i%100 == 0 { // over real HTTP and with an exclude as well
			ra, na, err1 := client.RouterResolver(s1.URL, uid, s1.Client())(t.Context(), []string{a.NodeID})
			rb, nb, err2 := client.RouterResolver(s2.URL, uid, s2.Client())(t.Context(), []string{a.NodeID})
			if err1 != nil || err2 != nil || ra != rb || na != nb || na == a.NodeID {
				t.Fatalf("%s excluding %s: %s/%s %v, %s/%s %v", uid, a.NodeID, na, ra, err1, nb, rb, err2)
			}
		}
	}
}

// TestMembershipChange: joins, leaves, weight, draining and load updates
// reach the answers; a join moves only the users the new node takes.
func TestMembershipChange(t *testing.T) {
	c := newHub(t)
	n1, n2, n3 := node("n1", 9010), node("n2", 9020), node("n3", 9030)
	c.set(n1, n2, n3)
	r := newRouter(t, c.watcher(), lb.ConsistentHash)
	waitView(t, r, n1, n2, n3)
	h := r.Handler()
	users := uids(2000)
	before := map[string]string{}
	for _, uid := range users {
		before[uid] = mustRoute(t, h, uid).NodeID
	}

	n4 := node("n4", 9040)
	c.set(n4)
	waitView(t, r, n1, n2, n3, n4)
	moved := 0
	for _, uid := range users {
		now := mustRoute(t, h, uid).NodeID
		if now != before[uid] {
			if now != "n4" {
				t.Fatalf("%s moved from %s to %s on n4's join", uid, before[uid], now)
			}
			moved++
		}
	}
	if moved < 300 || moved > 700 { // about a quarter
		t.Fatalf("%d of %d users moved to the new node", moved, len(users))
	}

	c.remove("n1")
	n2.Draining = true
	n3.Conns = 42
	c.set(n2, n3)
	waitView(t, r, n2, n3, n4)
	for _, uid := range users {
		if got := mustRoute(t, h, uid).NodeID; got != "n3" && got != "n4" {
			t.Fatalf("%s routed to %s after n1 left and n2 drains", uid, got)
		}
	}
	resp := nodesOf(t, h)
	if !resp.Ready || resp.Updated == nil || resp.Available != 2 || resp.Strategy != lb.ConsistentHash || len(resp.Nodes) != 3 {
		t.Fatalf("/v1/nodes %+v", resp)
	}
	want := NodeStatus{ID: "n3", ClientAddr: n3.ClientAddr, MeshAddr: n3.MeshAddr, AdminAddr: n3.AdminAddr,
		Weight: n3.Weight, Conns: 42, BootEpoch: n3.BootEpoch, Available: true}
	if resp.Nodes[1] != want || resp.Nodes[0].ID != "n2" || !resp.Nodes[0].Draining || resp.Nodes[0].Available {
		t.Fatalf("/v1/nodes entries %+v", resp.Nodes)
	}

	// The watcher goes away (e.g. closed during shutdown): the last view
	// keeps serving.
	w := c.watcher()
	r2 := newRouter(t, w, lb.ConsistentHash)
	waitView(t, r2, n2, n3, n4)
	_ = w.Close()
	if got := mustRoute(t, r2.Handler(), "alice").NodeID; got != "n3" && got != "n4" {
		t.Fatalf("after the watcher closed: %s", got)
	}
}

func TestMetrics(t *testing.T) {
	c := newHub(t)
	c.set(node("n1", 9010), with(node("n2", 9020), func(n *membership.NodeInfo) { n.Draining = true }))
	r := newRouter(t, c.watcher(), lb.RoundRobin)
	waitView(t, r, node("n1", 9010), with(node("n2", 9020), func(n *membership.NodeInfo) { n.Draining = true }))
	h := r.Handler()
	for range 3 {
		mustRoute(t, h, "alice")
	}
	route(t, h, "alice", "n1")
	route(t, h, "")
	text := metricsText(t, h)
	for _, want := range []string{
		`imgn_router_requests_total{result="ok",strategy="round-robin"} 3`,
		`imgn_router_requests_total{result="unavailable",strategy="round-robin"} 1`,
		`imgn_router_requests_total{result="bad_request",strategy="round-robin"} 1`,
		`imgn_router_route_seconds_count 5`,
		`imgn_router_nodes 2`,
		`imgn_router_nodes_available 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
}

func TestStatic(t *testing.T) {
	nodes := []membership.NodeInfo{node("b", 9020), node("a", 9010)}
	s, err := NewStatic(nodes)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := newRouter(t, s, lb.RoundRobin)
	waitView(t, r, nodes...)
	if got := s.Nodes(); len(got) != 2 || got[0].ID != "a" {
		t.Fatalf("Nodes %+v", got)
	}
	for _, bad := range [][]membership.NodeInfo{
		{node("a", 1), node("a", 2)},
		{node("bad id", 1)},
		{with(node("a", 1), func(n *membership.NodeInfo) { n.Weight = -1 })},
	} {
		if _, err := NewStatic(bad); !errors.Is(err, membership.ErrInvalidNode) {
			t.Errorf("NewStatic(%v) = %v, want ErrInvalidNode", bad, err)
		}
	}
}

// TestClientResolver: client.RouterResolver against a real router: the
// owner, failover with exclude, and ErrNoNodeAvailable when nothing is left.
func TestClientResolver(t *testing.T) {
	c := newHub(t)
	n1, n2 := node("n1", 9010), node("n2", 9020)
	c.set(n1, n2)
	r := newRouter(t, c.watcher(), lb.ConsistentHash)
	waitView(t, r, n1, n2)
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	res := client.RouterResolver(srv.URL, "alice", srv.Client())
	owner := mustRoute(t, r.Handler(), "alice")
	addr, id, err := res(t.Context(), nil)
	if err != nil || addr != owner.Addr || id != owner.NodeID {
		t.Fatalf("resolve = %s %s %v, want %+v", addr, id, err, owner)
	}
	addr, id, err = res(t.Context(), []string{owner.NodeID})
	if err != nil || id == owner.NodeID || addr != addrOf([]membership.NodeInfo{n1, n2}, id) {
		t.Fatalf("resolve excluding %s = %s %s %v", owner.NodeID, addr, id, err)
	}
	if _, _, err := res(t.Context(), []string{"n1", "n2"}); !errors.Is(err, client.ErrNoNodeAvailable) {
		t.Fatalf("everything excluded: %v", err)
	}
}

func addrOf(nodes []membership.NodeInfo, id string) string {
	for _, n := range nodes {
		if n.ID == id {
			return n.ClientAddr
		}
	}
	return ""
}

// ownershipRing is the inbox ownership ring as mesh.Cluster builds it:
// every member at lb.DefaultWeight, lb.DefaultVirtualNodes points.
func ownershipRing(t testing.TB, members []membership.NodeInfo) *lb.Ring {
	t.Helper()
	nodes := make([]lb.Node, len(members))
	for i, m := range members {
		nodes[i] = lb.Node{ID: m.ID, Weight: lb.DefaultWeight}
	}
	ring, err := lb.NewRing(nodes, lb.DefaultVirtualNodes)
	if err != nil {
		t.Fatal(err)
	}
	return ring
}
