package engine

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
)

// The chat commands on the embedded store (what `make run` serves): the
// store's calls run on workers and its recall and delete events complete
// on its committer, not on the event loops as with the memory store.

func startEmbedded(t *testing.T, mod func(*Config)) *Server {
	t.Helper()
	store, err := pebblestore.Open(pebblestore.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, func(c *Config) {
		c.Store = store
		if mod != nil {
			mod(c)
		}
	})
}

func TestChatEmbeddedEndToEnd(t *testing.T) {
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			s := startEmbedded(t, nil)
			phone, laptop, bob, carol := dial(t, s, ser), dial(t, s, ser), dial(t, s, ser), dial(t, s, ser)
			phone.login("alice", "phone")
			laptop.login("alice", "laptop")
			bob.login("bob", "pc")
			carol.login("carol", "pc")

			sendTo(phone, "a1", "bob", "hi bob") // alice 1, bob 1
			var ids []uint64
			for i := range 3 { // alice 2..4, bob 2..4
				ids = append(ids, sendTo(bob, fmt.Sprint("b", i), "alice", fmt.Sprint("hello ", i)).MsgId)
			}
			sendTo(carol, "c1", "alice", "from carol") // alice 5

			var list pb.ConversationsOK
			phone.mustCall(codec.CmdConversations, &pb.ConversationsRequest{}, &list)
			if len(list.Conversations) != 2 {
				t.Fatalf("conversations %v", &list)
			}
			c0, c1 := list.Conversations[0], list.Conversations[1]
			if c0.Peer != "carol" || c0.LastSeq != 5 || c0.Unread != 1 || string(c0.Last.GetBody()) != "from carol" {
				t.Fatalf("first conversation %v", c0)
			}
			if c1.Peer != "bob" || c1.LastSeq != 4 || c1.ReadSeq != 1 || c1.Unread != 3 {
				t.Fatalf("second conversation %v", c1)
			}

			// READ: the cursor, a receipt to alice's other device and to bob.
			var read pb.ReadOK
			phone.mustCall(codec.CmdRead, &pb.ReadRequest{Peer: "bob", UpToSeq: 3}, &read)
			if read.ReadSeq != 3 || read.Unread != 1 {
				t.Fatalf("READ_OK %v", &read)
			}
			var r pb.Receipt
			decodeAs(t, laptop.waitFrame(codec.CmdReceipt, 10*time.Second), codec.CmdReceipt, &r)
			if r.Peer != "bob" || r.ReadSeq != 3 || r.MsgId != ids[1] {
				t.Fatalf("receipt on alice's laptop %v", &r)
			}
			decodeAs(t, bob.waitFrame(codec.CmdReceipt, 10*time.Second), codec.CmdReceipt, &r)
			if r.Peer != "alice" || r.ReadSeq != 3 || r.MsgId != ids[1] {
				t.Fatalf("receipt to bob %v", &r)
			}
			phone.wantError(codec.CmdRead, &pb.ReadRequest{Peer: "dave"}, codec.CodeUnknownMessage)

			// HISTORY, paged backwards by message id.
			var h pb.HistoryOK
			phone.mustCall(codec.CmdHistory, &pb.HistoryRequest{Peer: "bob", Limit: 2}, &h)
			if len(h.Messages) != 2 || !h.HasMore || h.Messages[0].MsgId != ids[1] || h.Messages[1].MsgId != ids[2] {
				t.Fatalf("newest history page %v", &h)
			}
			phone.mustCall(codec.CmdHistory, &pb.HistoryRequest{Peer: "bob", Limit: 2, BeforeMsgId: ids[1]}, &h)
			if len(h.Messages) != 2 || h.HasMore || h.Messages[0].From != "alice" || h.Messages[1].MsgId != ids[0] {
				t.Fatalf("older history page %v", &h)
			}

			// RECALL: an event in every inbox holding the message, pushed to
			// every device; SYNC serves no body.
			laptop.waitPushes(5) // a1 from the phone, bob's three, carol's
			phone.waitPushes(4)
			var ok pb.EventOK
			bob.mustCall(codec.CmdRecall, &pb.MessageRequest{MsgId: ids[2]}, &ok)
			if ok.Seq != 5 || ok.Duplicate { // bob's seqs: 1 alice's, 2..4 his own
				t.Fatalf("RECALL_OK %v", &ok)
			}
			for who, c := range map[string]*rawClient{"alice's phone": phone, "alice's laptop": laptop} {
				ps := c.waitPushes(len(c.pushes) + 1)
				if ev := ps[len(ps)-1]; ev.Event != persist.EventRecall || ev.TargetMsgId != ids[2] || ev.Seq != 6 {
					t.Fatalf("%s got %v, want the recall event at seq 6", who, ev)
				}
			}
			var sync pb.SyncOK
			phone.mustCall(codec.CmdSync, &pb.SyncRequest{AfterSeq: 3}, &sync)
			if len(sync.Messages) != 3 || !sync.Messages[0].Recalled || len(sync.Messages[0].Body) != 0 {
				t.Fatalf("alice's sync after the recall %v", &sync)
			}
			bob.mustCall(codec.CmdRecall, &pb.MessageRequest{MsgId: ids[2]}, &ok)
			if !ok.Duplicate || ok.Seq != 5 {
				t.Fatalf("repeated RECALL_OK %v", &ok)
			}
			phone.wantError(codec.CmdRecall, &pb.MessageRequest{MsgId: ids[0]}, codec.CodeNotSender)

			// DELETE for alice only.
			phone.mustCall(codec.CmdDelete, &pb.MessageRequest{MsgId: ids[0]}, &ok)
			if ok.Seq != 7 || ok.Duplicate {
				t.Fatalf("DELETE_OK %v", &ok)
			}
			phone.mustCall(codec.CmdHistory, &pb.HistoryRequest{Peer: "bob"}, &h)
			got := make([]uint64, len(h.Messages))
			for i, m := range h.Messages {
				got[i] = m.MsgId
			}
			if len(got) != 3 || slices.Contains(got, ids[0]) || !h.Messages[2].Recalled {
				t.Fatalf("alice's history after the delete and the recall: %v", &h)
			}
			bob.mustCall(codec.CmdHistory, &pb.HistoryRequest{Peer: "alice"}, &h)
			if len(h.Messages) != 4 || h.Messages[1].MsgId != ids[0] || len(h.Messages[1].Body) == 0 {
				t.Fatalf("bob's history after alice's delete: %v", &h)
			}

			// Groups: READ keeps the cursor, READ_COUNT counts it.
			var g pb.GroupInfo
			phone.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team", Members: []string{"bob", "carol"}}, &g)
			var ack pb.SendAck
			phone.mustCall(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "g1", GroupId: g.GroupId, Body: []byte("team!")}, &ack)
			ps := carol.waitPushes(len(carol.pushes) + 2) // the creation's event, then the message
			carol.mustCall(codec.CmdRead, &pb.ReadRequest{GroupId: g.GroupId}, &read)
			if read.ReadSeq != ps[len(ps)-1].Seq || read.Unread != 0 {
				t.Fatalf("carol's group READ_OK %v", &read)
			}
			var rc pb.ReadCountOK
			phone.mustCall(codec.CmdReadCount, &pb.ReadCountRequest{GroupId: g.GroupId, Seq: ack.Seq}, &rc)
			if rc.Read != 1 || rc.Members != 2 {
				t.Fatalf("READ_COUNT_OK %v, want 1 of 2", &rc)
			}
			phone.mustCall(codec.CmdConversations, &pb.ConversationsRequest{Limit: 1}, &list)
			if len(list.Conversations) != 1 || !list.HasMore || list.Conversations[0].GroupId != g.GroupId {
				t.Fatalf("newest conversation after the group message: %v", &list)
			}
		})
	}
}

