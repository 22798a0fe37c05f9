package engine

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/auth"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// sendFrame builds a SEND frame whose client_msg_id ends in a fixed-width
// counter, and returns a function that writes the next id into it in place
// (no allocation).
func sendFrame(t testing.TB, ser codec.SerializerID, to string) (frame []byte, next func()) {
	t.Helper()
	const marker = "m0000000000"
	frame = encodeFrame(t, ser, codec.CmdSend, 7, &pb.SendRequest{ClientMsgId: marker, To: to, Body: []byte("hello there")})
	at := bytes.Index(frame, []byte(marker))
	if at < 0 {
		t.Fatal("marker not found")
	}
	digits := frame[at+1 : at+len(marker)]
	return frame, func() {
		for i := len(digits) - 1; i >= 0; i-- {
			if digits[i] < '9' {
				digits[i]++
				return
			}
			digits[i] = '0'
		}
	}
}

// sendWire is how a test connection carries frames: plain TCP, or
// WebSocket (ws_hotpath_test.go).
type sendWire struct {
	open   func(fe *fakeEngine, loop int, user string, ser codec.SerializerID) (*conn, *fakeTransport)
	put    func(in, frame []byte) []byte // appends what the client sends for frame
	feed   func(fe *fakeEngine, c *conn)
	frames func(t testing.TB, ft *fakeTransport) []codec.Frame // decodes and clears the output
}

var tcpWire = sendWire{
	open: func(fe *fakeEngine, loop int, user string, ser codec.SerializerID) (*conn, *fakeTransport) {
		return fe.conn(loop, user, "pc", ser)
	},
	put:    func(in, frame []byte) []byte { return append(in, frame...) },
	feed:   (*fakeEngine).feed,
	frames: func(t testing.TB, ft *fakeTransport) []codec.Frame { return ft.frames(t) },
}

// TestSendPathAllocatesNothing runs the whole 1:1 path of the memory store
// (decode, checks, append, SEND_ACK, PUSH to a connection on the same loop
// and on another loop, the other loop's drain) and asserts it allocates
// nothing in steady state.
func TestSendPathAllocatesNothing(t *testing.T) { testSendPathAllocatesNothing(t, tcpWire) }

func testSendPathAllocatesNothing(t *testing.T, w sendWire) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; the plain run asserts them")
	}
	for _, ser := range serializers {
		for _, where := range []string{"same loop", "other loop"} {
			t.Run(fmt.Sprint(ser, "/", where), func(t *testing.T) {
				fe := newFakeEngine(t, 2, func(c *Config) { c.Store = boundedMemStore(t, 1000) })
				a, at := w.open(fe, 0, "alice", ser)
				bl := 0
				if where == "other loop" {
					bl = 1
				}
				_, bt := w.open(fe, bl, "bob", ser)
				frame, next := sendFrame(t, ser, "bob")
				at.in = make([]byte, 0, len(frame)+16)
				round := func() {
					next()
					at.in = w.put(at.in, frame)
					w.feed(fe, a)
					fe.runLoops()
				}
				// One checked round: the ack and the push arrive.
				round()
				if fs := w.frames(t, at); len(fs) != 1 || fs[0].Command != codec.CmdSendAck {
					t.Fatalf("sender got %v", fs)
				}
				if fs := w.frames(t, bt); len(fs) != 1 || fs[0].Command != codec.CmdPush {
					t.Fatalf("receiver got %v", fs)
				}
				run := func() {
					round()
					at.out, bt.out = at.out[:0], bt.out[:0]
				}
				for range 3000 { // warm up pools, maps and buffers
					run()
				}
				if n := testing.AllocsPerRun(1000, run); n != 0 {
					t.Fatalf("%v allocations per message", n)
				}
			})
		}
	}
}

func BenchmarkSendPath(b *testing.B) { benchmarkSendPath(b, tcpWire) }

