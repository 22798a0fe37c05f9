package engine

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

// decodeAs decodes f, which must be a cmd frame, into m.
func decodeAs(t *testing.T, f codec.Frame, cmd codec.Command, m proto.Message) {
	t.Helper()
	if f.Command != cmd {
		t.Fatalf("got %s, want %s", f.Command, cmd)
	}
	if err := codec.Unmarshal(f.Serializer, f.Body, m); err != nil {
		t.Fatalf("decode %s: %v", cmd, err)
	}
}

// sendTo sends a 1:1 message and returns its ack.
func sendTo(c *rawClient, cmid, to, body string) *pb.SendAck {
	c.t.Helper()
	var ack pb.SendAck
	c.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: cmid, To: to, Body: []byte(body)}, &ack)
	return &ack
}

// noFrame asserts that no frame with cmd has been collected by c so far,
// after a round trip (a HEARTBEAT): anything queued before the round trip
// has then arrived.
func noFrame(c *rawClient, cmd codec.Command) {
	c.t.Helper()
	c.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
	for _, f := range c.other {
		if f.Command == cmd {
			c.t.Fatalf("unexpected %s", cmd)
		}
	}
}

func TestChatConversationsReadAndReceiptsEverySerializer(t *testing.T) {
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			s := startServer(t, nil)
			phone, laptop, bob := dial(t, s, ser), dial(t, s, ser), dial(t, s, ser)
			phone.login("alice", "phone")
			laptop.login("alice", "laptop")
			bob.login("bob", "pc")
			carol := dial(t, s, ser)
			carol.login("carol", "pc")

			sendTo(phone, "a1", "bob", "hi bob") // alice 1, bob 1
			for i := range 3 {                   // alice 2..4, bob 2..4
				sendTo(bob, fmt.Sprint("b", i), "alice", fmt.Sprint("hello ", i))
			}
			sendTo(carol, "c1", "alice", "from carol") // alice 5

			var list pb.ConversationsOK
			phone.mustCall(codec.CmdConversations, &pb.ConversationsRequest{}, &list)
			if len(list.Conversations) != 2 || list.HasMore {
				t.Fatalf("conversations %v", &list)
			}
			c0, c1 := list.Conversations[0], list.Conversations[1]
			if c0.Peer != "carol" || c0.LastSeq != 5 || c0.Unread != 1 || c0.Last.GetFrom() != "carol" || string(c0.Last.GetBody()) != "from carol" {
				t.Fatalf("first conversation %v", c0)
			}
			if c1.Peer != "bob" || c1.LastSeq != 4 || c1.ReadSeq != 1 || c1.Unread != 3 || c1.Last.GetSeq() != 4 {
				t.Fatalf("second conversation %v", c1)
			}
			phone.mustCall(codec.CmdConversations, &pb.ConversationsRequest{Limit: 1}, &list)
			if len(list.Conversations) != 1 || !list.HasMore || list.Conversations[0].Peer != "carol" {
				t.Fatalf("first page of 1: %v", &list)
			}
			phone.mustCall(codec.CmdConversations, &pb.ConversationsRequest{BeforeSeq: 5, Limit: 1}, &list)
			if len(list.Conversations) != 1 || list.HasMore || list.Conversations[0].Peer != "bob" {
				t.Fatalf("second page of 1: %v", &list)
			}

			var read pb.ReadOK
			phone.mustCall(codec.CmdRead, &pb.ReadRequest{Peer: "bob", UpToSeq: 3}, &read)
			if read.Peer != "bob" || read.ReadSeq != 3 || read.Unread != 1 {
				t.Fatalf("READ_OK %v", &read)
			}
			var r pb.Receipt
			decodeAs(t, laptop.waitFrame(codec.CmdReceipt, 10*time.Second), codec.CmdReceipt, &r)
			if r.Peer != "bob" || r.User != "alice" || r.ReadSeq != 3 {
				t.Fatalf("receipt on alice's laptop %v", &r)
			}
			decodeAs(t, bob.waitFrame(codec.CmdReceipt, 10*time.Second), codec.CmdReceipt, &r)
			if r.Peer != "alice" || r.User != "alice" || r.ReadSeq != 3 {
				t.Fatalf("receipt to bob %v (his seq of the message alice read up to is 3)", &r)
			}
			// Backwards or again: the cursor stays, nobody is told.
			phone.mustCall(codec.CmdRead, &pb.ReadRequest{Peer: "bob", UpToSeq: 2}, &read)
			if read.ReadSeq != 3 {
				t.Fatalf("cursor moved back: %v", &read)
			}
			noFrame(laptop, codec.CmdReceipt)
			noFrame(bob, codec.CmdReceipt)
			noFrame(phone, codec.CmdReceipt) // the reading device has its READ_OK

			phone.wantError(codec.CmdRead, &pb.ReadRequest{Peer: "dave"}, codec.CodeUnknownMessage)
			phone.wantError(codec.CmdRead, &pb.ReadRequest{}, codec.CodeInvalidArgument)
			phone.wantError(codec.CmdRead, &pb.ReadRequest{Peer: "bob", GroupId: "g1"}, codec.CodeInvalidArgument)
			phone.wantError(codec.CmdHistory, &pb.HistoryRequest{Peer: "bad id!"}, codec.CodeInvalidArgument)

			// Groups: the cursor is kept, no receipt to members; read counts
			// on request.
			var g pb.GroupInfo
			phone.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team", Members: []string{"bob", "carol"}}, &g)
			var ack pb.SendAck
			phone.mustCall(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "g1", GroupId: g.GroupId, Body: []byte("team!")}, &ack)
			// The creation's members_added event, then the message.
			ps := bob.waitPushes(len(bob.pushes) + 2)
			wantGroupEventOf(t, ps[len(ps)-2], g.GroupId, codec.GroupEventAdded, []string{"bob", "carol"}, "alice")
			bobSeq := ps[len(ps)-1].Seq
			bob.mustCall(codec.CmdRead, &pb.ReadRequest{GroupId: g.GroupId}, &read)
			if read.GroupId != g.GroupId || read.ReadSeq != bobSeq {
				t.Fatalf("group READ_OK %v, want read_seq %d", &read, bobSeq)
			}
			noFrame(phone, codec.CmdReceipt)
			noFrame(carol, codec.CmdReceipt)
			var rc pb.ReadCountOK
			phone.mustCall(codec.CmdReadCount, &pb.ReadCountRequest{GroupId: g.GroupId, Seq: ack.Seq}, &rc)
			if rc.Seq != ack.Seq || rc.Read != 1 || rc.Members != 2 {
				t.Fatalf("READ_COUNT_OK %v, want 1 of 2", &rc)
			}
			phone.wantError(codec.CmdReadCount, &pb.ReadCountRequest{GroupId: g.GroupId, Seq: 1}, codec.CodeUnknownMessage)
		})
	}
}

