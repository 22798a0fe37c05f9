package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/internal/leaktest"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/transporttest"
	"github.com/imgn/imgn/persist"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leaktest.Gnet()...)
}

// testNode is one Cluster of a test with its handler and connection count.
type testNode struct {
	c     *mesh.Cluster
	h     *transporttest.Handler
	conns atomic.Int64
}

// newNode builds (but does not start) a Cluster on hub with direct links.
func newNode(t *testing.T, hub *membership.MemoryHub, id string) *testNode {
	t.Helper()
	l, err := mesh.NewLinks(fastLinks(transporttest.DefaultParams))
	if err != nil {
		t.Fatal(err)
	}
	reg := hub.NewRegistry()
	n := &testNode{h: &transporttest.Handler{}}
	n.c, err = mesh.New(mesh.Config{
		Self:         membership.NodeInfo{ID: id, ClientAddr: "127.0.0.1:1", MeshAddr: "127.0.0.1:0", Weight: 100},
		Registry:     reg,
		Transport:    l,
		LoadInterval: 20 * time.Millisecond,
		Conns:        n.conns.Load,
		Logger:       testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.c.Close(); err != nil {
			t.Errorf("close %s: %v", id, err)
		}
		reg.Close()
	})
	return n
}

// startTogether builds and starts n nodes at the same instant.
func startTogether(t *testing.T, hub *membership.MemoryHub, ids ...string) []*testNode {
	t.Helper()
	nodes := make([]*testNode, len(ids))
	for i, id := range ids {
		nodes[i] = newNode(t, hub, id)
	}
	gate := make(chan struct{})
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			<-gate
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errs[i] = n.c.Start(ctx, n.h)
		})
	}
	close(gate)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return nodes
}

// waitMembers polls until every node's view has exactly want members.
func waitMembers(t *testing.T, want int, nodes ...*testNode) {
	t.Helper()
	testutil.Eventually(t, transporttest.Patience, "membership views", func() error {
		for _, n := range nodes {
			if got := len(n.c.Members()); got != want {
				return fmt.Errorf("%s sees %d members, want %d", n.c.NodeID(), got, want)
			}
		}
		return nil
	})
}

func owners(n *testNode, users []string) map[string]string {
	m := make(map[string]string, len(users))
	for _, u := range users {
		m[u], _ = n.c.Owner(u)
	}
	return m
}

func users(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("user-%d", i)
	}
	return out
}

