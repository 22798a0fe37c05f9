package mesh_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/meshpb"
	"github.com/imgn/imgn/mesh/transporttest"
	"github.com/imgn/imgn/persist"
)

// testLogger discards logs unless MESH_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("MESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fastLinks are link settings for tests: quick reconnects and pings.
func fastLinks(p transporttest.Params) mesh.LinkConfig {
	return mesh.LinkConfig{
		RequestTimeout: p.RequestTimeout,
		QueueSize:      p.QueueSize,
		MaxInflight:    p.MaxInflight,
		DialTimeout:    500 * time.Millisecond,
		BackoffMin:     10 * time.Millisecond,
		BackoffMax:     100 * time.Millisecond,
		PingInterval:   250 * time.Millisecond,
		Logger:         testLogger(),
	}
}

var linkSuite = transporttest.Suite{
	New: func(t testing.TB, p transporttest.Params) mesh.Transport {
		l, err := mesh.NewLinks(fastLinks(p))
		if err != nil {
			t.Fatal(err)
		}
		return l
	},
}

func TestLinksConformance(t *testing.T) {
	transporttest.Run(t, linkSuite)
}

func TestLinkConfigValidation(t *testing.T) {
	bad := []mesh.LinkConfig{
		{RequestTimeout: -1},
		{BackoffMin: time.Second, BackoffMax: time.Millisecond},
		{QueueSize: -1},
		{MaxBody: -5},
	}
	for _, c := range bad {
		if _, err := mesh.NewLinks(c); err == nil {
			t.Errorf("NewLinks(%+v) accepted", c)
		}
	}
	l, err := mesh.NewLinks(mesh.LinkConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(context.Background(), membership.NodeInfo{ID: "x"}, &transporttest.Handler{}); err == nil {
		t.Error("Start without a MeshAddr succeeded")
	}
	l.Close()
}

// rawConn dials n's mesh port directly, as a misbehaving peer would.
func rawConn(t *testing.T, n *transporttest.Node) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", n.Info.MeshAddr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

// expectClosed reads from c until EOF or an error other than a timeout;
// it returns the frames read on the way.
func expectClosed(t *testing.T, c net.Conn) []codec.Frame {
	t.Helper()
	all, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the node did not close the link")
	}
	var frames []codec.Frame
	var d codec.Decoder
	for len(all) > 0 {
		f, ok, err := d.ParseFrame(all)
		if err != nil || !ok {
			break
		}
		frames = append(frames, f)
		all = all[f.FrameSize():]
	}
	return frames
}

func frame(t *testing.T, cmd codec.Command, seq uint32, m proto.Message) []byte {
	t.Helper()
	b, err := codec.AppendFrame(nil, codec.Protobuf, cmd, 0, seq, m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hello(peer string) *meshpb.Hello {
	return &meshpb.Hello{Version: meshpb.Version, NodeId: "intruder", BootEpoch: 1, PeerId: peer, PingIntervalMs: 1000}
}

// TestLinksBadInput feeds an accepting node garbage and malformed frames:
// each gets the link closed (with an ERROR frame where a reply makes
// sense), and the node keeps serving its real peer.
func TestLinksBadInput(t *testing.T) {
	p := transporttest.DefaultParams
	a := transporttest.StartNode(t, linkSuite, p, "node-a", "", nil)
	b := transporttest.StartNode(t, linkSuite, p, "node-b", "", nil)
	transporttest.Connect(a, b)
	transporttest.WaitLinked(t, a, b)

	oversized := codec.AppendHeader(nil, codec.Header{Version: codec.Version1, Serializer: codec.Protobuf, Command: meshpb.CmdHello, Length: 1 << 30})
	jsonHello := frame(t, meshpb.CmdHello, 1, nil)
	jsonHello[5] = byte(codec.JSON)
	undecodable := codec.AppendRawFrame(nil, codec.Protobuf, meshpb.CmdHello, 0, 1, []byte{0xff, 0xff, 0xff})
	clientCmd := frame(t, codec.CmdLogin, 1, nil)
	helloThen := func(rest []byte) []byte { return append(frame(t, meshpb.CmdHello, 1, hello("node-b")), rest...) }
	truncatedAppend := codec.AppendRawFrame(nil, codec.Protobuf, meshpb.CmdAppend, 0, 2, []byte{0x0a, 0x50, 0x01})

	cases := []struct {
		name      string
		in        []byte
		wantError meshpb.ErrorCode // -1: no ERROR frame expected
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), -1},
		{"oversized header", oversized, -1},
		{"json serializer", jsonHello, -1},
		{"undecodable hello", undecodable, meshpb.ErrorCode_ERROR_CODE_PROTOCOL},
		{"client command", clientCmd, -1},
		{"not hello first", frame(t, meshpb.CmdPing, 1, nil), meshpb.ErrorCode_ERROR_CODE_PROTOCOL},
		{"wrong peer id", frame(t, meshpb.CmdHello, 1, hello("node-z")), meshpb.ErrorCode_ERROR_CODE_WRONG_NODE},
		{"bad version", frame(t, meshpb.CmdHello, 1, &meshpb.Hello{Version: 9, NodeId: "x", PeerId: "node-b"}), meshpb.ErrorCode_ERROR_CODE_PROTOCOL},
		{"bad node id", frame(t, meshpb.CmdHello, 1, &meshpb.Hello{Version: 1, NodeId: "../x", PeerId: "node-b"}), meshpb.ErrorCode_ERROR_CODE_PROTOCOL},
		{"undecodable append", helloThen(truncatedAppend), meshpb.ErrorCode_ERROR_CODE_PROTOCOL},
		{"reply on inbound link", helloThen(frame(t, meshpb.CmdAppendResult, 1, &meshpb.AppendResult{})), meshpb.ErrorCode_ERROR_CODE_PROTOCOL},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawConn(t, b)
			if _, err := c.Write(tc.in); err != nil {
				t.Fatal(err)
			}
			frames := expectClosed(t, c)
			if tc.wantError < 0 {
				return
			}
			last := frames[len(frames)-1]
			var e meshpb.Error
			if last.Command != meshpb.CmdError || proto.Unmarshal(last.Body, &e) != nil || e.Code != tc.wantError {
				t.Fatalf("last frame %v %q, want ERROR %v", last.Command, last.Body, tc.wantError)
			}
		})
	}
	if _, err := a.T.Append(context.Background(), "node-b", persist.Message{ID: 1}, []string{"u"}); err != nil {
		t.Fatalf("node stopped serving its peer after bad input: %v", err)
	}
}