// TestRecallEventsArriveInSeqOrderEmbedded: as TestRecallEventsArriveInSeqOrder,
// on the embedded store, where a recall's pushes are queued by the store's
// committer in completion order with the appends around it.
func TestRecallEventsArriveInSeqOrderEmbedded(t *testing.T) {
	checkRecallOrder(t, startEmbedded(t, func(c *Config) { c.SendRate, c.SendBurst = 1e6, 1e6 }))
}

// TestPushAckEmbeddedRunsOnTheLoop: with the embedded store a PUSH_ACK runs
// on the event loop and hands its cursor to the store without a worker
// waiting (persist.AsyncCursorSetter); the cursor is stored, only moves
// forward, and each move is reported to the observer once it is durable.
func TestPushAckEmbeddedRunsOnTheLoop(t *testing.T) {
	rec := &recorder{}
	s := startEmbedded(t, func(c *Config) { c.Observer = rec })
	if s.cursors == nil || !s.onLoop(codec.CmdPushAck) {
		t.Fatal("PUSH_ACK would run on a worker with the embedded store")
	}
	a, b := dial(t, s, codec.Protobuf), dial(t, s, codec.Protobuf)
	a.login("alice", "pc")
	b.login("bob", "phone")
	for i := range 3 {
		sendTo(a, fmt.Sprint("m", i), "bob", "hi")
	}
	b.waitPushes(3)
	b.send(codec.CmdPushAck, &pb.PushAck{UpToSeq: 2})
	b.send(codec.CmdPushAck, &pb.PushAck{UpToSeq: 1}) // stale: nothing moves
	b.send(codec.CmdPushAck, &pb.PushAck{UpToSeq: 3})
	poll(t, "both cursor moves reported", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return slices.Equal(rec.delivered, []string{"bob/phone/2", "bob/phone/3"})
	})
	if cur, err := s.cfg.Store.Cursor(t.Context(), "bob", "phone"); err != nil || cur != 3 {
		t.Fatalf("stored cursor %d, %v; want 3", cur, err)
	}
}