func benchmarkSendPath(b *testing.B, w sendWire) {
	for _, ser := range serializers {
		b.Run(ser.String(), func(b *testing.B) {
			fe := newFakeEngine(b, 2, func(c *Config) { c.Store = boundedMemStore(b, 1000) })
			a, at := w.open(fe, 0, "alice", ser)
			_, bt := w.open(fe, 1, "bob", ser)
			frame, next := sendFrame(b, ser, "bob")
			at.in = make([]byte, 0, len(frame)+16)
			b.ReportAllocs()
			for b.Loop() {
				next()
				at.in = w.put(at.in, frame)
				w.feed(fe, a)
				fe.runLoops()
				at.out, bt.out = at.out[:0], bt.out[:0]
			}
		})
	}
}

// storeKinds are the ways a send can reach the store: inline on the loop
// (memory store), handed to a committer (async), and on a worker (sync).
var storeKinds = map[string]func() persist.Store{
	"inline": func() persist.Store { return memstore.New() },
	"async":  func() persist.Store { return newAsyncStore() },
	// batched: an async store that completes in batches and lets the
	// engine write what each batch queued from its goroutine.
	"batched": func() persist.Store { return newBatchedStore() },
	"sync":    func() persist.Store { return &flakyStore{Store: memstore.New()} },
}

// TestPushOrderAndNoLostWakeups: many senders on both event loops pipeline
// sends to one receiver. Every ack and every push must arrive (a lost
// wake-up would strand output in a queue), and the receiver's pushes must
// be in strictly increasing seq order on the wire, with no gap, for the
// stores that complete appends in order (inline and async).
func TestPushOrderAndNoLostWakeups(t *testing.T) {
	for _, kind := range []string{"inline", "async", "batched"} {
		t.Run(kind, func(t *testing.T) {
			s := startServer(t, func(c *Config) { c.Store = storeKinds[kind](); c.SendRate = 1e9; c.SendBurst = 1 << 30 })
			rcv := dial(t, s, codec.Protobuf)
			rcv.login("rcv", "pc")
			const senders, each = 8, 250
			conns := make([]*rawClient, senders)
			for i := range conns {
				conns[i] = dial(t, s, codec.Protobuf)
				conns[i].login(fmt.Sprint("s", i), "pc")
			}
			var wg sync.WaitGroup
			for i, c := range conns {
				wg.Go(func() {
					// Write all the sends in a few big writes, then read
					// every ack: the server sees bursts on both loops.
					var buf []byte
					for j := range each {
						f, err := codec.AppendFrame(nil, codec.Protobuf, codec.CmdSend, 0, uint32(j+1),
							&pb.SendRequest{ClientMsgId: fmt.Sprint(i, "-", j), To: "rcv", Body: []byte(fmt.Sprint(i, "-", j))})
						if err != nil {
							t.Error(err)
							return
						}
						buf = append(buf, f...)
					}
					if _, err := c.nc.Write(buf); err != nil {
						t.Error(err)
						return
					}
					for j := range each {
						f, err := c.readFrame(10 * time.Second)
						if err != nil {
							t.Errorf("sender %d: ack %d: %v", i, j, err)
							return
						}
						if f.Command != codec.CmdSendAck {
							t.Errorf("sender %d got %s", i, f.Command)
							return
						}
					}
				})
			}
			readPushesInOrder(t, rcv, senders*each, nil)
			wg.Wait()
		})
	}
}