// TestLinksInboundRequests drives an inbound link by hand: a well-formed
// peer gets its append answered with the same seq, and pongs.
func TestLinksInboundRequests(t *testing.T) {
	b := transporttest.StartNode(t, linkSuite, transporttest.DefaultParams, "node-b", "", nil)
	c := rawConn(t, b)
	w := append(frame(t, meshpb.CmdHello, 7, hello("node-b")), frame(t, meshpb.CmdPing, 8, nil)...)
	w = append(w, frame(t, meshpb.CmdAppend, 9, &meshpb.AppendRequest{Msg: &meshpb.Message{Id: 5}, Inboxes: []string{"x", "y"}})...)
	if _, err := c.Write(w); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	read := func() (codec.Header, []byte) {
		hb := make([]byte, codec.HeaderSize)
		if _, err := io.ReadFull(br, hb); err != nil {
			t.Fatal(err)
		}
		h, err := codec.ParseHeader(hb)
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, h.Length)
		if _, err := io.ReadFull(br, body); err != nil {
			t.Fatal(err)
		}
		return h, body
	}
	h, body := read()
	var hl meshpb.Hello
	if h.Command != meshpb.CmdHello || h.Seq != 7 || proto.Unmarshal(body, &hl) != nil || hl.NodeId != "node-b" || hl.BootEpoch != b.Info.BootEpoch {
		t.Fatalf("hello reply %v seq %d %+v", h.Command, h.Seq, &hl)
	}
	got := map[codec.Command]uint32{}
	var res meshpb.AppendResult
	for range 2 {
		h, body := read()
		got[h.Command] = h.Seq
		if h.Command == meshpb.CmdAppendResult {
			if err := proto.Unmarshal(body, &res); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got[meshpb.CmdPong] != 8 || got[meshpb.CmdAppendResult] != 9 {
		t.Fatalf("replies %v", got)
	}
	if r, err := res.Result("node-b"); err != nil || r.Msg.ID != 5 || len(r.Seqs) != 2 {
		t.Fatalf("append result %+v %v", r, err)
	}
}

// fakeAcceptor listens and hands each connection to serve.
func fakeAcceptor(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// TestLinksMisbehavingPeers: a peer that accepts and never answers HELLO,
// one that answers as another node, one that is an older run, and one
// that completes HELLO and then goes silent. Appends fail with ErrForward
// within the deadline; nothing hangs.
func TestLinksMisbehavingPeers(t *testing.T) {
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	keep := func(c net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		conns = append(conns, c)
	}
	answer := func(h *meshpb.Hello) func(net.Conn) {
		return func(c net.Conn) {
			keep(c)
			br := bufio.NewReader(c)
			hb := make([]byte, codec.HeaderSize)
			if _, err := io.ReadFull(br, hb); err != nil {
				return
			}
			if _, err := br.Discard(int(binary.BigEndian.Uint32(hb[12:]))); err != nil {
				return
			}
			b, _ := codec.AppendFrame(nil, codec.Protobuf, meshpb.CmdHello, 0, binary.BigEndian.Uint32(hb[8:]), h)
			c.Write(b)
			// then: silence, reading nothing more
		}
	}
	mute := fakeAcceptor(t, keep)
	impostor := fakeAcceptor(t, answer(&meshpb.Hello{Version: 1, NodeId: "someone-else", BootEpoch: 5}))
	old := fakeAcceptor(t, answer(&meshpb.Hello{Version: 1, NodeId: "old", BootEpoch: 5}))
	silent := fakeAcceptor(t, answer(&meshpb.Hello{Version: 1, NodeId: "silent", BootEpoch: 5}))

	a := transporttest.StartNode(t, linkSuite, transporttest.DefaultParams, "node-a", "", nil)
	a.T.SetPeers([]membership.NodeInfo{
		{ID: "mute", MeshAddr: mute},
		{ID: "impostor", MeshAddr: impostor},
		{ID: "old", MeshAddr: old, BootEpoch: 6},
		{ID: "silent", MeshAddr: silent, BootEpoch: 5},
	})
	for _, id := range []string{"mute", "impostor", "old", "silent"} {
		ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
		start := time.Now()
		_, err := a.T.Append(ctx, id, persist.Message{ID: 1}, []string{"u"})
		cancel()
		if !errors.Is(err, cluster.ErrForward) {
			t.Errorf("%s: %v", id, err)
		}
		if d := time.Since(start); d > 800*time.Millisecond+transporttest.Slack {
			t.Errorf("%s: append took %s", id, d)
		}
	}
	// The silent peer's link is dropped after three ping intervals (0.75 s
	// here): a request waiting on it fails then, long before its own
	// deadline.
	ctx, cancel := context.WithTimeout(context.Background(), transporttest.Patience)
	defer cancel()
	_, err := a.T.Append(ctx, "silent", persist.Message{ID: 1}, []string{"u"})
	if !errors.Is(err, cluster.ErrForward) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent peer: %v (want the link dropped before the deadline)", err)
	}
}

// TestLinksMessageTooLarge: an append beyond MaxBody fails as invalid
// without touching the link.
func TestLinksMessageTooLarge(t *testing.T) {
	mk := func(p transporttest.Params) mesh.Transport {
		cfg := fastLinks(p)
		cfg.MaxBody = 1024
		l, err := mesh.NewLinks(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	s := transporttest.Suite{New: func(_ testing.TB, p transporttest.Params) mesh.Transport { return mk(p) }}
	a := transporttest.StartNode(t, s, transporttest.DefaultParams, "node-a", "", nil)
	b := transporttest.StartNode(t, s, transporttest.DefaultParams, "node-b", "", nil)
	transporttest.Connect(a, b)
	transporttest.WaitLinked(t, a, b)
	_, err := a.T.Append(context.Background(), "node-b", persist.Message{ID: 1, Body: make([]byte, 2000)}, []string{"u"})
	if !errors.Is(err, persist.ErrInvalid) || errors.Is(err, cluster.ErrForward) {
		t.Fatalf("oversized append: %v", err)
	}
	if _, err := a.T.Append(context.Background(), "node-b", persist.Message{ID: 1}, []string{"u"}); err != nil {
		t.Fatal(err)
	}
}

// TestLinksPeerRestartSameAddr: a peer restarted on the same address heals
// the link even before the registry reports the new epoch.
func TestLinksPeerRestartSameAddr(t *testing.T) {
	p := transporttest.DefaultParams
	a := transporttest.StartNode(t, linkSuite, p, "node-a", "", nil)
	b := transporttest.StartNode(t, linkSuite, p, "node-b", "", nil)
	transporttest.Connect(a, b)
	transporttest.WaitLinked(t, a, b)
	b.Close(t)
	var b2 *transporttest.Node
	testutil.Eventually(t, transporttest.Patience, "node-b restarted on its port", func() error {
		var err error
		b2, err = transporttest.TryStartNode(t, linkSuite, p, "node-b", b.Info.MeshAddr, nil)
		return err
	})
	testutil.Eventually(t, transporttest.Patience, "link to the restarted node", func() error {
		_, err := a.T.Append(context.Background(), "node-b", persist.Message{ID: 1}, []string{"u"})
		return err
	})
	if len(b2.H.Appends()) == 0 {
		t.Fatal("new run saw nothing")
	}
}

func BenchmarkLinksAppend(b *testing.B) {
	transporttest.Bench(b, linkSuite)
}
