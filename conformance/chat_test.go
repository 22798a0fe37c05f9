package conformance

import (
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// The scenarios of the chat commands (§4.8) and their error codes, added to
// the tables of commands_test.go and errors_test.go.

// say sends a 1:1 message from c to user to and returns its ack.
func say(c *conn, to, body string) *pb.SendAck {
	c.t.Helper()
	var ack pb.SendAck
	c.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: uniq("c"), To: to, Body: []byte(body)}, codec.CmdSendAck, &ack)
	return &ack
}

func init() {
	commandScenarios["CONVERSATIONS"] = func(t *testing.T, w *world) codec.Command {
		say(w.b, w.ua, "hello")
		var out pb.ConversationsOK
		f := w.a.call(codec.CmdConversations, &pb.ConversationsRequest{}, codec.CmdConversationsOK, &out)
		if len(out.Conversations) != 1 || out.HasMore {
			t.Fatalf("CONVERSATIONS_OK %v", &out)
		}
		if c := out.Conversations[0]; c.Peer != w.ub || c.LastSeq != 1 || c.Unread != 1 || c.Last.GetFrom() != w.ub || string(c.Last.GetBody()) != "hello" {
			t.Fatalf("conversation %v", c)
		}
		return f.Command
	}
	commandScenarios["READ"] = func(t *testing.T, w *world) codec.Command {
		say(w.b, w.ua, "one")
		say(w.b, w.ua, "two")
		var ok pb.ReadOK
		f := w.a.call(codec.CmdRead, &pb.ReadRequest{Peer: w.ub, UpToSeq: 1}, codec.CmdReadOK, &ok)
		if ok.Peer != w.ub || ok.ReadSeq != 1 || ok.Unread != 1 {
			t.Fatalf("READ_OK %v", &ok)
		}
		w.a.call(codec.CmdRead, &pb.ReadRequest{Peer: w.ub}, codec.CmdReadOK, &ok)
		if ok.ReadSeq != 2 || ok.Unread != 0 {
			t.Fatalf("READ_OK of everything %v", &ok)
		}
		return f.Command
	}
	commandScenarios["RECEIPT"] = func(t *testing.T, w *world) codec.Command {
		ack := say(w.b, w.ua, "read me") // ub's seq 1, ua's seq 1
		w.a.call(codec.CmdRead, &pb.ReadRequest{Peer: w.ub}, codec.CmdReadOK, nil)
		f := w.b.next(codec.CmdReceipt)
		var r pb.Receipt
		decode(t, f, &r)
		if r.Peer != w.ua || r.User != w.ua || r.ReadSeq != ack.Seq || r.MsgId != ack.MsgId {
			t.Fatalf("RECEIPT %v (ack %v)", &r, ack)
		}
		return f.Command
	}
	typing := func(t *testing.T, w *world) frame {
		t.Helper()
		w.a.send(codec.CmdTyping, &pb.TypingRequest{Peer: w.ub, On: true})
		f := w.b.next(codec.CmdTypingEvent)
		var e pb.TypingEvent
		decode(t, f, &e)
		if e.Peer != w.ua || e.User != w.ua || !e.On || e.ExpiresMs == 0 {
			t.Fatalf("TYPING_EVENT %v", &e)
		}
		return f
	}
	commandScenarios["TYPING"] = func(t *testing.T, w *world) codec.Command {
		typing(t, w)
		// No reply: nothing but the HEARTBEAT's reply answers a's
		// requests.
		w.a.call(codec.CmdHeartbeat, &pb.Heartbeat{}, codec.CmdHeartbeatOK, nil)
		for _, f := range w.a.pending {
			if f.Seq != 0 {
				t.Fatalf("TYPING answered by %s", f.Command)
			}
		}
		return 0
	}
	commandScenarios["TYPING_EVENT"] = func(t *testing.T, w *world) codec.Command {
		return typing(t, w).Command
	}
	commandScenarios["RECALL"] = func(t *testing.T, w *world) codec.Command {
		ack := say(w.a, w.ub, "oops")
		pushed(t, w.b)
		var ok pb.EventOK
		f := w.a.call(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId}, codec.CmdRecallOK, &ok)
		if ok.MsgId != ack.MsgId || ok.Seq != 2 || ok.Duplicate {
			t.Fatalf("RECALL_OK %v", &ok)
		}
		if m := pushed(t, w.b); m.Event != 1 || m.TargetMsgId != ack.MsgId || m.Seq != 2 || len(m.Body) != 0 {
			t.Fatalf("recall event %v", m)
		}
		var sync pb.SyncOK
		w.b.call(codec.CmdSync, &pb.SyncRequest{}, codec.CmdSyncOK, &sync)
		if len(sync.Messages) != 2 || !sync.Messages[0].Recalled || len(sync.Messages[0].Body) != 0 {
			t.Fatalf("SYNC_OK after the recall %v", &sync)
		}
		w.a.call(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId}, codec.CmdRecallOK, &ok)
		if !ok.Duplicate || ok.Seq != 2 {
			t.Fatalf("repeated RECALL_OK %v", &ok)
		}
		return f.Command
	}
	commandScenarios["DELETE"] = func(t *testing.T, w *world) codec.Command {
		ack := say(w.b, w.ua, "hide me")
		var ok pb.EventOK
		f := w.a.call(codec.CmdDelete, &pb.MessageRequest{MsgId: ack.MsgId}, codec.CmdDeleteOK, &ok)
		if ok.MsgId != ack.MsgId || ok.Seq != 2 || ok.Duplicate {
			t.Fatalf("DELETE_OK %v", &ok)
		}
		var sync pb.SyncOK
		w.a.call(codec.CmdSync, &pb.SyncRequest{}, codec.CmdSyncOK, &sync)
		if len(sync.Messages) != 2 || !sync.Messages[0].Deleted || sync.Messages[1].Event != 2 || sync.Messages[1].TargetMsgId != ack.MsgId {
			t.Fatalf("SYNC_OK after the delete %v", &sync)
		}
		return f.Command
	}
	commandScenarios["HISTORY"] = func(t *testing.T, w *world) codec.Command {
		first := say(w.b, w.ua, "one")
		say(w.a, w.ub, "two")
		say(w.b, w.ua, "three")
		var h pb.HistoryOK
		f := w.a.call(codec.CmdHistory, &pb.HistoryRequest{Peer: w.ub, Limit: 2}, codec.CmdHistoryOK, &h)
		if len(h.Messages) != 2 || !h.HasMore || string(h.Messages[0].Body) != "two" || string(h.Messages[1].Body) != "three" {
			t.Fatalf("HISTORY_OK %v", &h)
		}
		w.a.call(codec.CmdHistory, &pb.HistoryRequest{Peer: w.ub, BeforeSeq: h.Messages[0].Seq}, codec.CmdHistoryOK, &h)
		if len(h.Messages) != 1 || h.HasMore || h.Messages[0].MsgId != first.MsgId {
			t.Fatalf("second HISTORY_OK %v", &h)
		}
		return f.Command
	}
	commandScenarios["READ_COUNT"] = func(t *testing.T, w *world) codec.Command {
		g := w.group(t, w.ub)
		var ack pb.SendAck
		w.a.call(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: uniq("g"), GroupId: g, Body: []byte("all")}, codec.CmdSendAck, &ack)
		var rc pb.ReadCountOK
		w.a.call(codec.CmdReadCount, &pb.ReadCountRequest{GroupId: g, Seq: ack.Seq}, codec.CmdReadCountOK, &rc)
		if rc.Read != 0 || rc.Members != 1 {
			t.Fatalf("READ_COUNT_OK before the read %v", &rc)
		}
		w.b.call(codec.CmdRead, &pb.ReadRequest{GroupId: g}, codec.CmdReadOK, nil)
		f := w.a.call(codec.CmdReadCount, &pb.ReadCountRequest{GroupId: g, Seq: ack.Seq}, codec.CmdReadCountOK, &rc)
		if rc.Seq != ack.Seq || rc.Read != 1 || rc.Members != 1 {
			t.Fatalf("READ_COUNT_OK %v", &rc)
		}
		return f.Command
	}

	nodeArgs["recall"] = []string{"--recall-window", "1ms"}
	errorScenarios["UNKNOWN_MESSAGE"] = func(t *testing.T, _ *errorNodes) observed {
		w := newWorld(t, codec.JSON)
		w.a.fails(codec.CmdRead, &pb.ReadRequest{Peer: w.ub}, codec.CodeUnknownMessage)
		return answered(t, w.a, w.a.reply(w.a.send(codec.CmdRecall, &pb.MessageRequest{MsgId: 12345})))
	}
	errorScenarios["NOT_SENDER"] = func(t *testing.T, _ *errorNodes) observed {
		w := newWorld(t, codec.Protobuf)
		ack := say(w.b, w.ua, "not yours")
		return answered(t, w.a, w.a.reply(w.a.send(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId})))
	}
	errorScenarios["RECALL_EXPIRED"] = func(t *testing.T, e *errorNodes) observed {
		n := e.get("recall")
		user := uniq("late")
		c := loggedIn(t, n, codec.MsgPack, user)
		ack := say(c, user, "too late")
		for time.Now().UnixMilli() <= ack.Time+1 {
			time.Sleep(time.Millisecond) // the 1 ms window passes
		}
		return answered(t, c, c.reply(c.send(codec.CmdRecall, &pb.MessageRequest{MsgId: ack.MsgId})))
	}
	notProvoked["UNSUPPORTED"] = "needs a message store without conversations (cluster mode's MongoDB store, for now): engine TestChatWithoutTheSeamIsUnsupported"
}
