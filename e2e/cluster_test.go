package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/internal/clusterkit"
	"github.com/imgn/imgn/internal/testutil"
)

// users returns n user ids with the given prefix.
func users(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

func receiveN(t *testing.T, cl *client.Client, n int, d time.Duration) []*pb.Message {
	t.Helper()
	var out []*pb.Message
	timeout := time.After(d)
	for len(out) < n {
		select {
		case m := <-cl.Messages():
			out = append(out, m)
		case <-timeout:
			t.Fatalf("%s: received %d of %d", cl.User(), len(out), n)
		}
	}
	return out
}

// TestCrossNodeMessaging: users on different nodes exchange 1:1 and group
// messages, in order per recipient, over both mesh transports.
func TestCrossNodeMessaging(t *testing.T) {
	for _, mode := range []string{"direct", "redis"} {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, mode)
			n1, n2, n3 := c.addNode("n1"), c.addNode("n2"), c.addNode("n3")
			c.waitMembers(3, n1, n2, n3)
			// Every node names the same owner for every inbox.
			for _, u := range []string{"alice", "bob", "carol", "dave"} {
				if o1, o2, o3 := n1.owner(u), n2.owner(u), n3.owner(u); o1 == "" || o1 != o2 || o2 != o3 {
					t.Fatalf("owners of %s disagree: %q %q %q", u, o1, o2, o3)
				}
			}
			alice := dialNode(t, "alice", "pc", n1.listen)
			bob := dialNode(t, "bob", "pc", n2.listen)
			carol := dialNode(t, "carol", "pc", n3.listen)
			const n = 50
			for i := range n {
				if _, err := alice.Send(t.Context(), "bob", []byte(fmt.Sprint(i))); err != nil {
					t.Fatal(err)
				}
			}
			got := receiveN(t, bob, n, 20*time.Second)
			for i, m := range got {
				if string(m.Body) != fmt.Sprint(i) || m.Seq != uint64(i+1) || m.From != "alice" {
					t.Fatalf("bob message %d: %v", i, m)
				}
			}
			receiveN(t, alice, n, 20*time.Second) // alice's own inbox copies
			g, err := carol.CreateGroup(t.Context(), "trio", "alice", "bob")
			if err != nil {
				t.Fatal(err)
			}
			for _, cl := range []*client.Client{alice, bob, carol} { // the members' announcement first
				m := receiveN(t, cl, 1, 20*time.Second)[0]
				if ev, err := codec.ParseGroupEvent(m.Body); m.Kind != codec.KindGroupEvent || err != nil || ev.Type != codec.GroupEventAdded || !slices.Equal(ev.Users, []string{"alice", "bob"}) || ev.By != "carol" {
					t.Fatalf("%s: %v (%+v, %v), want the creation's members_added", cl.User(), m, ev, err)
				}
			}
			for i := range 10 {
				if _, err := carol.SendGroup(t.Context(), g.GroupId, []byte(fmt.Sprint("g", i))); err != nil {
					t.Fatal(err)
				}
			}
			for _, cl := range []*client.Client{alice, bob, carol} {
				msgs := receiveN(t, cl, 10, 20*time.Second)
				for i, m := range msgs {
					if m.GroupId != g.GroupId || string(m.Body) != fmt.Sprint("g", i) {
						t.Fatalf("%s group message %d: %v", cl.User(), i, m)
					}
				}
			}
			// A member removed on one node gets nothing more from the group,
			// sent through another node: no node caches stale membership.
			if _, err := carol.RemoveGroupMembers(t.Context(), g.GroupId, "bob"); err != nil {
				t.Fatal(err)
			}
			for _, cl := range []*client.Client{alice, bob, carol} {
				m := receiveN(t, cl, 1, 20*time.Second)[0]
				ev, err := codec.ParseGroupEvent(m.Body)
				if m.Kind != codec.KindGroupEvent || err != nil || ev.Type != codec.GroupEventRemoved || !slices.Equal(ev.Users, []string{"bob"}) {
					t.Fatalf("%s: %v (%+v, %v), want bob's removal", cl.User(), m, ev, err)
				}
			}
			if _, err := alice.SendGroup(t.Context(), g.GroupId, []byte("without bob")); err != nil {
				t.Fatal(err)
			}
			for _, cl := range []*client.Client{alice, carol} {
				if m := receiveN(t, cl, 1, 20*time.Second)[0]; string(m.Body) != "without bob" {
					t.Fatalf("%s: %v", cl.User(), m)
				}
			}
			// bob's next entry is a later note to himself, not the group's.
			if _, err := bob.Send(t.Context(), "bob", []byte("note")); err != nil {
				t.Fatal(err)
			}
			if m := receiveN(t, bob, 1, 20*time.Second)[0]; string(m.Body) != "note" {
				t.Fatalf("bob after his removal got %v", m)
			}
			pres, err := alice.Presence(t.Context(), "bob", "carol", "dave")
			if err != nil || !pres[0].Online || !pres[1].Online || pres[2].Online {
				t.Fatalf("cluster-wide presence %v %v", pres, err)
			}
			// An operator broadcast to one node reaches every node's users,
			// and the answer counts them per node.
			var bc adminAnswer
			if err := postJSON("http://"+n1.admin+"/admin/broadcast", `{"text":"maintenance at noon"}`, &bc); err != nil {
				t.Fatal(err)
			}
			if bc.Delivered != 3 || bc.Nodes["n1"] != 1 || bc.Nodes["n2"] != 1 || bc.Nodes["n3"] != 1 || len(bc.Failed) != 0 {
				t.Fatalf("broadcast answer %+v, want 1 connection on each of n1, n2, n3", bc)
			}
			for _, cl := range []*client.Client{alice, bob, carol} {
				select {
				case nt := <-cl.Notices():
					if nt.GetText() != "maintenance at noon" {
						t.Fatalf("%s got notice %q", cl.User(), nt.GetText())
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("%s got no notice", cl.User())
				}
			}
			// A kick sent to n1 ends carol's session on n3.
			var kk adminAnswer
			if err := postJSON("http://"+n1.admin+"/admin/kick?user=carol", ``, &kk); err != nil {
				t.Fatal(err)
			}
			if kk.Kicked != 1 || kk.Nodes["n3"] != 1 || kk.Nodes["n1"] != 0 || kk.Nodes["n2"] != 0 {
				t.Fatalf("kick answer %+v, want carol's one connection on n3", kk)
			}
			select {
			case <-carol.Done():
				if !errors.Is(carol.Err(), client.ErrKicked) {
					t.Fatalf("carol stopped with %v, want a kick", carol.Err())
				}
			case <-time.After(10 * time.Second):
				t.Fatal("carol was not kicked")
			}
		})
	}
}

