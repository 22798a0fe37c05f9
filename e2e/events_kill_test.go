package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/imgn/imgn/internal/testutil"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/imgn/imgn/events"
	"github.com/imgn/imgn/internal/testsvc"
)

// TestEventsSurviveNodeKill: a cluster on MongoDB (FerretDB) publishing to
// an event stream on a Redis of its own. The stream's Redis is paused
// (SIGSTOP), so the events of acknowledged messages pile up in the nodes'
// queues; node n1 is killed with SIGKILL, Redis resumes, and n1 restarts
// with the same node id ("restart"), or never comes back and a new node
// n3 starts with --events-recover-nodes n1 ("takeover"). Every inbox entry
// of every acknowledged message then has its event: those n1 lost were
// published again from the store, as n1's (marked replayed), none came
// from the wrong node.
func TestEventsSurviveNodeKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster")
	}
	t.Run("restart", func(t *testing.T) { testEventsSurviveNodeKill(t, false) })
	t.Run("takeover", func(t *testing.T) { testEventsSurviveNodeKill(t, true) })
}

func testEventsSurviveNodeKill(t *testing.T, takeover bool) {
	evRedis := testsvc.StartRedis(t)
	c := newCluster(t, "direct")
	apis := map[string]string{"n1": freeAddr(t), "n2": freeAddr(t), "n3": freeAddr(t)}
	args := func(id string) []string {
		return []string{"--api-key", apiKey, "--api-listen", apis[id], "--events", "redis", "--events-redis", evRedis.Addr,
			"--events-replay-margin", "2s"}
	}
	n1, n2 := c.addNode("n1", args("n1")...), c.addNode("n2", args("n2")...)
	c.waitMembers(2, n1, n2)
	owned := map[string][]string{}
	for i := 0; len(owned["n1"]) < 2 || len(owned["n2"]) < 1; i++ {
		u := fmt.Sprint("k", i)
		if o := n1.owner(u); len(owned[o]) < 2 {
			owned[o] = append(owned[o], u)
			if status, out := apiCall(t, apis["n2"], "POST", "/v1/users", map[string]string{"user": u}); status != 201 {
				t.Fatalf("create %s: %d %v", u, status, out)
			}
		}
	}
	a1, a2, b := owned["n1"][0], owned["n1"][1], owned["n2"][0] // a1, a2 on n1; b on n2

	type ref struct {
		user string
		seq  uint64
	}
	acked := map[ref]string{} // inbox entry -> message id, of acknowledged sends
	send := func(i int) {
		t.Helper()
		from, to := b, a1
		if i%2 == 1 {
			from, to = a1, a2
		}
		status, out := apiCall(t, apis["n2"], "POST", "/v1/messages", map[string]any{"from": from, "to": to, "client_msg_id": fmt.Sprint("k", i), "text": fmt.Sprint(i)})
		if status != 200 {
			t.Fatalf("send %d: %d %v", i, status, out)
		}
		for _, in := range out["inboxes"].([]any) {
			m := in.(map[string]any)
			acked[ref{m["user"].(string), uint64(m["seq"].(float64))}] = out["msg_id"].(string)
		}
	}
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{evRedis.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	type seen struct {
		msgID, node string
		replayed    bool
	}
	stream := func() map[ref][]seen {
		entries, err := rc.Do(context.Background(), rc.B().Xrange().Key(events.DefaultStream).Start("-").End("+").Build()).AsXRange()
		if err != nil {
			t.Fatalf("read the stream: %v", err)
		}
		out := map[ref][]seen{}
		for _, en := range entries {
			var e events.Event
			if err := json.Unmarshal([]byte(en.FieldValues["data"]), &e); err != nil || e.Type != events.TypeMessage {
				continue
			}
			for _, in := range e.Inboxes {
				r := ref{in.User, in.Seq}
				out[r] = append(out[r], seen{e.MsgID, e.Node, e.Replayed})
			}
		}
		return out
	}
	missing := func(s map[ref][]seen) []ref {
		var out []ref
		for r := range acked {
			if len(s[r]) == 0 {
				out = append(out, r)
			}
		}
		return out
	}

	// Live: every event reaches the stream (and the checkpoints move).
	const live, paused = 10, 20
	for i := range live {
		send(i)
	}
	testutil.Until(t, 20*time.Second, "the live events", func() bool { return len(missing(stream())) == 0 })

	if err := evRedis.Pause(); err != nil {
		t.Fatal(err)
	}
	for i := live; i < live+paused; i++ {
		send(i) // acknowledged; their events wait in the queues
	}
	n1.kill()
	if err := evRedis.Resume(); err != nil {
		t.Fatal(err)
	}
	// n2 publishes its queue; the events of n1's inboxes are gone with n1.
	testutil.Until(t, 20*time.Second, "n2's queued events", func() bool {
		s := stream()
		for r := range acked {
			if r.user == b && len(s[r]) == 0 {
				return false
			}
		}
		return true
	})
	lost := missing(stream())
	if len(lost) == 0 {
		t.Fatal("no event was lost with n1: the test did not exercise the recovery")
	}
	t.Logf("%d acknowledged inbox entries, %d without an event after the kill", len(acked), len(lost))

	if takeover {
		n3 := c.addNode("n3", append(args("n3"), "--events-recover-nodes", "n1")...)
		c.waitMembers(2, n2, n3)
	} else {
		n1.start() // with the flags it was made with
	}
	testutil.Until(t, 30*time.Second, "an event for every acknowledged entry", func() bool { return len(missing(stream())) == 0 })
	s := stream()
	for _, r := range lost {
		for _, e := range s[r] {
			if e.msgID != acked[r] || e.node != "n1" || !e.replayed {
				t.Errorf("%s seq %d: event %+v, want message %s replayed by n1", r.user, r.seq, e, acked[r])
			}
		}
	}
	for r, evs := range s {
		for _, e := range evs {
			if want, ok := acked[r]; ok && e.msgID != want {
				t.Errorf("%s seq %d: an event names message %s, the send was %s", r.user, r.seq, e.msgID, want)
			}
			if want := map[bool]string{true: "n2", false: "n1"}[r.user == b]; e.node != want {
				t.Errorf("%s seq %d: event from %s, want %s", r.user, r.seq, e.node, want)
			}
		}
	}
}
