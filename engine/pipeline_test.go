package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// TestPipelinedSendsReachTheCommitterTogether: with a store that commits
// asynchronously, sends pipelined on one connection are handed to the
// committer without waiting for the earlier ones to complete (so one commit
// can take them all), at most maxPipelinedSends at a time and, with larger
// bodies, at most Config.MaxConnInbound bytes; the rest wait, bounded, and
// every send is still acknowledged and pushed in the client's order once the
// commit is released. A request other than a send still waits for every
// append before it.
func TestPipelinedSendsReachTheCommitterTogether(t *testing.T) {
	t.Run("count", func(t *testing.T) {
		handed := pipelineHeld(t, 0, maxPipelinedSends+36, 1)
		if handed != maxPipelinedSends {
			t.Fatalf("%d sends handed to the held committer, want %d", handed, maxPipelinedSends)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		// About seven 1000-byte sends fit in 8000 bytes in flight.
		handed := pipelineHeld(t, 8000, 10, 1000)
		if handed < 2 || handed*1000 > 8000 {
			t.Fatalf("%d sends of 1000 bytes handed to the held committer under an 8000-byte bound", handed)
		}
	})
}

// pipelineHeld holds the committer, pipelines n sends with bodies of body
// bytes and a SYNC on one connection (MaxConnInbound maxIn, 0: default),
// and returns how many sends reached the store while it was held; after
// the release it checks the acks, the SYNC and the pushes.
func pipelineHeld(t *testing.T, maxIn, n, body int) int64 {
	st := newAsyncStore()
	s := startServer(t, func(c *Config) {
		c.Store = st
		c.SendRate, c.SendBurst = 1e9, 1<<30
		if maxIn > 0 {
			c.MaxConnInbound = maxIn
		}
	})
	a := dial(t, s, codec.Protobuf)
	a.login("alice", "pc")
	b := dial(t, s, codec.Protobuf)
	b.login("bob", "pc")
	// LOGIN_OK leaves before the worker that wrote it lets go of alice's
	// connection. A burst arriving while the worker still owns it queues
	// whole instead of going to the committer, and beyond the 8000-byte
	// inbound bound is answered BUSY: wait until the connection is idle.
	var ac *conn
	s.sessions.each(func(x *conn) {
		if x.user == "alice" {
			ac = x
		}
	})
	poll(t, "alice's connection idle after the login", func() bool {
		ac.mu.Lock()
		defer ac.mu.Unlock()
		return !ac.running && ac.head == nil
	})
	base := st.handed.Load()

	release := st.holdCommits(t)

	bodyOf := func(i int) []byte {
		p := fmt.Appendf(nil, "%d:", i)
		for len(p) < body {
			p = append(p, 'x')
		}
		return p
	}
	var buf []byte
	for i := range n {
		f, err := codec.AppendFrame(nil, codec.Protobuf, codec.CmdSend, 0, uint32(i+1),
			&pb.SendRequest{ClientMsgId: fmt.Sprint("m", i), To: "bob", Body: bodyOf(i)})
		if err != nil {
			t.Fatal(err)
		}
		buf = append(buf, f...)
	}
	syncReq, err := codec.AppendFrame(nil, codec.Protobuf, codec.CmdSync, 0, uint32(n+1), &pb.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a.writeRaw(append(buf, syncReq...))
	a.seq.Store(uint32(n + 1))
	poll(t, "more than one send handed to the held committer", func() bool { return st.handed.Load()-base > 1 })
	// Wait until nothing more arrives while the committer is held.
	handed := st.handed.Load() - base
	for {
		time.Sleep(100 * time.Millisecond)
		now := st.handed.Load() - base
		if now == handed {
			break
		}
		handed = now
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
	f := a.reply(uint32(n + 1))
	var sr pb.SyncOK
	if f.Command != codec.CmdSyncOK {
		t.Fatalf("sync: %s", f.Command)
	}
	if err := codec.Unmarshal(f.Serializer, f.Body, &sr); err != nil {
		t.Fatal(err)
	}
	if sr.HeadSeq != uint64(n) {
		t.Fatalf("a SYNC queued behind %d sends sees inbox head %d", n, sr.HeadSeq)
	}
	for i, m := range b.waitPushes(n) {
		if m.Seq != uint64(i+1) || string(m.Body) != string(bodyOf(i)) {
			t.Fatalf("push %d: seq %d body %.20q", i, m.Seq, m.Body)
		}
	}
	return handed
}
