package router

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/transporttest"
	"github.com/imgn/imgn/persist"
)

// nopTransport is a mesh.Transport that forwards nothing: ownership needs
// only membership.
type nopTransport struct{}

func (nopTransport) Start(context.Context, membership.NodeInfo, cluster.Handler) error { return nil }
func (nopTransport) Addr() string                                                      { return "" }
func (nopTransport) SetPeers([]membership.NodeInfo)                                    {}
func (nopTransport) Append(context.Context, string, persist.Message, []string) (persist.AppendResult, error) {
	return persist.AppendResult{}, cluster.ErrForward
}
func (nopTransport) AppendEntries(context.Context, string, persist.Message, []string) (persist.AppendResult, error) {
	return persist.AppendResult{}, cluster.ErrForward
}
func (nopTransport) Admin(context.Context, string, cluster.AdminRequest) (int, error) {
	return 0, cluster.ErrForward
}
func (nopTransport) Push(string, persist.Message, []cluster.PushTarget) {}
func (nopTransport) Kick(string, string, string, uint64)                {}
func (nopTransport) Signal(string, cluster.Signal)                      {}
func (nopTransport) Close() error                                       { return nil }

// TestRoutingMatchesOwnership runs real mesh.Clusters and a Router on one
// in-memory registry: with consistent-hash, every user is routed to the
// node that owns their inbox. When a node drains, its users go to the node
// that will own their inbox once it has left, and nobody else moves.
func TestRoutingMatchesOwnership(t *testing.T) {
	hub := membership.NewMemoryHub()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var clusters []*mesh.Cluster
	var nodes []membership.NodeInfo
	for i := range 4 {
		reg := hub.NewRegistry()
		t.Cleanup(func() { _ = reg.Close() })
		self := node(fmt.Sprint("node-", i), 9100+10*i)
		c, err := mesh.New(mesh.Config{Self: self, Registry: reg, Transport: nopTransport{}, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(ctx, &transporttest.Handler{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		clusters = append(clusters, c)
		nodes = append(nodes, c.Self())
	}
	w := hub.NewWatcher()
	defer w.Close()
	r := newRouter(t, w, lb.ConsistentHash)
	waitView(t, r, nodes...)
	testutil.Eventually(t, defaultWait, "clusters see every member", func() error {
		for _, c := range clusters {
			if n := len(c.Members()); n != len(nodes) {
				return fmt.Errorf("%s sees %d members", c.NodeID(), n)
			}
		}
		return nil
	})
	users := uids(4000)
	owner := map[string]string{}
	for _, uid := range users {
		owner[uid], _ = clusters[0].Owner(uid)
		for _, c := range clusters[1:] {
			if o, _ := c.Owner(uid); o != owner[uid] {
				t.Fatalf("%s: clusters disagree: %s vs %s", uid, owner[uid], o)
			}
		}
		if got := mustRoute(t, r.Handler(), uid); got.NodeID != owner[uid] {
			t.Fatalf("%s routed to %s, inbox owner %s", uid, got.NodeID, owner[uid])
		}
	}

	// node-1 drains: routing avoids it; its users go where their inbox
	// will live once node-1 is gone; everyone else stays on their owner.
	if err := clusters[1].SetDraining(ctx, true); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, defaultWait, "router sees the drain", func() error {
		for _, n := range r.Nodes() {
			if n.ID == "node-1" && n.Draining {
				return nil
			}
		}
		return fmt.Errorf("view %+v", r.Nodes())
	})
	after := ownershipRing(t, []membership.NodeInfo{nodes[0], nodes[2], nodes[3]})
	for _, uid := range users {
		got := mustRoute(t, r.Handler(), uid).NodeID
		if o, _ := clusters[0].Owner(uid); o != owner[uid] {
			t.Fatalf("%s: draining moved the inbox from %s to %s", uid, owner[uid], o)
		}
		switch {
		case got == "node-1":
			t.Fatalf("%s routed to the draining node", uid)
		case owner[uid] != "node-1" && got != owner[uid]:
			t.Fatalf("%s moved from %s to %s although its owner is not draining", uid, owner[uid], got)
		}
		if next, _ := after.Owner(uid); got != next {
			t.Fatalf("%s routed to %s, owner after the drain completes %s", uid, got, next)
		}
	}
}