// TestStoreThenAck: an append the store fails is answered with a retryable
// STORE_UNAVAILABLE and nothing else (no ack, no push); while the store's
// commit is held (an fsync that does not return), no ack leaves.
func TestStoreThenAck(t *testing.T) {
	for _, kind := range []string{"async", "batched", "sync"} {
		t.Run(kind, func(t *testing.T) {
			st := storeKinds[kind]()
			s := startServer(t, func(c *Config) { c.Store = st })
			a := dial(t, s, codec.Protobuf)
			a.login("alice", "pc")
			b := dial(t, s, codec.Protobuf)
			b.login("bob", "pc")
			failNext(st, 1)
			e := a.wantError(codec.CmdSend, &pb.SendRequest{ClientMsgId: "x1", To: "bob", Body: []byte("lost?")}, codec.CodeStoreUnavailable)
			if !e.Retryable {
				t.Fatalf("store failure not retryable: %v", e)
			}
			if head, _ := st.LastSeq(t.Context(), "bob"); head != 0 {
				t.Fatalf("bob's inbox has %d entries after a failed append", head)
			}
			var ack pb.SendAck
			a.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "x1", To: "bob", Body: []byte("retry")}, &ack)
			if ack.Duplicate || ack.Seq != 1 {
				t.Fatalf("retry after a failure: %+v", &ack)
			}
			if got := b.waitPushes(1); got[0].Seq != 1 || string(got[0].Body) != "retry" {
				t.Fatalf("bob got %v", got)
			}
			var as *asyncStore
			switch st := st.(type) {
			case *asyncStore:
				as = st
			case *batchedStore:
				as = st.asyncStore
			default:
				return
			}
			release := as.holdCommits(t)
			seq := a.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: "x2", To: "bob", Body: []byte("held")})
			if f, err := a.readFrame(300 * time.Millisecond); err == nil {
				t.Fatalf("a %s frame left while the store's commit was held", f.Command)
			}
			release()
			if f := a.reply(seq); f.Command != codec.CmdSendAck {
				t.Fatalf("after the commit: %s", f.Command)
			}
		})
	}
}

func failNext(st persist.Store, n int) {
	switch st := st.(type) {
	case *batchedStore:
		failNext(st.asyncStore, n)
	case *asyncStore:
		st.mu.Lock()
		st.failNext = n
		st.mu.Unlock()
	case *flakyStore:
		st.mu.Lock()
		st.failNext = n
		st.mu.Unlock()
	}
}

// TestLoginRacesCloseAndTimeoutScan: logins completing on workers while
// their connections close and the timeout scan reads them. The identity a
// login writes is read by OnClose and the scan; under -race any unguarded
// access fails the test. No session may outlive its connection.
func TestLoginRacesCloseAndTimeoutScan(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Store = &flakyStore{Store: memstore.New()} })
	stop := make(chan struct{})
	var scans sync.WaitGroup
	scans.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				s.expire(time.Now().UnixNano())
			}
		}
	})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 25 {
				c := dial(t, s, codec.JSON)
				tok, _ := auth.MintToken(testSecret, fmt.Sprint("r", w, "-", i), time.Hour)
				c.send(codec.CmdLogin, &pb.LoginRequest{Token: tok, Device: "pc"})
				if i%2 == 0 {
					time.Sleep(time.Duration(i%3) * 100 * time.Microsecond)
				}
				_ = c.nc.Close()
			}
		})
	}
	wg.Wait()
	close(stop)
	scans.Wait()
	poll(t, "every connection gone", func() bool { return s.conns.len() == 0 })
	poll(t, "no session outlives its connection", func() bool { _, n := s.sessions.count(); return n == 0 })
}