// adminAnswer is the JSON answer of the cluster-wide admin calls.
type adminAnswer struct {
	Delivered int               `json:"delivered"`
	Kicked    int               `json:"kicked"`
	Nodes     map[string]int    `json:"nodes"`
	Failed    map[string]string `json:"failed"`
}

// TestOwnerKilledFailsFastWithForwardFailed: after SIGKILL of the node that
// owns bob's inbox, sends to bob fail with the retryable FORWARD_FAILED
// (with retry_after_ms), never a bare timeout, until the ownership view
// drops the dead node; then they succeed, and a send made with the client
// library's retries rides through the window with one client_msg_id.
func TestOwnerKilledFailsFastWithForwardFailed(t *testing.T) {
	c := newCluster(t, "direct")
	n1, n2, n3 := c.addNode("n1"), c.addNode("n2"), c.addNode("n3")
	c.waitMembers(3, n1, n2, n3)
	// bob's inbox is owned by n3, alice's by another node; both connect to
	// live nodes.
	var bobID, aliceID string
	for i := 0; bobID == "" || aliceID == ""; i++ {
		u := fmt.Sprint("user", i)
		switch o := n1.owner(u); {
		case o == "n3" && bobID == "":
			bobID = u
		case o != "n3" && o != "" && aliceID == "":
			aliceID = u
		}
	}
	alice := dialNode(t, aliceID, "pc", n1.listen)
	bob := dialNode(t, bobID, "pc", n2.listen)
	if _, err := alice.Send(t.Context(), bobID, []byte("before")); err != nil {
		t.Fatal(err)
	}
	n3.kill()
	var forwardFailed int
	retried := make(chan error, 1)
	go func() { // with retries: the call outlives the window
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := alice.Send(ctx, bobID, []byte("retried"))
		retried <- err
	}()
	for {
		// A short deadline: the error must still carry the server's
		// answer, so the server answered within it.
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := alice.Send(ctx, bobID, []byte(fmt.Sprint("probe", forwardFailed)))
		cancel()
		if err == nil {
			break
		}
		var se *client.Error
		if !errors.As(err, &se) || se.Code != codec.CodeForwardFailed || !se.Retryable || se.RetryAfter <= 0 {
			t.Fatalf("send to the dead owner's inbox: %v, want a retryable FORWARD_FAILED with retry_after_ms", err)
		}
		forwardFailed++
		if forwardFailed > 60 {
			t.Fatal("sends kept failing for a minute")
		}
	}
	if forwardFailed == 0 {
		t.Fatal("no send failed while the dead owner was still in the view")
	}
	if err := <-retried; err != nil {
		t.Fatalf("send with retries across the failover: %v", err)
	}
	if m := n1.members(); len(m) != 2 {
		t.Fatalf("a send succeeded while n1 still sees %v", m)
	}
	// bob's new owner took over the inbox: everything acknowledged is there.
	want := map[string]bool{"before": true, "retried": true}
	deadline := time.After(20 * time.Second)
	for len(want) > 0 {
		select {
		case m := <-bob.Messages():
			delete(want, string(m.Body))
		case <-deadline:
			t.Fatalf("bob is missing %v", want)
		}
	}
	t.Logf("%d sends failed with FORWARD_FAILED before the view dropped n3", forwardFailed)
}

