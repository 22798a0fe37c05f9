package engine

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/memstore"
)

var serializers = []codec.SerializerID{codec.JSON, codec.Protobuf, codec.MsgPack}

func TestRegisterLoginSendPushSyncEverySerializer(t *testing.T) {
	s := startServer(t, nil)
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			alice, bob := "alice_"+ser.String(), "bob_"+ser.String()
			a := dial(t, s, ser)
			var reg pb.RegisterOK
			a.mustCall(codec.CmdRegister, &pb.RegisterRequest{User: alice, Password: "secret1"}, &reg)
			if reg.User != alice {
				t.Fatalf("register ok %v", &reg)
			}
			a.wantError(codec.CmdRegister, &pb.RegisterRequest{User: alice, Password: "secret1"}, codec.CodeUserExists)
			a.wantError(codec.CmdLogin, &pb.LoginRequest{User: alice, Password: "wrong-pw", Device: "pc"}, codec.CodeAuthFailed)
			a.wantError(codec.CmdLogin, &pb.LoginRequest{User: "nobody", Password: "secret1", Device: "pc"}, codec.CodeAuthFailed)
			var lok pb.LoginOK
			a.mustCall(codec.CmdLogin, &pb.LoginRequest{User: alice, Password: "secret1", Device: "pc"}, &lok)
			if lok.User != alice || lok.Device != "pc" || lok.HeadSeq != 0 || lok.HeartbeatMs != 30000 || lok.NodeId != "n1" {
				t.Fatalf("login ok %v", &lok)
			}
			var hb pb.Heartbeat
			a.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{Time: 1}, &hb)
			if hb.Time == 0 {
				t.Fatal("heartbeat reply without server time")
			}

			b := dial(t, s, ser)
			b.login(bob, "phone")
			var ack pb.SendAck
			a.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "m1", To: bob, Body: []byte("hi bob")}, &ack)
			if ack.MsgId == 0 || ack.Seq != 1 || ack.Duplicate || ack.ClientMsgId != "m1" {
				t.Fatalf("ack %v", &ack)
			}
			p := b.waitPushes(1)[0]
			if p.Seq != 1 || p.From != alice || p.To != bob || string(p.Body) != "hi bob" || p.MsgId != ack.MsgId || p.Time != ack.Time {
				t.Fatalf("push %v", p)
			}
			// The sending connection has its SEND_ACK and is not pushed
			// its own message (a heartbeat round trip reads what came).
			a.mustCall(codec.CmdHeartbeat, &pb.Heartbeat{}, nil)
			if len(a.pushes) != 0 {
				t.Fatalf("sender was pushed its own message: %v", a.pushes)
			}
			b.send(codec.CmdPushAck, &pb.PushAck{UpToSeq: 1})
			var sync pb.SyncOK
			b.mustCall(codec.CmdSync, &pb.SyncRequest{AfterSeq: 0}, &sync)
			if len(sync.Messages) != 1 || sync.HeadSeq != 1 || sync.HasMore || !bytes.Equal(sync.Messages[0].Body, []byte("hi bob")) {
				t.Fatalf("sync %v", &sync)
			}
			// The cursor survives into the next login of the same device.
			poll(t, "cursor stored", func() bool {
				cur, _ := s.store.Cursor(t.Context(), bob, "phone")
				return cur == 1
			})
			b2 := dial(t, s, ser)
			if lok := b2.login(bob, "tablet"); lok.HeadSeq != 1 || lok.Cursor != 0 {
				t.Fatalf("tablet login %v", lok)
			}
			var out pb.Empty
			b2.mustCall(codec.CmdLogout, &pb.Empty{}, &out)
			b2.expectClosed()
		})
	}
}

func TestOfflineMessagesArriveBySyncInOrder(t *testing.T) {
	s := startServer(t, nil)
	a := dial(t, s, codec.Protobuf)
	a.login("alice", "pc")
	b := dial(t, s, codec.Protobuf)
	b.login("bob", "pc")
	b.mustCall(codec.CmdLogout, &pb.Empty{}, nil)
	const n = 250
	for i := range n {
		a.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint("c", i), To: "bob", Body: []byte(fmt.Sprint(i))}, nil)
	}
	b = dial(t, s, codec.MsgPack)
	lok := b.login("bob", "pc")
	if lok.HeadSeq != n {
		t.Fatalf("head %d", lok.HeadSeq)
	}
	var got []*pb.Message
	after := uint64(0)
	for {
		var page pb.SyncOK
		b.mustCall(codec.CmdSync, &pb.SyncRequest{AfterSeq: after, Limit: 100}, &page)
		got = append(got, page.Messages...)
		if !page.HasMore {
			break
		}
		after = page.Messages[len(page.Messages)-1].Seq
	}
	if len(got) != n {
		t.Fatalf("synced %d, want %d", len(got), n)
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) || string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("message %d: seq %d body %q", i, m.Seq, m.Body)
		}
	}
	var big pb.SyncOK
	b.mustCall(codec.CmdSync, &pb.SyncRequest{Limit: 100000}, &big)
	if len(big.Messages) != 250 || big.HasMore {
		t.Fatalf("limit cap: %d messages has_more=%v", len(big.Messages), big.HasMore)
	}
}

