package engine

// End-to-end tests: the real client library against a real server over
// loopback.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

func dialClient(t *testing.T, s *Server, user, device string, ser codec.SerializerID, mod ...func(*client.Config)) *client.Client {
	t.Helper()
	tok, err := auth.MintToken(testSecret, user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	zero := uint64(0)
	cfg := client.Config{Addr: s.Addr().String(), Token: tok, Device: device, Serializer: ser, AfterSeq: &zero,
		ReconnectBase: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := client.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatalf("dial %s/%s: %v", user, device, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// receive reads n messages from c (failing after 10 s).
func receive(t *testing.T, c *client.Client, n int) []*pb.Message {
	t.Helper()
	var out []*pb.Message
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case m := <-c.Messages():
			out = append(out, m)
		case <-timeout:
			t.Fatalf("%s/%s: received %d of %d messages", c.User(), c.Device(), len(out), n)
		}
	}
	return out
}

// assertStream checks msgs are exactly seqs 1..len(msgs).
func assertStream(t *testing.T, who string, msgs []*pb.Message) {
	t.Helper()
	for i, m := range msgs {
		if m.Seq != uint64(i+1) {
			t.Fatalf("%s: position %d has seq %d (want %d): gap, duplicate or reorder", who, i, m.Seq, i+1)
		}
	}
}

func TestClientEveryFlowEverySerializer(t *testing.T) {
	s := startServer(t, nil)
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			alice, bob := "alice-"+ser.String(), "bob-"+ser.String()
			a := dialClient(t, s, alice, "pc", ser)
			b := dialClient(t, s, bob, "pc", ser)
			ack, err := a.Send(t.Context(), bob, []byte("hello"))
			if err != nil {
				t.Fatal(err)
			}
			if ack.MsgId < 1<<53 {
				t.Fatalf("msg_id %d: expected a full 64-bit id to exercise JSON precision", ack.MsgId)
			}
			got := receive(t, b, 1)[0]
			if got.MsgId != ack.MsgId || string(got.Body) != "hello" || got.From != alice {
				t.Fatalf("bob got %v", got)
			}
			// The sender sees its own message exactly once, at the ack's seq.
			own := receive(t, a, 1)[0]
			if own.Seq != ack.Seq || own.MsgId != ack.MsgId {
				t.Fatalf("own %v ack %v", own, ack)
			}
			select {
			case m := <-a.Messages():
				t.Fatalf("sender got a second copy: %v", m)
			case <-time.After(100 * time.Millisecond):
			}
			g, err := a.CreateGroup(t.Context(), "pair", bob)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.SendGroup(t.Context(), g.GroupId, []byte("group hi")); err != nil {
				t.Fatal(err)
			}
			for _, c := range []*client.Client{a, b} {
				ms := receive(t, c, 2) // the creation's event, then the message
				wantGroupEvent(t, ms[0], g.GroupId, codec.GroupEventAdded, bob, a.User())
				if m := ms[1]; m.GroupId != g.GroupId || string(m.Body) != "group hi" {
					t.Fatalf("%s got %v", c.User(), m)
				}
			}
			pres, err := a.Presence(t.Context(), bob, "nobody")
			if err != nil || !pres[0].Online || pres[1].Online {
				t.Fatalf("presence %v %v", pres, err)
			}
			_, err = a.Send(t.Context(), "nobody", []byte("x"))
			if ce := (*client.Error)(nil); !errors.As(err, &ce) || ce.Code != codec.CodeUnknownRecipient {
				t.Fatalf("send to unknown: %v", err)
			}
		})
	}
}

