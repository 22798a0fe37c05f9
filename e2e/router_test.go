package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/internal/testutil"
)

// TestDrainOneOfThreeUnder200Clients drains a node while 200 clients,
// connected through the router, send: every client ends on another node,
// no acknowledged message is lost or duplicated, and the application sees
// no send error.
func TestDrainOneOfThreeUnder200Clients(t *testing.T) {
	c := newCluster(t, "direct")
	n1, n2, n3 := c.addNode("n1"), c.addNode("n2"), c.addNode("n3")
	c.waitMembers(3, n1, n2, n3)
	router := c.startRouter("consistent-hash")
	const clients = 200
	us := users("d", clients)
	cls := make([]*client.Client, clients)
	var dialWG sync.WaitGroup
	for i, u := range us {
		dialWG.Go(func() { cls[i] = dialRouted(t, router, u) })
	}
	dialWG.Wait()
	if t.Failed() {
		t.FailNow() // a client could not log in (reported above); the rest would dereference it
	}
	onN1 := 0
	for _, cl := range cls {
		if cl.NodeID() == "n1" {
			onN1++
		}
	}
	if onN1 == 0 {
		t.Fatal("no client was routed to n1; the test would prove nothing")
	}
	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, cl := range cls {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for k := 0; ctx.Err() == nil; k++ {
				to := us[r.IntN(clients)]
				id := fmt.Sprintf("%s-%d", us[i], k)
				l.mu.Lock()
				l.sent[id] = true
				l.mu.Unlock()
				// Bounded: a send that cannot complete fails the test with
				// the server's last answer instead of hanging it.
				sctx, scancel := context.WithTimeout(context.Background(), 60*time.Second)
				ack, err := cl.Send(sctx, to, []byte(id), client.WithClientMsgID(id))
				scancel()
				if err != nil {
					t.Errorf("send error surfaced to the application: %v", err)
					return
				}
				l.mu.Lock()
				l.acked[id] = ackRec{from: us[i], to: to, seq: ack.Seq}
				l.mu.Unlock()
				time.Sleep(time.Duration(300+r.IntN(300)) * time.Millisecond)
			}
		})
	}
	// Registered after the clients' Cleanups, so it runs before them: the
	// senders stop before their clients close, on a failure too.
	t.Cleanup(func() { cancel(); wg.Wait() })
	l.waitSends(t, "every client sending before the drain", us, nil, 1)
	local, fwd := 0.0, 0.0
	for _, n := range []*node{n1, n2, n3} {
		local += n.metric(`imgn_inbox_appends_total{where="local"}`)
		fwd += n.metric(`imgn_inbox_appends_total{where="forwarded"}`)
	}
	if local+fwd > 0 {
		t.Logf("before the drain: %.0f inbox appends, %.1f%% forwarded to the owner node (consistent-hash routing)", local+fwd, 100*fwd/(local+fwd))
	}
	n1.signal(syscall.SIGTERM)
	if !n1.wait(30 * time.Second) {
		t.Fatal("n1 did not finish draining")
	}
	// Clients told to leave reconnect after their GO_AWAY delay, through
	// the router: wait until each is on another node (n1 has exited, so
	// none can be on n1 any more; "" is one still reconnecting).
	testutil.Eventually(t, 60*time.Second, "every client on another node after the drain", func() error {
		for _, cl := range cls {
			if id := cl.NodeID(); id == "n1" || id == "" {
				return fmt.Errorf("%s is on %q", cl.User(), id)
			}
		}
		return nil
	})
	// And sending there.
	l.waitSends(t, "every client sending after the drain", us, l.ackedFromEach(us), 1)
	cancel()
	wg.Wait()
	// Check a sample of inboxes (reading all 200 on the dev MongoDB takes long).
	for _, u := range us[:8] {
		l.verifyInbox(t, u, n2.listen, n3.listen)
	}
	t.Logf("%d messages acknowledged across the drain of n1 (%d clients moved)", l.ackedCount(), onN1)
}

// TestScaleOutAndRebalance grows a 2-node cluster to 4 under load and asks
// the old nodes to shed half their clients: the new nodes receive
// connections and nothing acknowledged is lost.
func TestScaleOutAndRebalance(t *testing.T) {
	c := newCluster(t, "direct")
	n1, n2 := c.addNode("n1"), c.addNode("n2")
	c.waitMembers(2, n1, n2)
	router := c.startRouter("least-active")
	const clients = 60
	us := users("s", clients)
	cls := make([]*client.Client, clients)
	for i, u := range us {
		cls[i] = dialRouted(t, router, u)
	}
	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, cl := range cls {
		wg.Go(func() {
			l.sendLoop(ctx, t, cl, us[i], []string{us[(i+1)%clients], us[(i+7)%clients]}, 300*time.Millisecond)
		})
	}
	time.Sleep(time.Second)
	n3, n4 := c.addNode("n3"), c.addNode("n4")
	c.waitMembers(4, n1, n2, n3, n4)
	time.Sleep(3 * time.Second) // the router sees the new nodes' load (published every 2 s)
	for _, n := range []*node{n1, n2} {
		resp, err := http.Post("http://"+n.admin+"/admin/rebalance?fraction=0.5", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	testutil.Until(t, 30*time.Second, "new nodes take connections", func() bool {
		return n3.metric("imgn_sessions") > 0 && n4.metric("imgn_sessions") > 0
	})
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	for _, u := range us[:15] {
		l.verifyInbox(t, u, n1.listen, n2.listen, n3.listen, n4.listen)
	}
	t.Logf("sessions after rebalance: n1=%.0f n2=%.0f n3=%.0f n4=%.0f; %d messages acknowledged",
		n1.metric("imgn_sessions"), n2.metric("imgn_sessions"), n3.metric("imgn_sessions"), n4.metric("imgn_sessions"), l.ackedCount())
}