func TestClusterConfig(t *testing.T) {
	l, _ := mesh.NewLinks(mesh.LinkConfig{})
	reg := membership.NewMemoryRegistry()
	defer reg.Close()
	good := membership.NodeInfo{ID: "n1", MeshAddr: "127.0.0.1:0"}
	bad := []mesh.Config{
		{Self: good, Transport: l},
		{Self: good, Registry: reg},
		{Self: membership.NodeInfo{ID: "a/b"}, Registry: reg, Transport: l},
		{Self: membership.NodeInfo{ID: "n1", Weight: -1}, Registry: reg, Transport: l},
		{Self: good, Registry: reg, Transport: l, VirtualNodes: -1},
		{Self: good, Registry: reg, Transport: l, LoadInterval: -time.Second},
	}
	for i, cfg := range bad {
		if _, err := mesh.New(cfg); !errors.Is(err, mesh.ErrClusterConfig) {
			t.Errorf("config %d: %v", i, err)
		}
	}
	c, err := mesh.New(mesh.Config{Self: good, Registry: reg, Transport: l})
	if err != nil {
		t.Fatal(err)
	}
	if c.BootEpoch() == 0 {
		t.Error("no boot epoch assigned")
	}
	// Before Start: this node owns everything; only itself is live.
	if node, local := c.Owner("anyone"); node != "n1" || !local {
		t.Errorf("Owner before Start = %s, %v", node, local)
	}
	if !c.Live("n1", c.BootEpoch()) || c.Live("n1", c.BootEpoch()+1) || c.Live("n2", 1) {
		t.Error("Live before Start")
	}
	if _, err := c.Append(context.Background(), "n2", persist.Message{}, nil); !errors.Is(err, cluster.ErrForward) {
		t.Errorf("Append before Start: %v", err)
	}
	if err := c.Start(context.Background(), nil); err == nil {
		t.Error("Start with a nil handler succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background(), &transporttest.Handler{}); err == nil {
		t.Error("Start after Close succeeded")
	}
	l.Close()
}

// TestClusterOwnership: three nodes started at the same instant agree on
// the owner of 1000 users and share them; a node leaving moves only its
// own users, and the others agree on the new owners.
func TestClusterOwnership(t *testing.T) {
	hub := membership.NewMemoryHub()
	nodes := startTogether(t, hub, "n1", "n2", "n3")
	waitMembers(t, 3, nodes...)
	us := users(1000)
	before := owners(nodes[0], us)
	share := map[string]int{}
	for _, n := range nodes {
		for _, u := range us {
			node, local := n.c.Owner(u)
			if node != before[u] {
				t.Fatalf("%s says %s owns %s, n1 says %s", n.c.NodeID(), node, u, before[u])
			}
			if local != (node == n.c.NodeID()) {
				t.Fatalf("%s: local=%v for owner %s", n.c.NodeID(), local, node)
			}
		}
	}
	for _, o := range before {
		share[o]++
	}
	for _, n := range nodes {
		if s := share[n.c.NodeID()]; s < 200 || s > 470 {
			t.Errorf("%s owns %d of 1000 users", n.c.NodeID(), s)
		}
	}

	// n3 leaves.
	if err := nodes[2].c.Close(); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, 2, nodes[0], nodes[1])
	after := owners(nodes[0], us)
	moved := 0
	for _, u := range us {
		if o, _ := nodes[1].c.Owner(u); o != after[u] {
			t.Fatalf("n1 and n2 disagree on %s: %s vs %s", u, after[u], o)
		}
		switch {
		case before[u] != "n3" && after[u] != before[u]:
			t.Fatalf("%s moved from %s to %s although its owner stayed", u, before[u], after[u])
		case before[u] == "n3" && after[u] == "n3":
			t.Fatalf("%s still owned by the departed n3", u)
		case before[u] == "n3":
			moved++
		}
	}
	if moved != share["n3"] {
		t.Fatalf("%d users moved, n3 owned %d", moved, share["n3"])
	}
}

func TestClusterLive(t *testing.T) {
	hub := membership.NewMemoryHub()
	nodes := startTogether(t, hub, "n1", "n2")
	waitMembers(t, 2, nodes...)
	a, b := nodes[0].c, nodes[1].c
	eb := b.BootEpoch()
	switch {
	case !a.Live("n2", eb):
		t.Error("n2 with its epoch is not live")
	case a.Live("n2", eb-1), a.Live("n2", eb+1):
		t.Error("n2 with another epoch is live")
	case a.Live("n9", eb):
		t.Error("an unknown node is live")
	case !a.Live("n1", a.BootEpoch()):
		t.Error("self is not live")
	case a.Live("n1", a.BootEpoch()-1):
		t.Error("an older run of self is live")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, 1, nodes[0])
	if a.Live("n2", eb) {
		t.Error("a departed node is still live")
	}
	// The node alone owns everything again.
	if node, local := a.Owner("someone"); node != "n1" || !local {
		t.Errorf("sole node: Owner = %s, %v", node, local)
	}
}