// TestNodeKilledWhileSending: SIGKILL one of three nodes while clients on
// every node send; afterwards every acknowledged message is in its inboxes,
// exactly once, with no seq gap, and the clients of the dead node carry on
// through the others.
func TestNodeKilledWhileSending(t *testing.T) {
	c := newCluster(t, "direct")
	n1, n2, n3 := c.addNode("n1"), c.addNode("n2"), c.addNode("n3")
	c.waitMembers(3, n1, n2, n3)
	all := []string{n1.listen, n2.listen, n3.listen}
	us := users("u", 6)
	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// Log everyone in first: a user exists once it has logged in.
	clients := make([]*client.Client, len(us))
	for i, u := range us {
		// Each user starts on a different node and fails over to the others.
		clients[i] = dialNode(t, u, "pc", append([]string{all[i%3]}, all...)...)
	}
	for i, u := range us {
		cl := clients[i]
		wg.Go(func() {
			others := slices.DeleteFunc(slices.Clone(us), func(x string) bool { return x == u })
			l.sendLoop(ctx, t, cl, u, others, 2*time.Millisecond)
		})
	}
	// Registered after the clients' Cleanups, so it runs before them: the
	// senders stop before their clients close, on a failure too.
	t.Cleanup(func() { cancel(); wg.Wait() })
	// Every client has had sends acknowledged before the kill, and every
	// one (those of n3 included) has more acknowledged after it.
	l.waitSends(t, "every client sending before the kill", us, nil, 10)
	n3.kill()
	l.waitSends(t, "every client carrying on after the kill", us, l.ackedFromEach(us), 10)
	cancel()
	wg.Wait()
	c.waitMembers(2, n1, n2)
	for _, u := range us {
		l.verifyInbox(t, u, n1.listen, n2.listen)
	}
	t.Logf("%d messages acknowledged; all present exactly once after SIGKILL of a node", l.ackedCount())
}

// TestZooKeeperSessionExpiryHeals: a node frozen past its ZooKeeper session
// timeout loses its registration; when it resumes it re-registers and the
// mesh heals.
func TestZooKeeperSessionExpiryHeals(t *testing.T) {
	c := newCluster(t, "direct")
	n1, n2, n3 := c.addNode("n1"), c.addNode("n2"), c.addNode("n3")
	c.waitMembers(3, n1, n2, n3)
	n3.signal(syscall.SIGSTOP)
	c.waitMembers(2, n1, n2) // its session expired
	n3.signal(syscall.SIGCONT)
	c.waitMembers(3, n1, n2, n3)
	// And the healed mesh carries traffic to and from n3.
	a := dialNode(t, "alice", "pc", n1.listen)
	b := dialNode(t, "bob", "pc", n3.listen)
	if _, err := a.Send(t.Context(), "bob", []byte("after expiry")); err != nil {
		t.Fatal(err)
	}
	if m := receiveN(t, b, 1, 20*time.Second)[0]; string(m.Body) != "after expiry" {
		t.Fatalf("got %v", m)
	}
	// Restarting ZooKeeper itself: nodes keep their last view meanwhile
	// and re-register afterwards.
	if err := c.zk.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := n1.members(); len(got) != 3 {
		t.Fatalf("view during the ZooKeeper outage: %v (want the last known 3)", got)
	}
	if err := c.zk.Start(); err != nil {
		t.Fatal(err)
	}
	c.waitMembers(3, n1, n2, n3)
}