func TestChatHistoryPagesBackwards(t *testing.T) {
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			s := startServer(t, nil)
			alice, bob := dial(t, s, ser), dial(t, s, ser)
			alice.login("alice", "pc")
			bob.login("bob", "pc")
			var ids []uint64
			for i := range 7 {
				ids = append(ids, sendTo(bob, fmt.Sprint("m", i), "alice", fmt.Sprint("body ", i)).MsgId)
				sendTo(alice, fmt.Sprint("x", i), "alice", "note to self") // another conversation
			}
			var got []uint64
			req := &pb.HistoryRequest{Peer: "bob", Limit: 3}
			for range 10 {
				var h pb.HistoryOK
				alice.mustCall(codec.CmdHistory, req, &h)
				page := make([]uint64, len(h.Messages))
				for i, m := range h.Messages {
					if m.From != "bob" || (i > 0 && m.Seq <= h.Messages[i-1].Seq) {
						t.Fatalf("history page %v", &h)
					}
					page[i] = m.MsgId
				}
				got = append(page, got...)
				if !h.HasMore {
					break
				}
				req = &pb.HistoryRequest{Peer: "bob", Limit: 3, BeforeMsgId: h.Messages[0].MsgId}
			}
			if !slices.Equal(got, ids) {
				t.Fatalf("paged history %v, want %v", got, ids)
			}
			alice.wantError(codec.CmdHistory, &pb.HistoryRequest{Peer: "bob", BeforeMsgId: 12345}, codec.CodeUnknownMessage)
			alice.wantError(codec.CmdHistory, &pb.HistoryRequest{Peer: "bob", BeforeMsgId: ids[1], BeforeSeq: 3}, codec.CodeInvalidArgument)
		})
	}
}