// TestConcurrentDevicesSeeTheirWholeInboxInOrder has two users with three
// devices each sending 1:1 and group messages concurrently; every device's
// stream must be exactly its user's inbox, 1..head, each seq once.
func TestConcurrentDevicesSeeTheirWholeInboxInOrder(t *testing.T) {
	s := startServer(t, func(c *Config) { c.SendRate = 1e6; c.SendBurst = 1e6 })
	users := []string{"ann", "bo"}
	devices := []string{"d1", "d2", "d3"}
	cl := map[string][]*client.Client{}
	for _, u := range users {
		for i, d := range devices {
			cl[u] = append(cl[u], dialClient(t, s, u, d, serializers[i]))
		}
	}
	g, err := cl["ann"][0].CreateGroup(t.Context(), "both", "bo")
	if err != nil {
		t.Fatal(err)
	}
	const perDevice = 40
	var wg sync.WaitGroup
	for _, u := range users {
		other := "bo"
		if u == "bo" {
			other = "ann"
		}
		for _, c := range cl[u] {
			wg.Go(func() {
				for i := range perDevice {
					var err error
					if i%3 == 0 {
						_, err = c.SendGroup(context.Background(), g.GroupId, []byte(fmt.Sprint(i)))
					} else {
						_, err = c.Send(context.Background(), other, []byte(fmt.Sprint(i)))
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	// Every message lands in both inboxes (1:1 to sender and recipient,
	// group to both members): 2 users x 3 devices x 40, after the event
	// announcing bo in the group.
	total := len(users)*len(devices)*perDevice + 1
	for _, u := range users {
		head, _ := s.store.LastSeq(t.Context(), u)
		if head != uint64(total) {
			t.Fatalf("%s head %d want %d", u, head, total)
		}
		for _, c := range cl[u] {
			assertStream(t, u+"/"+c.Device(), receive(t, c, total))
		}
	}
}

func TestClientResumesFromCursorOnFixedDevice(t *testing.T) {
	s := startServer(t, nil)
	a := dialClient(t, s, "alice", "pc", codec.Protobuf)
	b := dialClient(t, s, "bob", "phone", codec.Protobuf, func(c *client.Config) { c.AckInterval = 10 * time.Millisecond })
	for i := range 5 {
		if _, err := a.Send(t.Context(), "bob", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	receive(t, b, 5)
	poll(t, "cursor at 5", func() bool { c, _ := s.store.Cursor(t.Context(), "bob", "phone"); return c == 5 })
	_ = b.Close()
	for i := 5; i < 8; i++ {
		if _, err := a.Send(t.Context(), "bob", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	// No AfterSeq: the client resumes from the server's cursor for the device.
	b2 := dialClient(t, s, "bob", "phone", codec.JSON, func(c *client.Config) { c.AfterSeq = nil })
	msgs := receive(t, b2, 3)
	for i, m := range msgs {
		if m.Seq != uint64(6+i) {
			t.Fatalf("resumed stream %d has seq %d", i, m.Seq)
		}
	}
}

// flakyStore fails or delays Append on demand, to exercise client retries.
type flakyStore struct {
	persist.Store
	mu        sync.Mutex
	failNext  int           // fail this many Appends with ErrUnavailable
	slowNext  int           // delay this many Appends (the store still commits)
	slowDelay time.Duration // delay of a slow Append
	hold      chan struct{} // if set, every Append waits until it is closed
	held      atomic.Int32  // Appends waiting for hold to close
}

// holdAppends makes every Append wait until release is called (holdStore).
func (f *flakyStore) holdAppends(t testing.TB) (release func()) { return holdStore(t, &f.mu, &f.hold) }

func (f *flakyStore) Append(ctx context.Context, m persist.Message, inboxes []string) (persist.AppendResult, error) {
	f.mu.Lock()
	fail, slow := f.failNext > 0, f.slowNext > 0
	if fail {
		f.failNext--
	} else if slow {
		f.slowNext--
	}
	hold := f.hold
	f.mu.Unlock()
	if hold != nil {
		f.held.Add(1)
		<-hold
		f.held.Add(-1)
	}
	if fail {
		return persist.AppendResult{}, fmt.Errorf("flaky: %w", persist.ErrUnavailable)
	}
	res, err := f.Store.Append(ctx, m, inboxes)
	if slow {
		time.Sleep(f.slowDelay)
	}
	return res, err
}

func TestClientRetriesStoreOnceWhateverFails(t *testing.T) {
	fs := &flakyStore{Store: memstore.New(), slowDelay: 700 * time.Millisecond}
	s := startServer(t, func(c *Config) { c.Store = fs })
	// The short request timeout is only for the slow ack below: on the
	// first send it made a loaded -race run's slow round trip a retry of a
	// send that was stored, acked as a duplicate.
	a := dialClient(t, s, "alice", "pc", codec.MsgPack)
	aShort := dialClient(t, s, "alice", "phone", codec.MsgPack, func(c *client.Config) { c.RequestTimeout = 300 * time.Millisecond })
	b := dialClient(t, s, "bob", "pc", codec.Protobuf)

	fs.mu.Lock()
	fs.failNext = 2
	fs.mu.Unlock()
	ack, err := a.Send(t.Context(), "bob", []byte("after two failures"))
	if err != nil || ack.Duplicate {
		t.Fatalf("send through STORE_UNAVAILABLE: %v %v", ack, err)
	}
	// The store commits but the ack comes too late: the client times out
	// and retries with the same id; the retry is answered as a duplicate.
	fs.mu.Lock()
	fs.slowNext = 1
	fs.mu.Unlock()
	ack2, err := aShort.Send(t.Context(), "bob", []byte("slow ack"))
	if err != nil {
		t.Fatal(err)
	}
	msgs := receive(t, b, 2)
	assertStream(t, "bob", msgs)
	if string(msgs[1].Body) != "slow ack" || msgs[1].MsgId != ack2.MsgId {
		t.Fatalf("second message %v ack %v", msgs[1], ack2)
	}
	select {
	case m := <-b.Messages():
		t.Fatalf("bob got an extra message %v", m)
	case <-time.After(1200 * time.Millisecond):
	}
	if head, _ := s.store.LastSeq(t.Context(), "bob"); head != 2 {
		t.Fatalf("bob's inbox head %d, want 2: a retry stored twice", head)
	}
}

func TestClientRidesOutRateLimitAndBusy(t *testing.T) {
	// A store that is not in memory runs sends on workers, where the
	// connection's inbound bound (about four queued sends) applies.
	s := startServer(t, func(c *Config) {
		c.SendRate = 200
		c.SendBurst = 20
		c.MaxConnInbound = 4 * 100
		c.Store = &flakyStore{Store: memstore.New()}
	})
	a := dialClient(t, s, "alice", "pc", codec.Protobuf)
	b := dialClient(t, s, "bob", "pc", codec.Protobuf)
	var wg sync.WaitGroup
	for w := range 10 {
		wg.Go(func() {
			for i := range 10 {
				if _, err := a.Send(context.Background(), "bob", []byte(fmt.Sprint(w, "-", i))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	assertStream(t, "bob", receive(t, b, 100))
	if testingErrors := errorsCounted(t, s, codec.CodeRateLimited) + errorsCounted(t, s, codec.CodeBusy); testingErrors == 0 {
		t.Fatal("the test never hit the rate limit or the queue bound")
	}
}

func TestClientHeartbeatsKeepItAliveAndKickStopsIt(t *testing.T) {
	s := startServer(t, func(c *Config) { c.HeartbeatInterval = 100 * time.Millisecond; c.IdleTimeout = 400 * time.Millisecond })
	a := dialClient(t, s, "alice", "pc", codec.JSON)
	time.Sleep(time.Second)
	if len(s.Online("alice")) != 1 {
		t.Fatal("heartbeating client was closed")
	}
	if _, err := a.Send(t.Context(), "alice", []byte("still here")); err != nil {
		t.Fatal(err)
	}
	a2 := dialClient(t, s, "alice", "pc", codec.JSON)
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("kicked client did not stop")
	}
	if !errors.Is(a.Err(), client.ErrKicked) {
		t.Fatalf("err %v", a.Err())
	}
	time.Sleep(300 * time.Millisecond)
	if devs := s.Online("alice"); len(devs) != 1 {
		t.Fatalf("online %v: the kicked client came back", devs)
	}
	_ = a2
}

// TestClientSurvivesNodeRestart shuts a node down (GO_AWAY) while a client
// sends, starts a new node on the same address and store, and checks the
// client carries on with no loss and no duplicate.
func TestClientSurvivesNodeRestart(t *testing.T) { clientSurvivesNodeRestart(t, false) }

// clientSurvivesNodeRestart is TestClientSurvivesNodeRestart, with both
// clients on WebSocket when overWS is set.
func clientSurvivesNodeRestart(t *testing.T, overWS bool) {
	store := memstore.New()
	s1 := startServer(t, func(c *Config) {
		c.Store = store
		c.GoAwayWindow = 100 * time.Millisecond
		if overWS {
			c.Edge.WSAddr = "127.0.0.1:0"
		}
	})
	addr := s1.Addr().String()
	var edge EdgeConfig
	var mod []func(*client.Config)
	if overWS {
		edge.WSAddr = s1.WSAddr().String()
		mod = append(mod, func(c *client.Config) { c.Addr, c.DialContext = edge.WSAddr, dialWSContext })
	}
	a := dialClient(t, s1, "alice", "pc", codec.Protobuf, mod...)
	b := dialClient(t, s1, "bob", "pc", codec.Protobuf, mod...)
	done := make(chan error, 1)
	go func() {
		for i := range 60 {
			if _, err := a.Send(context.Background(), "bob", []byte(fmt.Sprint(i))); err != nil {
				done <- err
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		done <- nil
	}()
	time.Sleep(100 * time.Millisecond)
	if err := s1.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	s2, err := New(Config{Addr: addr, Store: store, JWTSecret: testSecret, Logger: s1.log, EventLoops: 2, Workers: 8, Edge: edge})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s2.Shutdown(context.Background()) }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	msgs := receive(t, b, 60)
	assertStream(t, "bob", msgs)
	bodies := make([]string, len(msgs))
	for i, m := range msgs {
		bodies[i] = string(m.Body)
	}
	want := make([]string, 60)
	for i := range want {
		want[i] = fmt.Sprint(i)
	}
	if !slices.Equal(bodies, want) {
		t.Fatalf("bodies %v", bodies)
	}
}
