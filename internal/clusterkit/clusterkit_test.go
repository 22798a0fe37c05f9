package clusterkit

import (
	"context"
	"testing"
	"time"

	"github.com/imgn/imgn/client"
)

// TestSingleNodeLifecycle starts one real imd, logs in through the client
// library, reads /metrics and /admin/stats, and drives the process through
// SIGSTOP/SIGCONT, SIGKILL and a restart on the same ports.
func TestSingleNodeLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bin, err := Binaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Single(ctx, bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	cl, err := client.Dial(ctx, ClientConfig("", n.Listen, "alice", "d"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Send(ctx, "alice", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	m, err := n.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.Get("imgn_messages_stored_total") < 1 || m.Get("imgn_logins_total", `result="OK"`) < 1 {
		t.Fatalf("metrics: stored %v logins %v", m.Get("imgn_messages_stored_total"), m.Get("imgn_logins_total", `result="OK"`))
	}
	if s, err := n.Stats(ctx); err != nil || s.Goroutines == 0 {
		t.Fatalf("stats %+v %v", s, err)
	}
	if err := n.Pause(); err != nil || !n.Paused() {
		t.Fatal("pause", err)
	}
	short, c2 := context.WithTimeout(ctx, 500*time.Millisecond)
	if n.Ready(short) {
		t.Fatal("a stopped node answered /readyz")
	}
	c2()
	if err := n.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := n.Kill(); err != nil || n.Running() {
		t.Fatal("kill", err)
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !n.Term(10*time.Second) || n.Running() {
		t.Fatal("SIGTERM did not stop the node")
	}
}

// TestNodeWebSocket: a node made with NodeSpec.WS serves the protocol on
// its WebSocket listener, through the WebSocket proxy; resetting that
// proxy's connections sends the client to reconnect, and it carries on.
func TestNodeWebSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bin, err := Binaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(NodeSpec{Bin: bin, Dir: t.TempDir(), ID: "ws", ClientProxy: true, WS: true,
		Args: []string{"--store", "memory", "--jwt-secret", Secret, "--log-level", "warn"}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if n.WSProxy == nil || n.WSURL() != "ws://"+n.WSProxy.Addr+"/" {
		t.Fatalf("WSURL %q, proxy %v", n.WSURL(), n.WSProxy)
	}
	cl, err := client.Dial(ctx, ClientConfig("", n.WSURL(), "alice", "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Send(ctx, "alice", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if n.WSProxy.Conns() != 2 || n.ClientProxy.Conns() != 0 { // a proxied connection counts twice
		t.Fatalf("sockets: WebSocket proxy %d, TCP proxy %d; want 2, 0", n.WSProxy.Conns(), n.ClientProxy.Conns())
	}
	n.WSProxy.Reset()
	if _, err := cl.Send(ctx, "alice", []byte("two")); err != nil {
		t.Fatalf("send after the reset: %v", err)
	}
	for i, want := range []string{"one", "two"} {
		select {
		case m := <-cl.Messages():
			if m.Seq != uint64(i+1) || string(m.Body) != want {
				t.Fatalf("message %d: seq %d %q", i, m.Seq, m.Body)
			}
		case <-ctx.Done():
			t.Fatal("no message")
		}
	}
	if err := Poll(ctx, 10*time.Second, "reconnect", func() bool { return n.WSProxy.Conns() == 2 }); err != nil {
		t.Fatal(err)
	}
}