func TestChatRecallAndDelete(t *testing.T) {
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			s := startServer(t, nil)
			bob, bob2, alice := dial(t, s, ser), dial(t, s, ser), dial(t, s, ser)
			bob.login("bob", "phone")
			bob2.login("bob", "laptop")
			alice.login("alice", "pc")
			ack := sendTo(bob, "b1", "alice", "oops")  // bob 1, alice 1
			keep := sendTo(bob, "b2", "alice", "fine") // bob 2, alice 2
			alice.waitPushes(2)
			bob2.waitPushes(2)

			alice.wantError(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId}, codec.CodeNotSender)
			alice.wantError(codec.CmdRecall, &pb.MessageRequest{MsgId: 999}, codec.CodeUnknownMessage)
			alice.wantError(codec.CmdRecall, &pb.MessageRequest{}, codec.CodeInvalidArgument)
			var ok pb.EventOK
			bob.mustCall(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId}, &ok)
			if ok.MsgId != ack.MsgId || ok.Seq != 3 || ok.Duplicate {
				t.Fatalf("RECALL_OK %v", &ok)
			}
			for who, c := range map[string]*rawClient{"alice": alice, "bob's laptop": bob2, "bob's phone": bob} {
				ps := c.waitPushes(len(c.pushes) + 1)
				ev := ps[len(ps)-1]
				if ev.Event != persist.EventRecall || ev.TargetMsgId != ack.MsgId || ev.Seq != 3 || len(ev.Body) != 0 || ev.From != "bob" || ev.To != "alice" {
					t.Fatalf("%s got recall event %v", who, ev)
				}
			}
			var sync pb.SyncOK
			alice.mustCall(codec.CmdSync, &pb.SyncRequest{}, &sync)
			if len(sync.Messages) != 3 || !sync.Messages[0].Recalled || len(sync.Messages[0].Body) != 0 || string(sync.Messages[1].Body) != "fine" {
				t.Fatalf("alice's sync after the recall %v", &sync)
			}
			bob.mustCall(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId}, &ok)
			if !ok.Duplicate || ok.Seq != 3 {
				t.Fatalf("repeated RECALL_OK %v", &ok)
			}

			// Delete for alice only.
			alice.mustCall(codec.CmdDelete, &pb.MessageRequest{MsgId: keep.MsgId}, &ok)
			if ok.Seq != 4 || ok.Duplicate {
				t.Fatalf("DELETE_OK %v", &ok)
			}
			alice.mustCall(codec.CmdSync, &pb.SyncRequest{AfterSeq: 1}, &sync)
			if len(sync.Messages) != 3 || !sync.Messages[0].Deleted || len(sync.Messages[0].Body) != 0 || sync.Messages[2].Event != persist.EventDelete {
				t.Fatalf("alice's sync after the delete %v", &sync)
			}
			var h pb.HistoryOK
			alice.mustCall(codec.CmdHistory, &pb.HistoryRequest{Peer: "bob"}, &h)
			if len(h.Messages) != 1 || !h.Messages[0].Recalled {
				t.Fatalf("alice's history after the delete: %v", &h)
			}
			bob.mustCall(codec.CmdHistory, &pb.HistoryRequest{Peer: "alice"}, &h)
			if len(h.Messages) != 2 || string(h.Messages[1].Body) != "fine" {
				t.Fatalf("bob's history after alice's delete: %v", &h)
			}
			alice.mustCall(codec.CmdDelete, &pb.MessageRequest{MsgId: keep.MsgId}, &ok)
			if !ok.Duplicate || ok.Seq != 0 {
				t.Fatalf("repeated DELETE_OK %v", &ok)
			}
		})
	}
}

func TestChatRecallWindow(t *testing.T) {
	s := startServer(t, func(c *Config) { c.RecallWindow = time.Millisecond })
	bob, alice := dial(t, s, codec.JSON), dial(t, s, codec.JSON)
	bob.login("bob", "pc")
	alice.login("alice", "pc")
	ack := sendTo(bob, "b1", "alice", "too late")
	poll(t, "the recall window to pass", func() bool { return time.Now().UnixMilli() > ack.Time+1 })
	bob.wantError(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId}, codec.CodeRecallExpired)
}

