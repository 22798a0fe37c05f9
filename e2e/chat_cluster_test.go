package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/imgn/imgn/client"
)

// nextChatEvent returns cl's next chat event that want accepts, failing t
// after d. Events it does not accept are skipped.
func nextChatEvent(t *testing.T, cl *client.Client, d time.Duration, what string, want func(client.ChatEvent) bool) client.ChatEvent {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case e := <-cl.ChatEvents():
			if want(e) {
				return e
			}
		case <-timeout:
			t.Fatalf("%s: no %s", cl.User(), what)
		}
	}
}

// TestChatAcrossNodes: the chat commands in a three-node cluster, every
// user on another node than its peers (and alice with a second device on a
// third): conversations and unread counts from the shared store, typing
// and read receipts crossing the mesh, recall and delete events appended
// through the inbox owners and pushed to every device, history and read
// counts, over both mesh transports.
func TestChatAcrossNodes(t *testing.T) {
	for _, mode := range []string{"direct", "redis"} {
		t.Run(mode, func(t *testing.T) { testChatAcrossNodes(t, mode) })
	}
}

func testChatAcrossNodes(t *testing.T, mode string) {
	c := newCluster(t, mode)
	n1, n2, n3 := c.addNode("n1"), c.addNode("n2"), c.addNode("n3")
	c.waitMembers(3, n1, n2, n3)
	ctx := t.Context()
	const wait = 20 * time.Second
	alice := dialNode(t, "alice", "pc", n1.listen)
	phone := dialNode(t, "alice", "phone", n3.listen)
	bob := dialNode(t, "bob", "pc", n2.listen)
	carol := dialNode(t, "carol", "pc", n3.listen)

	var ids []uint64
	for i := range 3 {
		ack, err := alice.Send(ctx, "bob", []byte(fmt.Sprint("hi ", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ack.MsgId)
	}
	receiveN(t, bob, 3, wait)
	receiveN(t, alice, 3, wait)
	receiveN(t, phone, 3, wait)

	convs, err := bob.Conversations(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(convs.Conversations) != 1 {
		t.Fatalf("bob's conversations %v", convs.Conversations)
	}
	if cv := convs.Conversations[0]; cv.Peer != "alice" || cv.LastSeq != 3 || cv.Unread != 3 || cv.ReadSeq != 0 || string(cv.Last.GetBody()) != "hi 2" {
		t.Fatalf("bob's conversation with alice: %v", cv)
	}
	if cv, err := alice.Conversations(ctx, 0, 0); err != nil || len(cv.Conversations) != 1 || cv.Conversations[0].Unread != 0 || cv.Conversations[0].ReadSeq != 3 {
		t.Fatalf("alice's conversations (her own messages are read): %v, %v", cv, err)
	}

	// Typing crosses the mesh (alice on n1, bob on n2) and is not stored.
	if err := alice.Typing(client.Peer("bob"), true); err != nil {
		t.Fatal(err)
	}
	ev := nextChatEvent(t, bob, wait, "typing from alice", func(e client.ChatEvent) bool { return e.Typing != nil })
	if ev.Typing.User != "alice" || ev.Typing.Peer != "alice" || !ev.Typing.On {
		t.Fatalf("bob's typing event %v", ev.Typing)
	}

	// bob reads up to his seq 2: both of alice's devices (n1, n3) get the
	// receipt in alice's seqs; a lower cursor later is kept at 2.
	rd, err := bob.Read(ctx, client.Peer("alice"), 2)
	if err != nil || rd.ReadSeq != 2 || rd.Unread != 1 {
		t.Fatalf("bob reads to 2: %v, %v", rd, err)
	}
	for _, cl := range []*client.Client{alice, phone} {
		r := nextChatEvent(t, cl, wait, "receipt from bob", func(e client.ChatEvent) bool { return e.Receipt != nil }).Receipt
		if r.User != "bob" || r.Peer != "bob" || r.ReadSeq != 2 || r.MsgId != ids[1] {
			t.Fatalf("%s's receipt %v, want bob read to seq 2 (message %d)", cl.Device(), r, ids[1])
		}
	}
	if rd, err := bob.Read(ctx, client.Peer("alice"), 1); err != nil || rd.ReadSeq != 2 {
		t.Fatalf("a lower cursor moved bob's back: %v, %v", rd, err)
	}

	// Recall: the event takes a new seq in both inboxes, written by each
	// inbox's owner, and reaches every device on every node.
	rctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	rc, err := alice.Recall(rctx, ids[1])
	if err != nil || rc.Duplicate || rc.Seq != 4 {
		for _, n := range []*node{n1, n2, n3} {
			b, _ := os.ReadFile(n.logPath)
			t.Logf("%s log:\n%s", n.id, b[max(0, len(b)-4000):])
		}
		t.Fatalf("recall: %v, %v", rc, err)
	}
	for _, cl := range []*client.Client{alice, phone, bob} {
		m := receiveN(t, cl, 1, wait)[0]
		if m.Event != 1 || m.TargetMsgId != ids[1] || m.Seq != 4 {
			t.Fatalf("%s/%s: %v, want the recall of %d at seq 4", cl.User(), cl.Device(), m, ids[1])
		}
	}
	if again, err := alice.Recall(ctx, ids[1]); err != nil || !again.Duplicate || again.Seq != 4 {
		t.Fatalf("repeated recall: %v, %v", again, err)
	}
	h, err := bob.History(ctx, client.Peer("alice"), 0, 0)
	if err != nil || len(h.Messages) != 3 || !h.Messages[1].Recalled || len(h.Messages[1].Body) != 0 || string(h.Messages[2].Body) != "hi 2" {
		t.Fatalf("bob's history after the recall: %v, %v", h, err)
	}

	// Delete-for-me: bob's views only.
	del, err := bob.Delete(ctx, ids[0])
	if err != nil || del.Seq != 5 {
		t.Fatalf("delete: %v, %v", del, err)
	}
	if m := receiveN(t, bob, 1, wait)[0]; m.Event != 2 || m.TargetMsgId != ids[0] {
		t.Fatalf("bob's delete event %v", m)
	}
	if h, err := bob.History(ctx, client.Peer("alice"), 0, 0); err != nil || len(h.Messages) != 2 || h.Messages[0].MsgId != ids[1] {
		t.Fatalf("bob's history after deleting %d: %v, %v", ids[0], h, err)
	}
	if h, err := alice.History(ctx, client.Peer("bob"), 0, 0); err != nil || len(h.Messages) != 3 {
		t.Fatalf("alice's history changed by bob's delete: %v, %v", h, err)
	}

	// A group across the three nodes: typing reaches the other members,
	// read counts come from every member's cursor.
	g, err := carol.CreateGroup(ctx, "trio", "alice", "bob")
	if err != nil {
		t.Fatal(err)
	}
	// The event announcing alice and bob is carol's own change: her cursor
	// was raised to it in the shared store (her inbox is on n3, the event
	// was appended through its owner), as her own message would raise it.
	receiveN(t, carol, 1, wait)
	convs, err = carol.Conversations(ctx, 0, 0)
	if err != nil || len(convs.Conversations) != 1 || convs.Conversations[0].GroupId != g.GroupId || convs.Conversations[0].Unread != 0 ||
		convs.Conversations[0].ReadSeq == 0 || convs.Conversations[0].ReadSeq != convs.Conversations[0].LastSeq {
		t.Fatalf("carol's conversations after creating the group: %v, %v (want the group, all read)", convs, err)
	}
	gack, err := carol.SendGroup(ctx, g.GroupId, []byte("hello trio"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range []*client.Client{alice, phone, bob} {
		receiveN(t, cl, 2, wait) // the event, then the message
	}
	receiveN(t, carol, 1, wait)
	if err := bob.Typing(client.Group(g.GroupId), true); err != nil {
		t.Fatal(err)
	}
	for _, cl := range []*client.Client{alice, phone, carol} {
		e := nextChatEvent(t, cl, wait, "group typing", func(e client.ChatEvent) bool { return e.Typing != nil && e.Typing.GroupId != "" })
		if e.Typing.User != "bob" || e.Typing.GroupId != g.GroupId {
			t.Fatalf("%s: group typing %v", cl.User(), e.Typing)
		}
	}
	if _, err := bob.Read(ctx, client.Group(g.GroupId), 0); err != nil {
		t.Fatal(err)
	}
	rc2, err := carol.ReadCount(ctx, client.Group(g.GroupId), gack.Seq)
	if err != nil || rc2.Read != 1 || rc2.Members != 2 {
		t.Fatalf("read count of carol's group message: %v, %v (want bob of alice and bob)", rc2, err)
	}
	convs, err = alice.Conversations(ctx, 0, 0)
	if err != nil || len(convs.Conversations) != 2 || convs.Conversations[0].GroupId != g.GroupId || convs.Conversations[0].Unread != 2 {
		t.Fatalf("alice's conversations with the group newest: %v, %v", convs, err)
	}

}