// TestClusterForwarding: Append, Push and Kick reach the named node's
// handler, remote or local, and fail with ErrForward once it is gone.
func TestClusterForwarding(t *testing.T) {
	hub := membership.NewMemoryHub()
	nodes := startTogether(t, hub, "n1", "n2")
	waitMembers(t, 2, nodes...)
	a, b := nodes[0], nodes[1]
	ctx := context.Background()
	m := persist.Message{ID: 9, From: "x", To: "y", Body: []byte("hi")}
	res, err := a.c.Append(ctx, "n2", m, []string{"y", "z"})
	if err != nil || res.Msg.ID != 9 || len(res.Seqs) != 2 || res.Seqs[1] != 901 {
		t.Fatalf("forwarded append: %+v %v", res, err)
	}
	if len(b.h.Appends()) != 1 || len(a.h.Appends()) != 0 {
		t.Fatal("append did not land on n2 only")
	}
	if _, err := a.c.Append(ctx, "n1", m, []string{"y"}); err != nil || len(a.h.Appends()) != 1 {
		t.Fatalf("local append: %v", err)
	}
	a.c.Push("n2", m, []cluster.PushTarget{{User: "y", Seq: 3}})
	a.c.Kick("n2", "y", "phone", 5)
	a.c.Push("n1", m, []cluster.PushTarget{{User: "y", Seq: 4}})
	a.c.Kick("n1", "y", "tablet", 6)
	testutil.Eventually(t, transporttest.Patience, "pushes and kicks delivered", func() error {
		if len(b.h.Pushes()) != 1 || len(b.h.Kicks()) != 1 {
			return errors.New("push or kick not at n2")
		}
		return nil
	})
	if len(a.h.Pushes()) != 1 || len(a.h.Kicks()) != 1 {
		t.Fatal("local push or kick not handled")
	}
	if err := b.c.Close(); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, 1, a)
	if _, err := a.c.Append(ctx, "n2", m, []string{"y"}); !errors.Is(err, cluster.ErrForward) {
		t.Fatalf("append to a departed node: %v", err)
	}
}