func TestPipelinedSendsKeepOrderAndPushesAreGapFree(t *testing.T) {
	stores := map[string]func() persist.Store{
		"inline": func() persist.Store { return memstore.New() },
		"worker": func() persist.Store { return &flakyStore{Store: memstore.New()} },
	}
	for name, store := range stores {
		t.Run(name, func(t *testing.T) {
			s := startServer(t, func(c *Config) { c.MaxConnInbound = 1 << 20; c.Store = store() })
			a := dial(t, s, codec.Protobuf)
			a.login("alice", "pc")
			b := dial(t, s, codec.Protobuf)
			b.login("bob", "pc")
			const n = 300
			var seqs []uint32
			for i := range n {
				seqs = append(seqs, a.send(codec.CmdSend, &pb.SendRequest{ClientMsgId: fmt.Sprint("p", i), To: "bob", Body: []byte(fmt.Sprint(i))}))
			}
			for _, q := range seqs {
				if f := a.reply(q); f.Command != codec.CmdSendAck {
					t.Fatalf("reply %s: %v", f.Command, decodeError(t, f).Message)
				}
			}
			got := b.waitPushes(n)
			slices.SortFunc(got, func(x, y *pb.Message) int { return int(x.Seq) - int(y.Seq) })
			for i, m := range got {
				if m.Seq != uint64(i+1) || string(m.Body) != fmt.Sprint(i) {
					t.Fatalf("push %d: seq %d body %q: pipelined sends reordered", i, m.Seq, m.Body)
				}
			}
		})
	}
}

func TestRetriedSendIsDeduplicated(t *testing.T) {
	s := startServer(t, nil)
	a := dial(t, s, codec.JSON)
	a.login("alice", "pc")
	b := dial(t, s, codec.JSON)
	b.login("bob", "pc")
	var first, again pb.SendAck
	a.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "dup", To: "bob", Body: []byte("once")}, &first)
	a.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "dup", To: "bob", Body: []byte("once")}, &again)
	if !again.Duplicate || again.MsgId != first.MsgId || again.Seq != first.Seq || again.Time != first.Time {
		t.Fatalf("retry ack %v, first %v", &again, &first)
	}
	// A retry from another connection (after a reconnect) is a duplicate too.
	a2 := dial(t, s, codec.MsgPack)
	a2.login("alice", "phone")
	var third pb.SendAck
	a2.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "dup", To: "bob", Body: []byte("once")}, &third)
	if !third.Duplicate || third.MsgId != first.MsgId {
		t.Fatalf("cross-connection retry %v", &third)
	}
	var sync pb.SyncOK
	b.mustCall(codec.CmdSync, &pb.SyncRequest{}, &sync)
	if len(sync.Messages) != 1 || sync.HeadSeq != 1 {
		t.Fatalf("bob's inbox has %d messages, head %d; want exactly one", len(sync.Messages), sync.HeadSeq)
	}
}

func TestMultiDeviceFanOutAndDuplicateLoginKick(t *testing.T) {
	s := startServer(t, nil)
	a1 := dial(t, s, codec.Protobuf)
	a1.login("alice", "pc")
	a2 := dial(t, s, codec.JSON)
	a2.login("alice", "phone")
	b1 := dial(t, s, codec.MsgPack)
	b1.login("bob", "pc")
	b2 := dial(t, s, codec.Protobuf)
	b2.login("bob", "phone")
	var ack pb.SendAck
	a1.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "x", To: "bob", Body: []byte("to both")}, &ack)
	for _, c := range []*rawClient{b1, b2} {
		if p := c.waitPushes(1)[0]; string(p.Body) != "to both" || p.Seq != 1 {
			t.Fatalf("bob device push %v", p)
		}
	}
	// alice's other device sees her sent message in her inbox.
	if p := a2.waitPushes(1)[0]; p.Seq != ack.Seq || p.To != "bob" || p.From != "alice" {
		t.Fatalf("alice phone push %v", p)
	}
	var pres pb.PresenceOK
	a1.mustCall(codec.CmdPresence, &pb.PresenceRequest{Users: []string{"bob", "carol", "alice"}}, &pres)
	if len(pres.Users) != 3 || !pres.Users[0].Online || !slices.Equal(pres.Users[0].Devices, []string{"pc", "phone"}) || pres.Users[1].Online {
		t.Fatalf("presence %v", &pres)
	}
	// carol has no account: unknown, not just offline.
	if !pres.Users[1].Unknown || pres.Users[0].Unknown || pres.Users[2].Unknown {
		t.Fatalf("unknown flags: %v", &pres)
	}
	// A second login of bob/phone kicks the first.
	b3 := dial(t, s, codec.JSON)
	b3.login("bob", "phone")
	f := b2.waitFrame(codec.CmdKick, 5*time.Second)
	var k pb.Kick
	if err := codec.Unmarshal(f.Serializer, f.Body, &k); err != nil || codec.ErrorCode(k.Code) != codec.CodeKickDuplicateLogin {
		t.Fatalf("kick %v %v", &k, err)
	}
	b2.expectClosed()
	a1.mustCall(codec.CmdSend, &pb.SendRequest{ClientMsgId: "y", To: "bob", Body: []byte("after kick")}, nil)
	if p := b3.waitPushes(1)[0]; string(p.Body) != "after kick" {
		t.Fatalf("new session push %v", p)
	}
	a1.mustCall(codec.CmdPresence, &pb.PresenceRequest{Users: []string{"bob"}}, &pres)
	if !slices.Equal(pres.Users[0].Devices, []string{"pc", "phone"}) {
		t.Fatalf("presence after kick %v", pres.Users[0])
	}
}

