package engine

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
)

// TestHandleSignalAndEventPush: what a peer node sends over the mesh for
// chat reaches this node's devices in their own serializers: a RECEIPT or
// TYPING_EVENT signal (anything else, or an undecodable body, is dropped),
// and a pushed recall event with its chat fields (which the PUSH template
// of messages does not carry).
func TestHandleSignalAndEventPush(t *testing.T) {
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			s := startServer(t, nil)
			bob := dial(t, s, ser)
			bob.login("bob", "pc")
			body, err := proto.Marshal(&pb.Receipt{Peer: "alice", User: "alice", ReadSeq: 7, MsgId: 42})
			if err != nil {
				t.Fatal(err)
			}
			s.HandleSignal(cluster.Signal{Users: []string{"bob"}, Cmd: uint16(codec.CmdPush), Body: body})
			s.HandleSignal(cluster.Signal{Users: []string{"bob"}, Cmd: uint16(codec.CmdReceipt), Body: []byte{0xff, 0xff}})
			noFrame(bob, codec.CmdPush)
			noFrame(bob, codec.CmdReceipt)
			s.HandleSignal(cluster.Signal{Users: []string{"nobody", "bob"}, Cmd: uint16(codec.CmdReceipt), Body: body})
			var r pb.Receipt
			decodeAs(t, bob.waitFrame(codec.CmdReceipt, 10*time.Second), codec.CmdReceipt, &r)
			if r.Peer != "alice" || r.User != "alice" || r.ReadSeq != 7 || r.MsgId != 42 {
				t.Fatalf("receipt %v", &r)
			}
			ev := persist.Message{ID: 99, From: "alice", To: "bob", ClientMsgID: "e", Timestamp: 5, Event: persist.EventRecall, Target: 42}
			s.HandlePush(ev, []cluster.PushTarget{{User: "bob", Seq: 3}})
			got := bob.waitPushes(1)[0]
			if got.Event != persist.EventRecall || got.TargetMsgId != 42 || got.Seq != 3 || got.MsgId != 99 {
				t.Fatalf("pushed event %v", got)
			}
		})
	}
}