// TestShutdownWhileRequestsArrive: Shutdown waits for the worker pool to go
// idle while connections keep handing it work (the pool's counter once was
// a WaitGroup whose Add raced with Wait).
func TestShutdownWhileRequestsArrive(t *testing.T) {
	st := &flakyStore{Store: memstore.New()}
	s := startServer(t, func(c *Config) { c.Store = st; c.GoAwayWindow = 50 * time.Millisecond })
	var wg sync.WaitGroup
	for i := range 6 {
		c := dial(t, s, codec.Protobuf)
		c.login(fmt.Sprint("u", i), "pc")
		wg.Go(func() {
			// Bursts of sends until the connection is closed: a steady
			// stream of hand-offs to the pool while Shutdown waits on it.
			for j := 0; ; j += 20 {
				var b []byte
				for k := range 20 {
					b, _ = codec.AppendFrame(b, codec.Protobuf, codec.CmdSend, 0, uint32(j+k+1), &pb.SendRequest{ClientMsgId: fmt.Sprint(j + k), To: "u0"})
				}
				if _, err := c.nc.Write(b); err != nil {
					return // closed by the shutdown
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown under load: %v (busy %d, queued bytes %d, inflight %d)", err, s.pool.busy.Load(), s.inBytes.Load(), s.inflightOps.Load())
	}
	wg.Wait()
}

// BenchmarkGroupSendPath: one GROUP_SEND to a group of 100 whose members
// are spread over two loops: decode, checks, append to 100 inboxes, the
// ack and 99 pushes (encoded once per serializer), the other loop's drain.
// ns/op divided by 99 is the cost per delivery, syscalls excluded.
func BenchmarkGroupSendPath(b *testing.B) {
	fe := newFakeEngine(b, 2, func(c *Config) { c.Store = boundedMemStore(b, 100) })
	members := make([]string, 100)
	var outs []*fakeTransport
	var sender *conn
	for i := range members {
		members[i] = fmt.Sprintf("m%03d", i)
		c, ft := fe.conn(i%2, members[i], "pc", codec.Protobuf)
		outs = append(outs, ft)
		if i == 0 {
			sender = c
		}
	}
	g := persist.Group{ID: "g1", Owner: members[0], Members: members}
	if err := fe.s.store.CreateGroup(b.Context(), g); err != nil {
		b.Fatal(err)
	}
	const marker = "m0000000000"
	frame := encodeFrame(b, codec.Protobuf, codec.CmdGroupSend, 7, &pb.GroupSendRequest{ClientMsgId: marker, GroupId: "g1", Body: []byte("hello, group")})
	at := bytes.Index(frame, []byte(marker))
	digits := frame[at+1 : at+len(marker)]
	next := func() {
		for i := len(digits) - 1; i >= 0; i-- {
			if digits[i] < '9' {
				digits[i]++
				return
			}
			digits[i] = '0'
		}
	}
	in := outs[0]
	b.ReportAllocs()
	for b.Loop() {
		next()
		in.in = append(in.in, frame...)
		fe.feed(sender)
		fe.runLoops()
		for _, o := range outs {
			o.out = o.out[:0]
		}
	}
}

// TestOneWritePerConnectionPerRound: within one poll round, a connection
// pushed to by several senders gets one write, and each other loop is
// triggered once however many of its connections got output.
func TestOneWritePerConnectionPerRound(t *testing.T) {
	fe := newFakeEngine(t, 2, nil)
	s1, t1 := fe.conn(0, "s1", "pc", codec.Protobuf)
	s2, t2 := fe.conn(0, "s2", "pc", codec.Protobuf)
	_, same := fe.conn(0, "r0", "pc", codec.Protobuf)  // the senders' loop
	_, other := fe.conn(1, "r1", "pc", codec.Protobuf) // the other loop
	_, other2 := fe.conn(1, "r2", "pc", codec.Protobuf)
	send := func(c *conn, ft *fakeTransport, id, to string) {
		ft.in = append(ft.in, encodeFrame(t, codec.Protobuf, codec.CmdSend, 1, &pb.SendRequest{ClientMsgId: id, To: to})...)
		fe.feed(c)
	}
	// One round: both senders, each to every receiver.
	for _, to := range []string{"r0", "r1", "r2"} {
		send(s1, t1, "a-"+to, to)
		send(s2, t2, "b-"+to, to)
	}
	if same.writes != 0 || other.writes != 0 {
		t.Fatalf("pushes written before the round ended: %d, %d", same.writes, other.writes)
	}
	if t1.writes != 3 || t2.writes != 3 {
		t.Fatalf("sender writes %d, %d: each OnTraffic writes its own acks at once", t1.writes, t2.writes)
	}
	if n := fe.loops[1].execs; n != 1 {
		t.Fatalf("other loop triggered %d times in one round, want 1", n)
	}
	fe.runLoops()
	for name, ft := range map[string]*fakeTransport{"same loop": same, "other loop": other, "other loop 2": other2} {
		if ft.writes != 1 || len(ft.frames(t)) != 2 {
			t.Fatalf("%s receiver: %d writes, want 1 carrying both pushes", name, ft.writes)
		}
	}
}

// boundedMemStore is a memory store keeping inboxMax entries per inbox (and
// trimmed messages only briefly), so long allocation tests and benchmarks
// reach a steady state.
func boundedMemStore(t testing.TB, inboxMax int) *memstore.Store {
	s, err := memstore.NewWith(persist.Retention{InboxMax: inboxMax, DedupWindow: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// retainingStore keeps what every Append was given, as a store with
// caches does (MongoDB's seq cache keys on inbox names; an append given up
// on by its caller completes later).
type retainingStore struct {
	persist.Store
	mu   sync.Mutex
	kept []persist.Message
	ins  [][]string
}

func (r *retainingStore) Append(ctx context.Context, m persist.Message, inboxes []string) (persist.AppendResult, error) {
	r.mu.Lock()
	r.kept = append(r.kept, m)
	r.ins = append(r.ins, slices.Clone(inboxes))
	r.mu.Unlock()
	return r.Store.Append(ctx, m, inboxes)
}

// TestSyncStoreMayKeepWhatItIsGiven: a store on the synchronous path may
// hold on to the message's strings and the inbox names after Append
// returns; the engine must give it memory it never reuses.
func TestSyncStoreMayKeepWhatItIsGiven(t *testing.T) {
	st := &retainingStore{Store: memstore.New()}
	s := startServer(t, func(c *Config) { c.Store = st })
	a := dial(t, s, codec.JSON)
	a.login("alice", "pc")
	const n = 200
	for i := range n {
		to := fmt.Sprintf("user%03d", i)
		dial(t, s, codec.JSON).login(to, "pc")
		a.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint("m", i), To: to, Body: []byte(fmt.Sprint("body", i))}, nil)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.kept) != n {
		t.Fatalf("%d appends", len(st.kept))
	}
	for i, m := range st.kept {
		to := fmt.Sprintf("user%03d", i)
		if m.To != to || m.ClientMsgID != fmt.Sprint("m", i) || string(m.Body) != fmt.Sprint("body", i) || st.ins[i][1] != to {
			t.Fatalf("append %d as the store kept it: to %q cmid %q body %q inboxes %q: memory was reused", i, m.To, m.ClientMsgID, m.Body, st.ins[i])
		}
	}
}

// TestDirectWritesSurviveAFullSocket: senders on the other event loop push
// to a receiver that reads nothing until they are done, so its socket fills
// while another loop is writing it directly (conn.writeFrom). The short
// write's rest and everything after it must go through the receiver's own
// loop, ahead of nothing: every push arrives, whole, in seq order.
func TestDirectWritesSurviveAFullSocket(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.SendRate, c.SendBurst = 1e9, 1<<30
		c.MaxOutbound = 64 << 20
	})
	rcv := dial(t, s, codec.Protobuf)
	if err := rcv.nc.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	rcv.login("rcv", "pc")
	loopOf := func(user string) *loop {
		var l *loop
		s.conns.each(func(c *conn) {
			if u, _ := c.identity(); u == user {
				l = c.loop
			}
		})
		return l
	}
	// Connections are spread over the two loops: keep the senders that
	// landed on the loop the receiver is not on.
	var senders []*rawClient
	for i := 0; len(senders) < 4 && i < 40; i++ {
		c := dial(t, s, codec.Protobuf)
		name := fmt.Sprint("s", i)
		c.login(name, "pc")
		if loopOf(name) != loopOf("rcv") {
			senders = append(senders, c)
		} else {
			_ = c.nc.Close()
		}
	}
	if len(senders) < 4 {
		t.Fatalf("only %d of 40 connections landed on the other loop", len(senders))
	}
	shortBefore := testutil.ToFloat64(s.metrics.directShort)
	const each, size = 400, 8 << 10
	body := func(i, j int) []byte { return bytes.Repeat([]byte{byte('a' + i), byte(j)}, size/2) }
	var wg sync.WaitGroup
	for i, c := range senders {
		wg.Go(func() {
			for j := range each {
				seq := c.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint(i, "-", j), To: "rcv", Body: body(i, j)})
				if f := c.reply(seq); f.Command != codec.CmdSendAck {
					t.Errorf("sender %d got %s", i, f.Command)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("direct writes: %v full, %v short", testutil.ToFloat64(s.metrics.directWrites), testutil.ToFloat64(s.metrics.directShort))
	if testutil.ToFloat64(s.metrics.directShort) == shortBefore {
		t.Fatal("no direct write was short: the socket never filled while another loop wrote it")
	}
	readPushesInOrder(t, rcv, len(senders)*each, func(m *pb.Message) {
		var i, j int
		if _, err := fmt.Sscanf(m.ClientMsgId, "%d-%d", &i, &j); err != nil || !bytes.Equal(m.Body, body(i, j)) {
			t.Fatalf("push %d (%q): body damaged", m.Seq, m.ClientMsgId)
		}
	})
	if testutil.ToFloat64(s.metrics.directWrites) == 0 {
		t.Error("no direct write was full: the senders' loop never wrote the receiver's socket itself")
	}
}

// TestBatchCompletionsWriteIdleSockets: with a store that completes appends
// in batches (persist.BatchCompleting), the SEND_ACK and the PUSH are
// written by the store's completing goroutine at the end of the batch,
// straight to the idle sockets: no event loop is woken for them.
func TestBatchCompletionsWriteIdleSockets(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Store = newBatchedStore() })
	a := dial(t, s, codec.Protobuf)
	a.login("alice", "pc")
	b := dial(t, s, codec.Protobuf)
	b.login("bob", "pc")
	idle := func() bool {
		n := 0
		s.conns.each(func(c *conn) {
			c.mu.Lock()
			if c.direct {
				n++
			}
			c.mu.Unlock()
		})
		return n == 2
	}
	poll(t, "both sockets idle", idle)
	triggers, direct := testutil.ToFloat64(s.metrics.loopTriggers), testutil.ToFloat64(s.metrics.directWrites)
	var ack pb.SendAck
	a.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "d1", To: "bob", Body: []byte("direct")}, &ack)
	if got := b.waitPushes(1); got[0].Seq != ack.Seq || string(got[0].Body) != "direct" {
		t.Fatalf("bob got %v", got)
	}
	if d := testutil.ToFloat64(s.metrics.loopTriggers) - triggers; d != 0 {
		t.Errorf("%v loop triggers for the ack and the push of one message to idle sockets", d)
	}
	if d := testutil.ToFloat64(s.metrics.directWrites) - direct; d != 2 {
		t.Errorf("%v direct writes, want 2 (the ack and the push)", d)
	}
}

// readPushesInOrder reads n pushed messages from rcv, failing unless their
// seqs run 1, 2, 3... on the wire (no reordering, no gap); check, if set,
// sees each message.
func readPushesInOrder(t *testing.T, rcv *rawClient, n int, check func(*pb.Message)) {
	t.Helper()
	var last uint64
	for got := 0; got < n; {
		f, err := rcv.readFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("receiver after %d pushes: %v", got, err)
		}
		if f.Command != codec.CmdPush {
			continue
		}
		var p pb.Push
		if err := codec.Unmarshal(f.Serializer, f.Body, &p); err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			if m.Seq != last+1 {
				t.Fatalf("push seq %d after %d: out of order or a gap on the wire", m.Seq, last)
			}
			last = m.Seq
			if check != nil {
				check(m)
			}
			got++
		}
	}
}