func TestGroups(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MaxGroupSize = 4 })
	users := []string{"ann", "ben", "cat", "dan", "eve"}
	cl := map[string]*rawClient{}
	for _, u := range users {
		cl[u] = dial(t, s, codec.Protobuf)
		cl[u].login(u, "pc")
	}
	var g pb.GroupInfo
	cl["ann"].mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team", Members: []string{"ben", "cat", "ben"}, Open: true}, &g)
	if g.GroupId == "" || g.Owner != "ann" || !slices.Equal(g.Members, []string{"ann", "ben", "cat"}) || !g.Open {
		t.Fatalf("group %v", &g)
	}
	cl["ann"].wantError(codec.CmdGroupCreate, &pb.GroupCreateRequest{Members: []string{"ghost"}}, codec.CodeUnknownRecipient)
	cl["ann"].wantError(codec.CmdGroupCreate, &pb.GroupCreateRequest{Members: users}, codec.CodeGroupFull)
	cl["dan"].wantError(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "d0", GroupId: g.GroupId, Body: []byte("x")}, codec.CodeNotGroupMember)
	cl["dan"].wantError(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: g.GroupId}, codec.CodeNotGroupMember)
	cl["dan"].mustCall(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: g.GroupId}, &g)
	if len(g.Members) != 4 {
		t.Fatalf("after join %v", g.Members)
	}
	cl["eve"].wantError(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: g.GroupId}, codec.CodeGroupFull)
	cl["eve"].wantError(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: "gnope"}, codec.CodeUnknownGroup)
	// The initial members' first entry announces them; dan's first is
	// his join, which every member sees.
	first := map[string]int{"ann": 1, "ben": 1, "cat": 1, "dan": 0} // entries before the join
	for _, u := range []string{"ann", "ben", "cat"} {
		wantGroupEventOf(t, cl[u].waitPushes(1)[0], g.GroupId, codec.GroupEventAdded, []string{"ben", "cat"}, "ann")
	}
	for u, n := range first {
		wantGroupEvent(t, cl[u].waitPushes(n + 1)[n], g.GroupId, codec.GroupEventAdded, "dan", "dan")
	}
	var ack pb.SendAck
	cl["ben"].mustCall(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "g1", GroupId: g.GroupId, Body: []byte("hello team")}, &ack)
	for _, u := range []string{"ann", "cat", "dan"} { // not ben: the sender has the ack
		n := first[u] + 2
		p := cl[u].waitPushes(n)[n-1]
		if p.GroupId != g.GroupId || p.From != "ben" || string(p.Body) != "hello team" || p.MsgId != ack.MsgId || p.Seq != uint64(n) {
			t.Fatalf("%s got %v", u, p)
		}
	}
	var left pb.GroupInfo
	cl["cat"].mustCall(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: g.GroupId}, &left)
	if left.GroupId != g.GroupId || len(left.Members) != 0 || left.Owner != "" {
		t.Fatalf("GROUP_LEAVE answered %v: a former member sees nothing but the id", &left)
	}
	cl["ann"].mustCall(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "g2", GroupId: g.GroupId, Body: []byte("without cat")}, nil)
	wantGroupEvent(t, cl["dan"].waitPushes(3)[2], g.GroupId, codec.GroupEventRemoved, "cat", "cat")
	if p := cl["dan"].waitPushes(4)[3]; string(p.Body) != "without cat" || p.Seq != 4 {
		t.Fatalf("dan fourth %v", p)
	}
	var sync pb.SyncOK
	cl["cat"].mustCall(codec.CmdSync, &pb.SyncRequest{}, &sync)
	if len(sync.Messages) != 4 || string(sync.Messages[2].Body) != "hello team" {
		t.Fatalf("cat has %v after leaving, want its addition, dan's join, hello team and its own leave", sync.Messages)
	}
	wantGroupEventOf(t, sync.Messages[0], g.GroupId, codec.GroupEventAdded, []string{"ben", "cat"}, "ann")
	wantGroupEvent(t, sync.Messages[3], g.GroupId, codec.GroupEventRemoved, "cat", "cat")
	var members pb.GroupInfo
	cl["ann"].mustCall(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: g.GroupId}, &members)
	if !slices.Equal(members.Members, []string{"ann", "ben", "dan"}) {
		t.Fatalf("members %v", members.Members)
	}
}