// TestRedisRestartAndFlushLoseNothing: Redis holds only routes; restarting
// or flushing it delays pushes but loses no acknowledged message. Routes
// lost with Redis's data come back at each connection's next renewal (a
// third of the session TTL): the nodes run with a 15 s TTL so that live
// delivery resumes within the test's 20 s by design, not by the accident
// of a client reconnecting.
func TestRedisRestartAndFlushLoseNothing(t *testing.T) {
	c := newCluster(t, "direct")
	n1, n2 := c.addNode("n1", "--session-ttl", "15s"), c.addNode("n2", "--session-ttl", "15s")
	c.waitMembers(2, n1, n2)
	l := newLedger()
	a := dialNode(t, "alice", "pc", n1.listen)
	b := dialNode(t, "bob", "pc", n2.listen)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.sendLoop(ctx, t, a, "a", []string{"bob"}, 5*time.Millisecond) })
	wg.Go(func() { l.sendLoop(ctx, t, b, "b", []string{"alice"}, 5*time.Millisecond) })
	time.Sleep(time.Second)
	if err := c.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := c.redis.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := clusterkit.FlushAll(c.redis.Addr); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	for _, u := range []string{"alice", "bob"} {
		l.verifyInbox(t, u, n1.listen, n2.listen)
	}
	// Delivery resumes: once bob's route is back (his node re-creates it at
	// the connection's next renewal, within a third of the TTL), a fresh
	// message is pushed live across nodes. A message sent before that is
	// stored but not pushed (bob would learn of it at his next sync), so
	// the test waits for the route rather than racing the renewal.
	testutil.Until(t, 20*time.Second, "bob's route re-created after the flush", func() bool {
		ps, err := a.Presence(t.Context(), "bob")
		return err == nil && len(ps) == 1 && ps[0].GetOnline()
	})
	if _, err := a.Send(t.Context(), "bob", []byte("live again")); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for {
		select {
		case m := <-b.Messages():
			if string(m.Body) == "live again" {
				return
			}
		case <-deadline:
			t.Fatal("no live delivery after the Redis restart and flush")
		}
	}
}

// TestMongoDownGivesRetryableErrorsAndNoFalseAck: with the message store
// down, sends fail retryably (the client keeps retrying); after it is back,
// the retries succeed, each message stored once.
func TestMongoDownGivesRetryableErrorsAndNoFalseAck(t *testing.T) {
	c := newCluster(t, "direct")
	n1, n2 := c.addNode("n1"), c.addNode("n2")
	c.waitMembers(2, n1, n2)
	l := newLedger()
	a := dialNode(t, "alice", "pc", n1.listen)
	dialNode(t, "bob", "pc", n2.listen)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.sendLoop(ctx, t, a, "a", []string{"bob"}, 5*time.Millisecond) })
	time.Sleep(time.Second)
	if err := c.mongo.Stop(); err != nil {
		t.Fatal(err)
	}
	before := l.ackedCount()
	time.Sleep(2 * time.Second)
	if during := l.ackedCount(); during > before+1 {
		t.Fatalf("%d sends acknowledged while MongoDB was down", during-before)
	}
	if err := c.mongo.Start(); err != nil {
		t.Fatal(err)
	}
	// The client retries with backoff and the nodes' driver finds the
	// server again on its own schedule: wait for the first ack after the
	// restart rather than a fixed 3 s (not always enough on a loaded box).
	testutil.Until(t, 60*time.Second, "a send acknowledged after MongoDB came back", func() bool { return l.ackedCount() > before })
	cancel()
	wg.Wait()
	for _, u := range []string{"alice", "bob"} {
		l.verifyInbox(t, u, n1.listen, n2.listen)
	}
}

// TestMembershipChangeUnderLoad: a node joins and another leaves while
// clients send; no acknowledged message is lost and no inbox has a seq
// duplicated or skipped.
func TestMembershipChangeUnderLoad(t *testing.T) {
	c := newCluster(t, "direct")
	n1, n2, n3 := c.addNode("n1"), c.addNode("n2"), c.addNode("n3")
	c.waitMembers(3, n1, n2, n3)
	us := users("m", 6)
	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	clients := make([]*client.Client, len(us))
	for i, u := range us {
		addrs := []string{n1.listen, n2.listen}
		if i%2 == 1 {
			addrs = []string{n2.listen, n1.listen}
		}
		clients[i] = dialNode(t, u, "pc", addrs...)
	}
	for i, u := range us {
		cl := clients[i]
		wg.Go(func() {
			others := slices.DeleteFunc(slices.Clone(us), func(x string) bool { return x == u })
			l.sendLoop(ctx, t, cl, u, others, 2*time.Millisecond)
		})
	}
	// Registered after the clients' Cleanups, so it runs before them: the
	// senders stop before their clients close, on a failure too.
	t.Cleanup(func() { cancel(); wg.Wait() })
	time.Sleep(time.Second)
	n4 := c.addNode("n4")
	c.waitMembers(4, n1, n2, n4)
	time.Sleep(time.Second)
	n3.signal(syscall.SIGTERM)
	if !n3.wait(20 * time.Second) {
		t.Fatal("n3 did not exit on SIGTERM")
	}
	c.waitMembers(3, n1, n2, n4)
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	for _, u := range us {
		l.verifyInbox(t, u, n1.listen, n2.listen, n4.listen)
	}
	t.Logf("%d messages through a join and a leave", l.ackedCount())
}
