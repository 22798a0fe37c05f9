package engine

import (
	"errors"
	"testing"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/persist"
)

// chatEvent waits for the next event on c's ChatEvents.
func chatEvent(t *testing.T, c *client.Client) client.ChatEvent {
	t.Helper()
	select {
	case e, ok := <-c.ChatEvents():
		if !ok {
			t.Fatalf("%s/%s: ChatEvents closed", c.User(), c.Device())
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatalf("%s/%s: no chat event", c.User(), c.Device())
	}
	return client.ChatEvent{}
}

// TestClientChatEverySerializer drives every chat call of the client
// library against the engine: conversations, read with receipts on the
// other device and at the peer, typing, history, recall (the event on
// Messages), delete and read counts.
func TestClientChatEverySerializer(t *testing.T) {
	s := startServer(t, nil)
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			ctx := t.Context()
			alice, bob := "alice-"+ser.String(), "bob-"+ser.String()
			phone := dialClient(t, s, alice, "phone", ser)
			laptop := dialClient(t, s, alice, "laptop", ser)
			b := dialClient(t, s, bob, "pc", ser)
			var ids []uint64
			for _, body := range []string{"one", "two", "three"} {
				ack, err := b.Send(ctx, alice, []byte(body))
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, ack.MsgId)
			}
			msgs := receive(t, phone, 3)
			receive(t, laptop, 3)
			if conv := client.ConvOf(alice, msgs[0]); conv != client.Peer(bob) {
				t.Fatalf("ConvOf %v", conv)
			}

			list, err := phone.Conversations(ctx, 0, 0)
			if err != nil || len(list.Conversations) != 1 || list.Conversations[0].Peer != bob || list.Conversations[0].Unread != 3 {
				t.Fatalf("conversations %v %v", list, err)
			}
			read, err := phone.Read(ctx, client.Peer(bob), msgs[1].Seq)
			if err != nil || read.ReadSeq != 2 || read.Unread != 1 {
				t.Fatalf("read %v %v", read, err)
			}
			if e := chatEvent(t, laptop); e.Receipt == nil || e.Receipt.User != alice || e.Receipt.Peer != bob || e.Receipt.ReadSeq != 2 {
				t.Fatalf("laptop's event %+v", e)
			}
			if e := chatEvent(t, b); e.Receipt == nil || e.Receipt.User != alice || e.Receipt.Peer != alice || e.Receipt.MsgId != ids[1] {
				t.Fatalf("bob's event %+v", e)
			}

			if err := b.Typing(client.Peer(alice), true); err != nil {
				t.Fatal(err)
			}
			for _, c := range []*client.Client{phone, laptop} {
				if e := chatEvent(t, c); e.Typing == nil || e.Typing.User != bob || !e.Typing.On || e.Typing.ExpiresMs == 0 {
					t.Fatalf("%s's typing event %+v", c.Device(), e)
				}
			}
			if err := b.Typing(client.Conv{}, true); err == nil {
				t.Fatal("typing without a conversation: no error")
			}

			h, err := phone.History(ctx, client.Peer(bob), 0, 2)
			if err != nil || len(h.Messages) != 2 || !h.HasMore || h.Messages[1].MsgId != ids[2] {
				t.Fatalf("history page %v %v", h, err)
			}
			if h, err = phone.History(ctx, client.Peer(bob), h.Messages[0].Seq, 2); err != nil || len(h.Messages) != 1 || h.HasMore || h.Messages[0].MsgId != ids[0] {
				t.Fatalf("history second page %v %v", h, err)
			}

			ev, err := b.Recall(ctx, ids[2])
			if err != nil || ev.Duplicate {
				t.Fatalf("recall %v %v", ev, err)
			}
			if m := receive(t, phone, 1)[0]; m.Event != persist.EventRecall || m.TargetMsgId != ids[2] || m.Seq != 4 {
				t.Fatalf("recall event on Messages: %v", m)
			}
			var ce *client.Error
			if _, err := phone.Recall(ctx, ids[1]); !errors.As(err, &ce) || ce.Code != codec.CodeNotSender {
				t.Fatalf("recall of another's message: %v", err)
			}
			del, err := laptop.Delete(ctx, ids[0])
			if err != nil || del.Seq != 5 {
				t.Fatalf("delete %v %v", del, err)
			}
			if h, err = phone.History(ctx, client.Peer(bob), 0, 0); err != nil || len(h.Messages) != 2 || !h.Messages[1].Recalled {
				t.Fatalf("history after recall and delete %v %v", h, err)
			}

			g, err := b.CreateGroup(ctx, "team", alice)
			if err != nil {
				t.Fatal(err)
			}
			gack, err := b.SendGroup(ctx, g.GroupId, []byte("team"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := phone.Read(ctx, client.Group(g.GroupId), 0); err != nil {
				t.Fatal(err)
			}
			rc, err := b.ReadCount(ctx, client.Group(g.GroupId), gack.Seq)
			if err != nil || rc.Read != 1 || rc.Members != 1 {
				t.Fatalf("read count %v %v", rc, err)
			}
		})
	}
}
