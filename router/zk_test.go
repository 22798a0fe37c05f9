package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/lb"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/zkregistry"
)

// cutDialer is a zkregistry Dialer whose connections can all be severed at
// once, with every later dial refused: to ZooKeeper the process is dead
// (no close request, no pings), so its session expires after the session
// timeout, as after a crash or a network partition.
type cutDialer struct {
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func (d *cutDialer) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cut {
		return nil, errors.New("cutDialer: process is dead")
	}
	c, err := net.DialTimeout(network, addr, timeout)
	if err == nil {
		d.conns = append(d.conns, c)
	}
	return c, err
}

func (d *cutDialer) kill() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cut = true
	for _, c := range d.conns {
		_ = c.Close()
	}
}

// TestZooKeeper runs the router on a real ZooKeeper with nodes registered
// through zkregistry: members appear in /v1/nodes; a node that closes its
// registry leaves the answers at once; a node that dies leaves them within
// its session timeout; and with ZooKeeper down the last view keeps serving.
func TestZooKeeper(t *testing.T) {
	svc := testsvc.StartZooKeeper(t)
	const (
		root       = "/test/router/nodes"
		deadTO     = 2 * time.Second        // session timeout of the node that dies
		resync     = 500 * time.Millisecond // router watcher's full re-read period
		slack      = 1500 * time.Millisecond
		registerTO = 20 * time.Second
	)
	newReg := func(id string, port int, dialer func(string, string, time.Duration) (net.Conn, error), sessionTO time.Duration) (*zkregistry.Registry, membership.NodeInfo) {
		t.Helper()
		reg, err := zkregistry.New(zkregistry.Config{Servers: []string{svc.Addr}, Root: root,
			SessionTimeout: sessionTO, Dialer: dialer, Logger: testLogger(t).With("node", id)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = reg.Close() })
		n := with(node(id, port), func(n *membership.NodeInfo) { n.Conns = int64(port % 100) })
		ctx, cancel := context.WithTimeout(context.Background(), registerTO)
		defer cancel()
		if err := reg.Register(ctx, n); err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
		return reg, n
	}
	var dead cutDialer
	_, na := newReg("node-a", 9210, nil, 4*time.Second)
	regB, nb := newReg("node-b", 9220, nil, 4*time.Second)
	_, nc := newReg("node-c", 9230, dead.Dial, deadTO)

	w, err := zkregistry.NewWatcher(zkregistry.Config{Servers: []string{svc.Addr}, Root: root,
		SessionTimeout: 4 * time.Second, ResyncInterval: resync, Logger: testLogger(t).With("router", "watcher")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	r := newRouter(t, w, lb.ConsistentHash)
	h := r.Handler()

	// Every registered node shows up in /v1/nodes with what it published.
	testutil.Eventually(t, registerTO, "/v1/nodes lists the registered nodes", func() error {
		resp := nodesOf(t, h)
		var got []membership.NodeInfo
		for _, s := range resp.Nodes {
			if !s.Available {
				return fmt.Errorf("%s not available: %+v", s.ID, s)
			}
			got = append(got, membership.NodeInfo{ID: s.ID, ClientAddr: s.ClientAddr, MeshAddr: s.MeshAddr, AdminAddr: s.AdminAddr,
				Weight: s.Weight, Conns: s.Conns, BootEpoch: s.BootEpoch, Draining: s.Draining})
		}
		if want := []membership.NodeInfo{na, nb, nc}; !resp.Ready || !slices.Equal(got, want) {
			return fmt.Errorf("nodes %+v, want %+v", got, want)
		}
		return nil
	})
	users := uids(600)
	ring := ownershipRing(t, []membership.NodeInfo{na, nb, nc})
	on := map[string][]string{}
	for _, uid := range users {
		got := mustRoute(t, h, uid)
		if owner, _ := ring.Owner(uid); got.NodeID != owner {
			t.Fatalf("%s routed to %s, owner %s", uid, got.NodeID, owner)
		}
		on[got.NodeID] = append(on[got.NodeID], uid)
	}
	if len(on["node-b"]) == 0 || len(on["node-c"]) == 0 {
		t.Fatalf("uneven test users: %v", on)
	}
	// routedAway reports nil once no user is routed to id.
	routedAway := func(id string) func() error {
		return func() error {
			for _, uid := range users {
				if got := mustRoute(t, h, uid); got.NodeID == id {
					return fmt.Errorf("%s still routed to %s", uid, id)
				}
			}
			return nil
		}
	}

	// A node that shuts down closes its session: gone at once.
	start := time.Now()
	if err := regB.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, resync+slack, "closed node-b out of the answers", routedAway("node-b"))
	t.Logf("closed node: out of the answers after %v", time.Since(start).Round(time.Millisecond))

	// A node that dies: its znode goes when ZooKeeper expires the session,
	// within the session timeout (plus one watcher resync and slack for a
	// loaded machine).
	start = time.Now()
	dead.kill()
	testutil.Eventually(t, deadTO+resync+slack, "dead node-c out of the answers", routedAway("node-c"))
	t.Logf("dead node (session timeout %v): out of the answers after %v", deadTO, time.Since(start).Round(time.Millisecond))
	for _, uid := range users {
		if got := mustRoute(t, h, uid); got.NodeID != "node-a" || got.Addr != na.ClientAddr {
			t.Fatalf("%s: %+v, want node-a", uid, got)
		}
	}
	if ids := ids(r.Nodes()); !slices.Equal(ids, []string{"node-a"}) {
		t.Fatalf("view %v", ids)
	}

	// ZooKeeper goes down: once the watcher has noticed, the last view is
	// still served.
	if err := svc.Stop(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "watcher notices ZooKeeper is down", func() error {
		if w.Status().Connected {
			return errors.New("still connected")
		}
		return nil
	})
	if got := mustRoute(t, h, "alice"); got.NodeID != "node-a" {
		t.Fatalf("with ZooKeeper down: %+v", got)
	}
	if rec := do(t, h, http.MethodGet, "/readyz"); rec.Code != http.StatusOK {
		t.Fatalf("/readyz with ZooKeeper down: %d", rec.Code)
	}
}
