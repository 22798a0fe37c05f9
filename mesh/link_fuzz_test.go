package mesh

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/meshpb"
	"github.com/imgn/imgn/persist"
)

type nopHandler struct{}

func (nopHandler) HandleAppend(_ context.Context, msg persist.Message, in []string) (persist.AppendResult, error) {
	return persist.AppendResult{Msg: msg, Seqs: make([]uint64, len(in))}, nil
}
func (nopHandler) HandleAppendEntries(_ context.Context, msg persist.Message, in []string) (persist.AppendResult, error) {
	return persist.AppendResult{Msg: msg, Seqs: make([]uint64, len(in))}, nil
}
func (nopHandler) HandleAdmin(cluster.AdminRequest) int             { return 0 }
func (nopHandler) HandlePush(persist.Message, []cluster.PushTarget) {}
func (nopHandler) HandleKick(string, string, uint64)                {}
func (nopHandler) HandleSignal(cluster.Signal)                      {}

func fuzzFrame(cmd codec.Command, seq uint32, m proto.Message) []byte {
	b, err := codec.AppendFrame(nil, codec.Protobuf, cmd, 0, seq, m)
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzInboundLink feeds arbitrary bytes to an accepted link, whole and in
// two pieces: the node must neither panic nor hang, and must close the link.
func FuzzInboundLink(f *testing.F) {
	hello := fuzzFrame(meshpb.CmdHello, 1, &meshpb.Hello{Version: 1, NodeId: "peer", BootEpoch: 1, PeerId: "self", PingIntervalMs: 1000})
	var valid []byte
	valid = append(valid, hello...)
	valid = append(valid, fuzzFrame(meshpb.CmdPing, 2, nil)...)
	valid = append(valid, fuzzFrame(meshpb.CmdAppend, 3, &meshpb.AppendRequest{Msg: &meshpb.Message{Id: 1, Body: []byte("x")}, Inboxes: []string{"a", "b"}})...)
	valid = append(valid, fuzzFrame(meshpb.CmdPush, 0, &meshpb.PushRequest{Msg: &meshpb.Message{Id: 1}, Targets: []*meshpb.PushTarget{{User: "a", Seq: 1}, nil}})...)
	valid = append(valid, fuzzFrame(meshpb.CmdKick, 0, &meshpb.KickRequest{User: "a", Device: "d", ConnId: 1})...)
	f.Add(valid, 10)
	f.Add(hello, 3)
	f.Add(append(hello, fuzzFrame(meshpb.CmdAppendResult, 1, &meshpb.AppendResult{})...), 20)
	f.Add([]byte("IMGN\x01\x02\xc0\x00\x00\x00\x00\x01\xff\xff\xff\xff"), 5)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		l, err := NewLinks(LinkConfig{MaxInflight: 2, MaxBody: 1 << 16, WriteTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		l.self = membership.NodeInfo{ID: "self", BootEpoch: 7}
		l.h = nopHandler{}
		l.state = stateStarted
		server, client := net.Pipe()
		l.mu.Lock()
		l.inbound[server] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.serveInbound(server)
		drained := make(chan struct{})
		go func() { defer close(drained); io.Copy(io.Discard, client) }()
		split = min(max(split, 0), len(in))
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write(in[:split])
		client.Write(in[split:])
		client.Close()
		done := make(chan struct{})
		go func() { l.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("inbound link did not shut down")
		}
		<-drained
	})
}

func TestBackoff(t *testing.T) {
	lo, hi := 10*time.Millisecond, 80*time.Millisecond
	for n := 1; n < 100; n++ {
		limit := min(hi, lo<<min(n-1, 20))
		for range 50 {
			if d := backoff(lo, hi, n); d < 0 || d >= limit {
				t.Fatalf("backoff(%d) = %s, want [0, %s)", n, d, limit)
			}
		}
	}
	if d := backoff(0, 0, 3); d != 0 {
		t.Fatalf("zero backoff = %s", d)
	}
}
