package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/imgn/imgn/internal/clusterkit"
)

// TestShortCheck runs the short checker (3 nodes, router, the short fault
// set for 25s) on real processes and asserts the must-be-zero counts,
// read cursors and recalls included.
func TestShortCheck(t *testing.T) {
	dur := 25 * time.Second
	if testing.Short() {
		dur = 12 * time.Second
	}
	shortCheck(t, CheckConfig{Nodes: 3, Clients: 8, Rate: 40, Duration: dur, Quiet: 3 * time.Second,
		Faults: ShortFaults, Seed: 1})
}

// TestShortCheckWebSocket is TestShortCheck with every client on the
// nodes' WebSocket listeners, under the faults that end or stall those
// connections, kept shorter (it runs in make test as well).
func TestShortCheckWebSocket(t *testing.T) {
	shortCheck(t, CheckConfig{Nodes: 3, Clients: 8, Rate: 40, Duration: 12 * time.Second, Quiet: 2 * time.Second,
		Faults: WSShortFaults, Seed: 2, WS: true})
}

// shortCheck runs Check with cfg on freshly built binaries and fails the
// test on any must-be-zero count or fault error.
func shortCheck(t *testing.T, cfg CheckConfig) {
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	bin, err := clusterkit.Binaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Bin, cfg.Logf = bin, t.Logf
	rep, err := Check(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	rep.Print(&buf)
	t.Log(buf.String())
	if rep.Acked == 0 {
		t.Fatal("nothing acked")
	}
	asked, other := rep.TCPConns, rep.WSConns
	if cfg.WS {
		asked, other = other, asked
	}
	if asked != cfg.Clients || other != 0 { // each client has one connection, on the transport asked for
		t.Fatalf("client connections: %d TCP, %d WebSocket; want all %d on %s", rep.TCPConns, rep.WSConns, cfg.Clients, transport(cfg.WS))
	}
	c := rep.Counts
	if c.Lost != 0 || c.Unexpected != 0 || c.Twice != 0 || c.Order != 0 || c.Gaps != 0 {
		t.Fatalf("lost=%d unexpected=%d twice=%d order=%d gaps=%d", c.Lost, c.Unexpected, c.Twice, c.Order, c.Gaps)
	}
	if ch := c.Chat; ch.Reads == 0 || ch.Recalls == 0 || ch.CursorBack != 0 || ch.CursorDiverged != 0 || ch.RecallLost != 0 {
		t.Fatalf("chat: %+v, want reads and recalls, no cursor moved back, devices agreeing, every recall applied", ch)
	}
	for _, e := range rep.Events {
		if e.Err != nil {
			t.Errorf("fault %s on %s: %v", e.Name, e.Target, e.Err)
		}
	}
}

// TestLongestWait: a fault's unavailability window is the longest answer
// time of the sends invoked during it, failed ones included; sends invoked
// outside it or never answered do not count.
func TestLongestWait(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	l := &ledger{sends: map[string]*sendRec{
		"before":     {invoke: at(-time.Second), done: at(9 * time.Second), acked: true},
		"quick":      {invoke: at(time.Second), done: at(1100 * time.Millisecond), acked: true},
		"rode":       {invoke: at(2 * time.Second), done: at(6 * time.Second), acked: true},
		"failed":     {invoke: at(3 * time.Second), done: at(7500 * time.Millisecond)},
		"unanswered": {invoke: at(3 * time.Second)},
		"after":      {invoke: at(5 * time.Second), done: at(15 * time.Second), acked: true},
	}}
	if got := l.longestWait(at(0), at(5*time.Second)); got != 4500*time.Millisecond {
		t.Fatalf("longestWait = %v, want 4.5s (the failed send)", got)
	}
	if got := l.longestWait(at(20*time.Second), at(30*time.Second)); got != 0 {
		t.Fatalf("longestWait of an empty window = %v", got)
	}
}
