package conformance

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

// world is the state a command scenario starts from: two users logged in
// on the shared node in serializer ser, on device "d".
type world struct {
	ser    codec.SerializerID
	ua, ub string
	a, b   *conn
}

func newWorld(t *testing.T, ser codec.SerializerID) *world {
	t.Helper()
	w := &world{ser: ser, ua: uniq("ua"), ub: uniq("ub")}
	w.a = loggedIn(t, sharedNode, ser, w.ua)
	w.b = loggedIn(t, sharedNode, ser, w.ub)
	return w
}

// pushed waits for the next PUSH on c and returns its single message.
func pushed(t *testing.T, c *conn) *pb.Message {
	t.Helper()
	var p pb.Push
	decode(t, c.next(codec.CmdPush), &p)
	if len(p.Messages) != 1 {
		t.Fatalf("PUSH of %d messages", len(p.Messages))
	}
	return p.Messages[0]
}

// commandScenario runs one command of §4.1 and returns the command of the
// frame that answered it (0 when nothing answers, as for PUSH_ACK) or, for
// a frame the server sends on its own, that frame's command.
type commandScenario func(t *testing.T, w *world) codec.Command

var commandScenarios = map[string]commandScenario{
	"REGISTER": func(t *testing.T, w *world) codec.Command {
		c := dial(t, sharedNode, w.ser)
		user := uniq("reg")
		var ok pb.RegisterOK
		f := c.call(codec.CmdRegister, &pb.RegisterRequest{User: user, Password: "secret123"}, codec.CmdRegisterOK, &ok)
		if ok.User != user {
			t.Fatalf("REGISTER_OK %v", &ok)
		}
		// The connection stays not logged in; the account takes a LOGIN.
		c.fails(codec.CmdSync, &pb.SyncRequest{}, codec.CodeNotLoggedIn)
		var login pb.LoginOK
		dial(t, sharedNode, w.ser).call(codec.CmdLogin, &pb.LoginRequest{User: user, Password: "secret123", Device: "pc"}, codec.CmdLoginOK, &login)
		return f.Command
	},
	"LOGIN": func(t *testing.T, w *world) codec.Command {
		c := dial(t, sharedNode, w.ser)
		var ok pb.LoginOK
		f := c.call(codec.CmdLogin, &pb.LoginRequest{Token: token(jwtSecret, w.ua, time.Now().Add(time.Hour)), Device: "tablet"}, codec.CmdLoginOK, &ok)
		if ok.User != w.ua || ok.Device != "tablet" || ok.NodeId != "conf" || ok.SessionId == 0 || ok.HeartbeatMs == 0 ||
			ok.IdleTimeoutMs < ok.HeartbeatMs || ok.ServerTime <= 0 {
			t.Fatalf("LOGIN_OK %v", &ok)
		}
		// user equal to the token's sub is accepted too.
		dial(t, sharedNode, w.ser).call(codec.CmdLogin, &pb.LoginRequest{User: w.ub, Token: token(jwtSecret, w.ub, time.Now().Add(time.Hour)), Device: "tablet"}, codec.CmdLoginOK, nil)
		return f.Command
	},
	"LOGOUT": func(t *testing.T, w *world) codec.Command {
		w.b.send(codec.CmdPushAck, &pb.PushAck{UpToSeq: 0})
		f := w.a.call(codec.CmdLogout, &pb.Empty{}, codec.CmdLogoutOK, nil)
		w.a.closed()
		return f.Command
	},
	"HEARTBEAT": func(t *testing.T, w *world) codec.Command {
		var hb pb.Heartbeat
		f := w.a.call(codec.CmdHeartbeat, &pb.Heartbeat{Time: 42}, codec.CmdHeartbeatOK, &hb)
		if hb.Time <= 0 {
			t.Fatalf("HEARTBEAT_OK time %d", hb.Time)
		}
		return f.Command
	},
	"SEND": func(t *testing.T, w *world) codec.Command {
		req := &pb.SendRequest{ClientMsgId: uniq("c"), To: w.ub, Kind: 7, Body: []byte("hi \x00\xff")}
		var ack pb.SendAck
		f := w.a.call(codec.CmdSend, req, codec.CmdSendAck, &ack)
		if ack.ClientMsgId != req.ClientMsgId || ack.MsgId == 0 || ack.Seq != 1 || ack.Time <= 0 || ack.Duplicate {
			t.Fatalf("SEND_ACK %v", &ack)
		}
		m := pushed(t, w.b)
		want := &pb.Message{Seq: 1, MsgId: ack.MsgId, From: w.ua, To: w.ub, ClientMsgId: req.ClientMsgId, Kind: 7, Body: req.Body, Time: ack.Time}
		if !proto.Equal(m, want) {
			t.Fatalf("PUSH %v, want %v", m, want)
		}
		// A retry is answered with the original ack, and pushed again at
		// the same seq (§4.4).
		var dup pb.SendAck
		w.a.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: req.ClientMsgId, To: w.ub, Body: []byte("other")}, codec.CmdSendAck, &dup)
		if !dup.Duplicate || dup.MsgId != ack.MsgId || dup.Seq != ack.Seq || dup.Time != ack.Time {
			t.Fatalf("retry: %v, first %v", &dup, &ack)
		}
		if again := pushed(t, w.b); again.Seq != 1 || again.MsgId != ack.MsgId {
			t.Fatalf("retry pushed %v", again)
		}
		return f.Command
	},
	"PUSH_ACK": func(t *testing.T, w *world) codec.Command {
		w.a.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: uniq("c"), To: w.ub}, codec.CmdSendAck, nil)
		seq := pushed(t, w.b).Seq
		ackSeq := w.b.send(codec.CmdPushAck, &pb.PushAck{UpToSeq: seq})
		w.b.call(codec.CmdHeartbeat, &pb.Heartbeat{}, codec.CmdHeartbeatOK, nil)
		for _, f := range w.b.pending {
			if f.Seq == ackSeq {
				t.Fatalf("PUSH_ACK answered with %s", f.Command)
			}
		}
		// The cursor is stored per (user, device): LOGIN_OK returns it.
		if ok := dial(t, sharedNode, w.ser).login(w.ub, "d"); ok.Cursor != seq {
			t.Fatalf("cursor %d after PUSH_ACK %d", ok.Cursor, seq)
		}
		return 0
	},
	"SYNC": func(t *testing.T, w *world) codec.Command {
		for i := range 3 {
			w.a.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: uniq("c"), To: w.ub, Body: []byte{byte(i)}}, codec.CmdSendAck, nil)
		}
		var page pb.SyncOK
		f := w.b.call(codec.CmdSync, &pb.SyncRequest{AfterSeq: 0, Limit: 2}, codec.CmdSyncOK, &page)
		if len(page.Messages) != 2 || page.Messages[0].Seq != 1 || page.Messages[1].Seq != 2 || !page.HasMore || page.HeadSeq != 3 || page.FirstSeq != 0 {
			t.Fatalf("first page %v", &page)
		}
		w.b.call(codec.CmdSync, &pb.SyncRequest{AfterSeq: 2}, codec.CmdSyncOK, &page)
		if len(page.Messages) != 1 || page.Messages[0].Seq != 3 || page.Messages[0].Body[0] != 2 || page.HasMore {
			t.Fatalf("second page %v", &page)
		}
		w.b.call(codec.CmdSync, &pb.SyncRequest{AfterSeq: 3}, codec.CmdSyncOK, &page)
		if len(page.Messages) != 0 || page.HasMore || page.HeadSeq != 3 {
			t.Fatalf("empty page %v", &page)
		}
		return f.Command
	},
	"GROUP_CREATE": func(t *testing.T, w *world) codec.Command {
		var g pb.GroupInfo
		f := w.a.call(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team ü", Members: []string{w.ub, w.ub, w.ua}}, codec.CmdGroupInfo, &g)
		want := []string{w.ua, w.ub}
		slices.Sort(want)
		if g.GroupId == "" || g.Name != "team ü" || g.Owner != w.ua || !slices.Equal(g.Members, want) || g.Open || len(g.Admins) != 0 {
			t.Fatalf("GROUP_INFO %v", &g)
		}
		// The initial members (the creator aside) are announced.
		for _, c := range []*conn{w.a, w.b} {
			groupEvent(t, pushed(t, c), g.GroupId, "members_added", w.ub)
		}
		w.a.call(codec.CmdGroupCreate, &pb.GroupCreateRequest{Open: true}, codec.CmdGroupInfo, &g)
		if !g.Open || !slices.Equal(g.Members, []string{w.ua}) {
			t.Fatalf("open GROUP_INFO %v", &g)
		}
		return f.Command
	},
	"GROUP_JOIN": func(t *testing.T, w *world) codec.Command {
		w.b.fails(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: w.group(t)}, codec.CodeGroupInviteOnly)
		g := w.openGroup(t)
		var info pb.GroupInfo
		f := w.b.call(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: g}, codec.CmdGroupInfo, &info)
		w.b.call(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: g}, codec.CmdGroupInfo, &info) // idempotent
		if !slices.Contains(info.Members, w.ub) || len(info.Members) != 2 || !info.Open {
			t.Fatalf("after join %v", &info)
		}
		for _, c := range []*conn{w.a, w.b} { // once, though joined twice
			groupEvent(t, pushed(t, c), g, "members_added", w.ub)
		}
		return f.Command
	},
	"GROUP_LEAVE": func(t *testing.T, w *world) codec.Command {
		g := w.group(t, w.ub)
		var info pb.GroupInfo
		f := w.b.call(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: g}, codec.CmdGroupInfo, &info)
		w.b.call(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: g}, codec.CmdGroupInfo, &info) // idempotent
		if info.GroupId != g || len(info.Members) != 0 || info.Owner != "" {
			t.Fatalf("after leave %v: a former member gets only the id", &info)
		}
		for _, c := range []*conn{w.a, w.b} { // the leaver too
			groupEvent(t, pushed(t, c), g, "members_removed", w.ub)
		}
		// The owner leaving hands the group on; the last one dissolves it.
		o := w.group(t, w.ub)
		w.a.call(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: o}, codec.CmdGroupInfo, nil)
		w.b.call(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: o}, codec.CmdGroupInfo, &info)
		if info.Owner != w.ub || !slices.Equal(info.Members, []string{w.ub}) {
			t.Fatalf("after the owner left %v", &info)
		}
		w.b.call(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: o}, codec.CmdGroupInfo, nil)
		w.b.fails(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: o}, codec.CodeUnknownGroup)
		return f.Command
	},
	"GROUP_ADD": func(t *testing.T, w *world) codec.Command {
		g := w.group(t)
		var info pb.GroupInfo
		f := w.a.call(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: g, Users: []string{w.ub}}, codec.CmdGroupInfo, &info)
		w.a.call(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: g, Users: []string{w.ub}}, codec.CmdGroupInfo, &info) // idempotent
		if !slices.Contains(info.Members, w.ub) || len(info.Members) != 2 {
			t.Fatalf("after GROUP_ADD %v", &info)
		}
		groupEvent(t, pushed(t, w.b), g, "members_added", w.ub)
		w.b.fails(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: g, Users: []string{w.ua}}, codec.CodeNotGroupAdmin)
		return f.Command
	},
	"GROUP_REMOVE": func(t *testing.T, w *world) codec.Command {
		g := w.group(t, w.ub)
		var info pb.GroupInfo
		f := w.a.call(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: g, Users: []string{w.ub}}, codec.CmdGroupInfo, &info)
		if !slices.Equal(info.Members, []string{w.ua}) {
			t.Fatalf("after GROUP_REMOVE %v", &info)
		}
		// The removed member learns of it, and gets nothing more.
		groupEvent(t, pushed(t, w.b), g, "members_removed", w.ub)
		w.a.call(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: uniq("g"), GroupId: g, Body: []byte("x")}, codec.CmdSendAck, nil)
		var page pb.SyncOK
		w.b.call(codec.CmdSync, &pb.SyncRequest{}, codec.CmdSyncOK, &page)
		if len(page.Messages) != 2 { // its addition and its removal
			t.Fatalf("a removed member's inbox %v", &page)
		}
		return f.Command
	},
	"GROUP_TRANSFER": func(t *testing.T, w *world) codec.Command {
		g := w.group(t, w.ub)
		var info pb.GroupInfo
		f := w.a.call(codec.CmdGroupTransfer, &pb.GroupTransferRequest{GroupId: g, User: w.ub}, codec.CmdGroupInfo, &info)
		if info.Owner != w.ub || !slices.Equal(info.Admins, []string{w.ua}) {
			t.Fatalf("after GROUP_TRANSFER %v", &info)
		}
		groupEvent(t, pushed(t, w.b), g, "owner_changed", w.ub)
		w.a.fails(codec.CmdGroupTransfer, &pb.GroupTransferRequest{GroupId: g, User: w.ua}, codec.CodeNotGroupOwner)
		return f.Command
	},
	"GROUP_ADMIN": func(t *testing.T, w *world) codec.Command {
		g := w.group(t, w.ub)
		var info pb.GroupInfo
		f := w.a.call(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: g, User: w.ub, Admin: true}, codec.CmdGroupInfo, &info)
		if !slices.Equal(info.Admins, []string{w.ub}) {
			t.Fatalf("after GROUP_ADMIN %v", &info)
		}
		groupEvent(t, pushed(t, w.b), g, "admin_added", w.ub)
		w.a.call(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: g, User: w.ub}, codec.CmdGroupInfo, &info)
		if len(info.Admins) != 0 {
			t.Fatalf("after GROUP_ADMIN admin=false %v", &info)
		}
		return f.Command
	},
	"GROUPS": func(t *testing.T, w *world) codec.Command {
		g1, g2 := w.group(t, w.ub), w.openGroup(t)
		var page pb.GroupsOK
		f := w.a.call(codec.CmdGroups, &pb.GroupsRequest{Limit: 1}, codec.CmdGroupsOK, &page)
		if len(page.Groups) != 1 || !page.HasMore {
			t.Fatalf("first GROUPS_OK %v", &page)
		}
		first := page.Groups[0]
		w.a.call(codec.CmdGroups, &pb.GroupsRequest{After: first.GroupId}, codec.CmdGroupsOK, &page)
		if len(page.Groups) != 1 || page.HasMore || page.Groups[0].GroupId <= first.GroupId {
			t.Fatalf("second GROUPS_OK %v", &page)
		}
		byID := map[string]*pb.GroupSummary{first.GroupId: first, page.Groups[0].GroupId: page.Groups[0]}
		if s := byID[g1]; s == nil || s.Owner != w.ua || s.Size != 2 || s.Open || s.Admin {
			t.Fatalf("summary %v", s)
		}
		if s := byID[g2]; s == nil || s.Size != 1 || !s.Open {
			t.Fatalf("summary %v", s)
		}
		w.b.call(codec.CmdGroups, &pb.GroupsRequest{}, codec.CmdGroupsOK, &page)
		if len(page.Groups) != 1 || page.Groups[0].GroupId != g1 {
			t.Fatalf("the member's GROUPS_OK %v", &page)
		}
		return f.Command
	},
	"GROUP_MEMBERS": func(t *testing.T, w *world) codec.Command {
		g := w.group(t)
		var info pb.GroupInfo
		f := w.a.call(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: g}, codec.CmdGroupInfo, &info)
		if info.GroupId != g || !slices.Equal(info.Members, []string{w.ua}) {
			t.Fatalf("GROUP_INFO %v", &info)
		}
		w.b.fails(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: g}, codec.CodeNotGroupMember)
		return f.Command
	},
	"GROUP_SEND": func(t *testing.T, w *world) codec.Command {
		g := w.group(t, w.ub)
		var ack pb.SendAck
		f := w.a.call(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: uniq("g"), GroupId: g, Body: []byte("all")}, codec.CmdSendAck, &ack)
		m := pushed(t, w.b)
		if m.GroupId != g || m.To != g || m.From != w.ua || m.MsgId != ack.MsgId || string(m.Body) != "all" || m.Seq != 2 { // after its addition
			t.Fatalf("group PUSH %v (ack %v)", m, &ack)
		}
		return f.Command
	},
	"PRESENCE": func(t *testing.T, w *world) codec.Command {
		var p pb.PresenceOK
		ghost := uniq("ghost")
		f := w.a.call(codec.CmdPresence, &pb.PresenceRequest{Users: []string{w.ub, ghost, w.ua}}, codec.CmdPresenceOK, &p)
		if len(p.Users) != 3 || p.Users[0].User != w.ub || !p.Users[0].Online || !slices.Equal(p.Users[0].Devices, []string{"d"}) ||
			p.Users[1].User != ghost || p.Users[1].Online || !p.Users[1].Unknown || p.Users[2].User != w.ua {
			t.Fatalf("PRESENCE_OK %v", &p)
		}
		w.a.call(codec.CmdPresence, &pb.PresenceRequest{}, codec.CmdPresenceOK, &p)
		if len(p.Users) != 0 {
			t.Fatalf("empty PRESENCE: %v", &p)
		}
		return f.Command
	},
	"PUSH": func(t *testing.T, w *world) codec.Command {
		w.a.call(codec.CmdSend, &pb.SendRequest{ClientMsgId: uniq("c"), To: w.ub}, codec.CmdSendAck, nil)
		f := w.b.next(codec.CmdPush)
		return f.Command
	},
	"KICK": func(t *testing.T, w *world) codec.Command {
		dial(t, sharedNode, w.ser).login(w.ub, "d")
		f := w.b.next(codec.CmdKick)
		var k pb.Kick
		decode(t, f, &k)
		if codec.ErrorCode(k.Code) != codec.CodeKickDuplicateLogin || k.Reason == "" {
			t.Fatalf("KICK %v", &k)
		}
		w.b.closed()
		return f.Command
	},
	"GO_AWAY": func(t *testing.T, w *world) codec.Command {
		sharedNode.post(t, "/admin/rebalance?fraction=1", "")
		f := w.a.next(codec.CmdGoAway)
		var g pb.GoAway
		decode(t, f, &g)
		if g.Reason != "rebalance" || g.NodeId != "conf" {
			t.Fatalf("GO_AWAY %v", &g)
		}
		return f.Command
	},
	"NOTICE": func(t *testing.T, w *world) codec.Command {
		text := uniq("notice ")
		sharedNode.post(t, "/admin/broadcast", fmt.Sprintf(`{"text":%q}`, text))
		for {
			f := w.a.next(codec.CmdNotice)
			var n pb.Notice
			decode(t, f, &n)
			if n.Text == text && n.Time > 0 {
				return f.Command
			}
		}
	},
	"ERROR": func(t *testing.T, w *world) codec.Command {
		f := w.a.reply(w.a.send(0x66, nil))
		e := errorOf(t, f)
		if codec.ErrorCode(e.Code) != codec.CodeUnknownCommand || e.Message == "" {
			t.Fatalf("ERROR %v", e)
		}
		return f.Command
	},
}

