package engine

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// TestPipelinedSendsReachTheCommitterTogether: with a store that commits
// asynchronously, sends pipelined on one connection are handed to the
// committer without waiting for the earlier ones to complete (so one commit
// can take them all), at most maxPipelinedSends at a time; the rest wait,
// bounded, and every send is still acknowledged and pushed in the client's
// order once the commit is released. A request other than a send still
// waits for every append before it.
func TestPipelinedSendsReachTheCommitterTogether(t *testing.T) {
	st := newAsyncStore()
	s := startServer(t, func(c *Config) { c.Store = st; c.SendRate = 1e9; c.SendBurst = 1 << 30 })
	a := dial(t, s, codec.Protobuf)
	a.login("alice", "pc")
	b := dial(t, s, codec.Protobuf)
	b.login("bob", "pc")
	base := st.handed.Load()

	hold := make(chan struct{})
	st.mu.Lock()
	st.hold = hold
	st.mu.Unlock()
	release := sync.OnceFunc(func() {
		st.mu.Lock()
		st.hold = nil
		st.mu.Unlock()
		close(hold)
	})
	t.Cleanup(release) // before the server's shutdown, which waits for every append
	const n = maxPipelinedSends + 36
	var buf []byte
	for i := range n {
		f, err := codec.AppendFrame(nil, codec.Protobuf, codec.CmdSend, 0, uint32(i+1),
			&pb.SendRequest{ClientMsgId: fmt.Sprint("m", i), To: "bob", Body: []byte(fmt.Sprint(i))})
		if err != nil {
			t.Fatal(err)
		}
		buf = append(buf, f...)
	}
	syncReq, err := codec.AppendFrame(nil, codec.Protobuf, codec.CmdSync, 0, n+1, &pb.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a.writeRaw(append(buf, syncReq...))
	a.seq.Store(n + 1)
	poll(t, "a full window of sends handed to the held committer", func() bool {
		return st.handed.Load()-base == maxPipelinedSends
	})
	// Nothing more while the committer is held: the window is full.
	time.Sleep(100 * time.Millisecond)
	if got := st.handed.Load() - base; got != maxPipelinedSends {
		t.Fatalf("%d sends handed to the store while %d were in flight, want %d", got, maxPipelinedSends, maxPipelinedSends)
	}
	if f, err := a.readFrame(100 * time.Millisecond); err == nil {
		t.Fatalf("a %s frame left while the commit was held", f.Command)
	}
	release()

	for i := range n {
		f := a.reply(uint32(i + 1))
		if f.Command != codec.CmdSendAck {
			t.Fatalf("send %d: %s", i+1, f.Command)
		}
		var ack pb.SendAck
		if err := codec.Unmarshal(f.Serializer, f.Body, &ack); err != nil {
			t.Fatal(err)
		}
		if ack.Seq != uint64(i+1) {
			t.Fatalf("send %d stored at seq %d: out of the client's order", i+1, ack.Seq)
		}
	}
	// The SYNC after the sends sees all of them.
	f := a.reply(n + 1)
	var sr pb.SyncOK
	if f.Command != codec.CmdSyncOK {
		t.Fatalf("sync: %s", f.Command)
	}
	if err := codec.Unmarshal(f.Serializer, f.Body, &sr); err != nil {
		t.Fatal(err)
	}
	if sr.HeadSeq != n {
		t.Fatalf("a SYNC queued behind %d sends sees inbox head %d", n, sr.HeadSeq)
	}
	for i, m := range b.waitPushes(n) {
		if m.Seq != uint64(i+1) || string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("push %d: seq %d body %q", i, m.Seq, m.Body)
		}
	}
}