// TestClusterPublishing: weight, draining and the connection count reach
// the registry, and neither weight nor draining moves an inbox.
func TestClusterPublishing(t *testing.T) {
	hub := membership.NewMemoryHub()
	nodes := startTogether(t, hub, "n1", "n2", "n3")
	waitMembers(t, 3, nodes...)
	watcher := hub.NewWatcher()
	defer watcher.Close()
	find := func(id string) membership.NodeInfo {
		for _, n := range watcher.Nodes() {
			if n.ID == id {
				return n
			}
		}
		return membership.NodeInfo{}
	}
	us := users(1000)
	before := owners(nodes[0], us)

	b := nodes[1]
	if got := find("n2"); got.MeshAddr != b.c.Self().MeshAddr || got.MeshAddr == "127.0.0.1:0" {
		t.Fatalf("published mesh addr %q, self %q", got.MeshAddr, b.c.Self().MeshAddr)
	}
	ctx := context.Background()
	if err := b.c.SetWeight(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.c.SetWeight(ctx, -1); err == nil {
		t.Fatal("negative weight accepted")
	}
	if err := b.c.SetDraining(ctx, true); err != nil {
		t.Fatal(err)
	}
	b.conns.Store(42)
	testutil.Eventually(t, transporttest.Patience, "connection count in the views", func() error {
		got := find("n2")
		if got.Weight != 0 || !got.Draining || got.Conns != 42 {
			return fmt.Errorf("registry holds %+v", got)
		}
		for _, n := range nodes {
			if m := n.c.Members(); m[1].Conns != 42 {
				return fmt.Errorf("%s sees %+v", n.c.NodeID(), m[1])
			}
		}
		return nil
	})
	for _, n := range nodes {
		for u, o := range owners(n, us) {
			if before[u] != o {
				t.Fatalf("%s: %s moved from %s to %s on a weight/drain change", n.c.NodeID(), u, before[u], o)
			}
		}
	}
	if s := b.c.Self(); s.Weight != 0 || !s.Draining || s.Conns != 42 {
		t.Fatalf("Self() = %+v", s)
	}
}

// TestClusterStartFails: a Start that cannot register (the ID is held by
// a newer run) gives up with ctx and leaves nothing running.
func TestClusterStartFails(t *testing.T) {
	hub := membership.NewMemoryHub()
	holder := hub.NewRegistry()
	defer holder.Close()
	if err := holder.Register(context.Background(), membership.NodeInfo{ID: "n1", BootEpoch: 1 << 62}); err != nil {
		t.Fatal(err)
	}
	n := newNode(t, hub, "n1")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := n.c.Start(ctx, n.h)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, membership.ErrIDConflict) {
		t.Fatalf("Start with a held ID: %v", err)
	}
	if err := n.c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestClusterNodeRestart: a node that restarts (same ID, new boot epoch,
// new port) replaces its old run in every view: routes to the old run are
// stale, and forwarding reaches the new run.
func TestClusterNodeRestart(t *testing.T) {
	hub := membership.NewMemoryHub()
	nodes := startTogether(t, hub, "n1", "n2")
	waitMembers(t, 2, nodes...)
	a, old := nodes[0], nodes[1]
	oldEpoch := old.c.BootEpoch()
	if err := old.c.Close(); err != nil {
		t.Fatal(err)
	}
	b := startTogether(t, hub, "n2")[0]
	if b.c.BootEpoch() <= oldEpoch {
		t.Fatalf("new epoch %d not after %d", b.c.BootEpoch(), oldEpoch)
	}
	testutil.Eventually(t, transporttest.Patience, "the restarted node is seen", func() error {
		if !a.c.Live("n2", b.c.BootEpoch()) {
			return errors.New("new run not live yet")
		}
		_, err := a.c.Append(context.Background(), "n2", persist.Message{ID: 1}, []string{"u"})
		return err
	})
	if a.c.Live("n2", oldEpoch) {
		t.Error("the old run is still live")
	}
	if len(b.h.Appends()) == 0 || len(old.h.Appends()) != 0 {
		t.Error("the append did not reach the new run")
	}
}

// TestAdminReachesEveryMember: an admin request runs on every member
// (this node's handler directly, the others over their links) and each
// member's count comes back, sorted by node; a member whose link is gone
// reports an error wrapping cluster.ErrForward while the others answer.
func TestAdminReachesEveryMember(t *testing.T) {
	hub := membership.NewMemoryHub()
	nodes := startTogether(t, hub, "n1", "n2", "n3")
	waitMembers(t, 3, nodes...)
	for i, n := range nodes {
		n.h.AdminCount = 10 * (i + 1) // set before any request: no race
	}
	req := cluster.AdminRequest{Kind: cluster.AdminBroadcast, Text: "hello all", Time: 99}
	var got []cluster.NodeCount
	testutil.Eventually(t, transporttest.Patience, "broadcast counts", func() error { // links may still be forming
		got = nodes[1].c.Admin(t.Context(), req)
		for _, c := range got {
			if c.Err != nil {
				return c.Err
			}
		}
		return nil
	})
	want := []cluster.NodeCount{{Node: "n1", Count: 10}, {Node: "n2", Count: 20}, {Node: "n3", Count: 30}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Admin = %v, want %v", got, want)
	}
	for _, n := range nodes {
		if a := n.h.Admins(); len(a) == 0 || a[len(a)-1] != req {
			t.Fatalf("%s saw %v, want %+v last", n.c.NodeID(), a, req)
		}
	}
	// n3's transport stops while it is still in the view of the others.
	if err := nodes[2].c.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	got = nodes[0].c.Admin(ctx, cluster.AdminRequest{Kind: cluster.AdminKick, User: "bob"})
	for _, c := range got {
		switch {
		case c.Node == "n3" && c.Err != nil && !errors.Is(c.Err, cluster.ErrForward):
			t.Fatalf("n3 after its close: %v, want ErrForward", c.Err)
		case c.Node != "n3" && c.Err != nil:
			t.Fatalf("%s: %v", c.Node, c.Err)
		}
	}
}