func TestChatTyping(t *testing.T) {
	s := startServer(t, func(c *Config) { c.TypingRate, c.TypingBurst = 1e-9, 2 })
	alice, alice2, bob := dial(t, s, codec.MsgPack), dial(t, s, codec.Protobuf), dial(t, s, codec.JSON)
	alice.login("alice", "phone")
	alice2.login("alice", "laptop")
	bob.login("bob", "pc")
	alice.send(codec.CmdTyping, &pb.TypingRequest{Peer: "bob", On: true})
	var ev pb.TypingEvent
	decodeAs(t, bob.waitFrame(codec.CmdTypingEvent, 10*time.Second), codec.CmdTypingEvent, &ev)
	if ev.Peer != "alice" || ev.User != "alice" || !ev.On || ev.ExpiresMs != 6000 {
		t.Fatalf("typing event %v", &ev)
	}
	noFrame(alice2, codec.CmdTypingEvent)
	alice.wantError(codec.CmdTyping, &pb.TypingRequest{Peer: "ghost", On: true}, codec.CodeUnknownRecipient)
	alice.wantError(codec.CmdTyping, &pb.TypingRequest{}, codec.CodeInvalidArgument)
	alice.wantError(codec.CmdTyping, &pb.TypingRequest{GroupId: "gnope"}, codec.CodeUnknownGroup)
	// The burst of 2 is spent by the next one; the third is dropped.
	alice.send(codec.CmdTyping, &pb.TypingRequest{Peer: "bob", On: false})
	alice.send(codec.CmdTyping, &pb.TypingRequest{Peer: "bob", On: true})
	sendTo(alice, "a1", "bob", "after typing")
	bob.waitPushes(1)
	n := 0
	for _, f := range bob.other {
		if f.Command == codec.CmdTypingEvent {
			decodeAs(t, f, codec.CmdTypingEvent, &ev)
			if ev.On {
				t.Fatalf("the typing event over the rate was forwarded: %v", &ev)
			}
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d typing events before the message, want 1 (on: false)", n)
	}
	// Groups: members only; every other member is told.
	var g pb.GroupInfo
	bob.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Members: []string{"alice"}}, &g)
	carol := dial(t, s, codec.JSON)
	carol.login("carol", "pc")
	carol.wantError(codec.CmdTyping, &pb.TypingRequest{GroupId: g.GroupId, On: true}, codec.CodeNotGroupMember)
	bob.send(codec.CmdTyping, &pb.TypingRequest{GroupId: g.GroupId, On: true})
	for _, c := range []*rawClient{alice, alice2} {
		decodeAs(t, c.waitFrame(codec.CmdTypingEvent, 10*time.Second), codec.CmdTypingEvent, &ev)
		if ev.GroupId != g.GroupId || ev.Peer != "" || ev.User != "bob" || !ev.On {
			t.Fatalf("group typing event %v", &ev)
		}
	}
}

// plainStore hides the memory store's chat seam.
type plainStore struct{ persist.Store }

func TestChatWithoutTheSeamIsUnsupported(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Store = plainStore{memstore.New()} })
	alice, bob := dial(t, s, codec.Protobuf), dial(t, s, codec.Protobuf)
	alice.login("alice", "pc")
	bob.login("bob", "pc")
	ack := sendTo(bob, "b1", "alice", "hi")
	alice.wantError(codec.CmdConversations, &pb.ConversationsRequest{}, codec.CodeUnsupported)
	alice.wantError(codec.CmdRead, &pb.ReadRequest{Peer: "bob"}, codec.CodeUnsupported)
	alice.wantError(codec.CmdHistory, &pb.HistoryRequest{Peer: "bob"}, codec.CodeUnsupported)
	bob.wantError(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId}, codec.CodeUnsupported)
	alice.wantError(codec.CmdDelete, &pb.MessageRequest{MsgId: ack.MsgId}, codec.CodeUnsupported)
	alice.wantError(codec.CmdReadCount, &pb.ReadCountRequest{Peer: "bob", Seq: 1}, codec.CodeUnsupported)
	// Typing needs no store.
	alice.send(codec.CmdTyping, &pb.TypingRequest{Peer: "bob", On: true})
	bob.waitFrame(codec.CmdTypingEvent, 10*time.Second)
}

// TestRecallEventsArriveInSeqOrder: recall events and messages appended
// concurrently to one inbox (from two event loops) reach a device of it in
// seq order, gap-free, as messages alone do.
func TestRecallEventsArriveInSeqOrder(t *testing.T) {
	checkRecallOrder(t, startServer(t, func(c *Config) { c.SendRate, c.SendBurst = 1e6, 1e6 }))
}

// checkRecallOrder has bob recall his messages to carol while carol sends
// to him, and checks that a device of bob's gets everything in seq order,
// gap-free, the recall events included.
func checkRecallOrder(t *testing.T, s *Server) {
	phone, laptop, carol := dial(t, s, codec.Protobuf), dial(t, s, codec.JSON), dial(t, s, codec.MsgPack)
	phone.login("bob", "phone")
	laptop.login("bob", "laptop")
	carol.login("carol", "pc")
	const n = 200
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = sendTo(laptop, fmt.Sprint("b", i), "carol", "x").MsgId
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			carol.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint("c", i), To: "bob", Body: []byte("y")})
		}
	}()
	for _, id := range ids {
		laptop.send(codec.CmdRecall, &pb.MessageRequest{MsgId: id})
	}
	<-done
	ps := phone.waitPushes(3 * n) // bob's sends, carol's messages, the recall events
	recalls := 0
	for i, m := range ps {
		if m.Seq != uint64(i+1) {
			t.Fatalf("push %d has seq %d: out of order or a gap", i, m.Seq)
		}
		if m.Event == persist.EventRecall {
			recalls++
		}
	}
	if recalls != n {
		t.Fatalf("%d recall events pushed, want %d", recalls, n)
	}
}