// group creates an invite-only group of w.ua with members (none, or w.ub)
// and returns its id, once both have been pushed the event announcing w.ub
// as a member.
func (w *world) group(t *testing.T, members ...string) string {
	t.Helper()
	var g pb.GroupInfo
	w.a.call(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "g", Members: members}, codec.CmdGroupInfo, &g)
	if slices.Contains(members, w.ub) {
		for _, c := range []*conn{w.a, w.b} {
			groupEvent(t, pushed(t, c), g.GroupId, "members_added", w.ub)
		}
	}
	return g.GroupId
}

// openGroup creates an open group of w.ua and returns its id.
func (w *world) openGroup(t *testing.T) string {
	t.Helper()
	var g pb.GroupInfo
	w.a.call(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "g", Open: true}, codec.CmdGroupInfo, &g)
	return g.GroupId
}

// groupEvent fails t unless m is the membership event typ of group g
// naming users.
func groupEvent(t *testing.T, m *pb.Message, g, typ string, users ...string) {
	t.Helper()
	ev, err := codec.ParseGroupEvent(m.Body)
	if m.From != "" || m.GroupId != g || m.Kind != codec.KindGroupEvent || err != nil || ev.Type != typ || !slices.Equal(ev.Users, users) {
		t.Fatalf("%v (%+v, %v): want the event %s of %v in %s", m, ev, err, typ, users, g)
	}
}

// firstWord is the first word of a table cell, without punctuation.
func firstWord(cell string) string {
	return strings.TrimRight(strings.Fields(cell)[0], ",;")
}

// TestEveryCommand runs every command of the §4.1 table in each
// serializer: a request gets the reply the table names, a frame the server
// sends on its own arrives with seq 0, and every reply of the table is the
// reply of some request.
func TestEveryCommand(t *testing.T) {
	rows := commandTable(t)
	replies := map[string]bool{}
	for _, r := range rows {
		if strings.HasPrefix(r.direction, "C→S") {
			replies[firstWord(r.reply)] = true
		}
	}
	for _, r := range rows {
		if r.reply == "—" {
			// A reply: covered by its request's scenario.
			if !replies[r.name] {
				t.Errorf("§4.1: %s is no request's reply", r.name)
			}
			continue
		}
		scenario := commandScenarios[r.name]
		if scenario == nil {
			t.Errorf("§4.1: no scenario for %s", r.name)
			continue
		}
		want := codec.Command(0)
		switch first := firstWord(r.reply); {
		case strings.HasPrefix(r.direction, "S→C"):
			want = r.code // the frame itself
		case first == "none":
			want = 0
		default:
			want = commandByName(t, first)
		}
		for _, ser := range serializers {
			t.Run(r.name+"/"+ser.String(), func(t *testing.T) {
				w := newWorld(t, ser)
				if got := scenario(t, w); got != want {
					t.Fatalf("%s in %s: answered by %s, §4.1 says %s", r.name, ser, got, want)
				}
			})
		}
	}
}
