package engine

import (
	"slices"
	"testing"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// wantGroupEvent fails t unless m is the membership event typ about user,
// made by by, in group.
func wantGroupEvent(t *testing.T, m *pb.Message, group, typ, user, by string) {
	t.Helper()
	wantGroupEventOf(t, m, group, typ, []string{user}, by)
}

// wantGroupEventOf is wantGroupEvent about users.
func wantGroupEventOf(t *testing.T, m *pb.Message, group, typ string, users []string, by string) {
	t.Helper()
	if m.From != "" || m.GroupId != group || m.Kind != codec.KindGroupEvent {
		t.Fatalf("%v is not a membership event of %s", m, group)
	}
	ev, err := codec.ParseGroupEvent(m.Body)
	if err != nil || ev.Type != typ || !slices.Equal(ev.Users, users) || ev.By != by {
		t.Fatalf("event %q (%v), want %s of %v by %q", m.Body, err, typ, users, by)
	}
}

// lastPush waits for the n-th push of c and returns it.
func lastPush(c *rawClient, n int) *pb.Message { return c.waitPushes(n)[n-1] }

// TestGroupAccessControl walks every group command and refusal of
// docs/protocol.md §4.5 in each serializer.
func TestGroupAccessControl(t *testing.T) {
	for _, ser := range []codec.SerializerID{codec.JSON, codec.Protobuf, codec.MsgPack} {
		t.Run(ser.String(), func(t *testing.T) { testGroupAccessControl(t, ser) })
	}
}

func testGroupAccessControl(t *testing.T, ser codec.SerializerID) {
	s := startServer(t, nil)
	cl := map[string]*rawClient{}
	for _, u := range []string{"alice", "bob", "carol", "dave", "eve"} {
		cl[u] = dial(t, s, ser)
		cl[u].login(u, "pc")
	}
	alice, bob, carol, dave, eve := cl["alice"], cl["bob"], cl["carol"], cl["dave"], cl["eve"]
	var g pb.GroupInfo
	alice.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team", Members: []string{"bob"}}, &g)
	id := g.GroupId
	if g.Open || g.Owner != "alice" || len(g.Admins) != 0 {
		t.Fatalf("created %v: want invite-only, owned by alice, no admins", &g)
	}
	// The initial members are announced as GROUP_ADD announces members.
	wantGroupEvent(t, lastPush(bob, 1), id, codec.GroupEventAdded, "bob", "alice")
	wantGroupEvent(t, lastPush(alice, 1), id, codec.GroupEventAdded, "bob", "alice")
	// Outsiders: no join, no member list, no changes.
	carol.wantError(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: id}, codec.CodeGroupInviteOnly)
	carol.wantError(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: id}, codec.CodeNotGroupMember)
	carol.wantError(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"carol"}}, codec.CodeNotGroupMember)
	var left pb.GroupInfo
	carol.mustCall(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: id}, &left)
	if left.GroupId != id || len(left.Members) != 0 {
		t.Fatalf("GROUP_LEAVE by an outsider answered %v: it must not show the members", &left)
	}
	// A plain member adds nobody.
	bob.wantError(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"carol"}}, codec.CodeNotGroupAdmin)
	bob.wantError(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "bob", Admin: true}, codec.CodeNotGroupOwner)
	bob.wantError(codec.CmdGroupTransfer, &pb.GroupTransferRequest{GroupId: id, User: "bob"}, codec.CodeNotGroupOwner)
	// The owner makes bob an admin; bob adds carol and dave.
	alice.mustCall(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "bob", Admin: true}, &g)
	if !slices.Equal(g.Admins, []string{"bob"}) {
		t.Fatalf("admins %v", g.Admins)
	}
	wantGroupEvent(t, lastPush(bob, 2), id, codec.GroupEventAdminAdded, "bob", "alice")
	alice.wantError(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "alice", Admin: true}, codec.CodeInvalidArgument)
	alice.wantError(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "carol", Admin: true}, codec.CodeNotGroupMember)
	bob.wantError(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"ghost"}}, codec.CodeUnknownRecipient)
	bob.wantError(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"bad id"}}, codec.CodeInvalidArgument)
	bob.wantError(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id}, codec.CodeInvalidArgument)
	bob.wantError(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: "gnope", Users: []string{"carol"}}, codec.CodeUnknownGroup)
	bob.mustCall(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"carol", "dave", "bob"}}, &g)
	if !slices.Equal(g.Members, []string{"alice", "bob", "carol", "dave"}) {
		t.Fatalf("members after GROUP_ADD %v", g.Members)
	}
	if p := lastPush(dave, 1); p.Kind != codec.KindGroupEvent {
		t.Fatalf("dave's first push %v, want the event of his addition", p)
	} else if ev, _ := codec.ParseGroupEvent(p.Body); ev.Type != codec.GroupEventAdded || !slices.Equal(ev.Users, []string{"carol", "dave"}) || ev.By != "bob" {
		t.Fatalf("addition event %+v", ev)
	}
	carol.mustCall(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: id}, &g) // a member's join is a no-op
	// An admin removes members, but not the owner or another admin.
	alice.mustCall(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "carol", Admin: true}, &g)
	bob.wantError(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: id, Users: []string{"carol"}}, codec.CodeNotGroupOwner)
	bob.wantError(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: id, Users: []string{"alice"}}, codec.CodeNotGroupOwner)
	bob.wantError(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: id, Users: []string{"bob"}}, codec.CodeInvalidArgument)
	dave.wantError(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: id, Users: []string{"bob"}}, codec.CodeNotGroupAdmin)
	// A removed member gets nothing more from the group, at once.
	alice.mustCall(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "m1", GroupId: id, Body: []byte("before")}, nil)
	bob.mustCall(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: id, Users: []string{"dave", "eve"}}, &g)
	if !slices.Equal(g.Members, []string{"alice", "bob", "carol"}) {
		t.Fatalf("members after GROUP_REMOVE %v", g.Members)
	}
	alice.mustCall(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "m2", GroupId: id, Body: []byte("after")}, nil)
	dave.wantError(codec.CmdGroupSend, &pb.GroupSendRequest{ClientMsgId: "d1", GroupId: id, Body: []byte("x")}, codec.CodeNotGroupMember)
	dave.wantError(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: id}, codec.CodeNotGroupMember)
	var sync pb.SyncOK
	dave.mustCall(codec.CmdSync, &pb.SyncRequest{}, &sync)
	var bodies []string
	for _, m := range sync.Messages {
		if m.Kind != codec.KindGroupEvent {
			bodies = append(bodies, string(m.Body))
		}
	}
	if !slices.Equal(bodies, []string{"before"}) {
		t.Fatalf("dave's messages %q: want only the one sent while a member", bodies)
	}
	wantGroupEvent(t, sync.Messages[len(sync.Messages)-1], id, codec.GroupEventRemoved, "dave", "bob")
	// Ownership: only to a member; the former owner stays an admin.
	alice.wantError(codec.CmdGroupTransfer, &pb.GroupTransferRequest{GroupId: id, User: "eve"}, codec.CodeNotGroupMember)
	alice.mustCall(codec.CmdGroupTransfer, &pb.GroupTransferRequest{GroupId: id, User: "bob"}, &g)
	if g.Owner != "bob" || !slices.Equal(g.Admins, []string{"alice", "carol"}) {
		t.Fatalf("after transfer owner %q admins %v", g.Owner, g.Admins)
	}
	// The owner leaving: the most senior admin (alice, a member from the
	// start) takes over.
	bob.mustCall(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: id}, &left)
	carol.mustCall(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: id}, &g)
	if g.Owner != "alice" || !slices.Equal(g.Members, []string{"alice", "carol"}) || !slices.Equal(g.Admins, []string{"carol"}) {
		t.Fatalf("after the owner left: %v", &g)
	}
	// GROUPS lists the caller's groups, paged.
	var other pb.GroupInfo
	carol.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "mine", Open: true}, &other)
	var gs pb.GroupsOK
	carol.mustCall(codec.CmdGroups, &pb.GroupsRequest{Limit: 1}, &gs)
	if len(gs.Groups) != 1 || !gs.HasMore {
		t.Fatalf("GROUPS limit 1: %v", &gs)
	}
	first := gs.Groups[0]
	carol.mustCall(codec.CmdGroups, &pb.GroupsRequest{After: first.GroupId}, &gs)
	if len(gs.Groups) != 1 || gs.HasMore || gs.Groups[0].GroupId == first.GroupId {
		t.Fatalf("GROUPS second page: %v", &gs)
	}
	byID := map[string]*pb.GroupSummary{first.GroupId: first, gs.Groups[0].GroupId: gs.Groups[0]}
	if sum := byID[id]; sum == nil || sum.Owner != "alice" || !sum.Admin || sum.Size != 2 || sum.Open || sum.Name != "team" {
		t.Fatalf("summary of the team %v", sum)
	}
	if sum := byID[other.GroupId]; sum == nil || sum.Owner != "carol" || sum.Admin || sum.Size != 1 || !sum.Open {
		t.Fatalf("summary of carol's own group %v", sum)
	}
	carol.wantError(codec.CmdGroups, &pb.GroupsRequest{After: "bad id"}, codec.CodeInvalidArgument)
	eve.mustCall(codec.CmdGroups, &pb.GroupsRequest{}, &gs)
	if len(gs.Groups) != 0 || gs.HasMore {
		t.Fatalf("eve's groups %v", &gs)
	}
	// Open groups take joins; the last member leaving dissolves a group.
	eve.mustCall(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: other.GroupId}, &g)
	eve.mustCall(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: other.GroupId}, nil)
	carol.mustCall(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: other.GroupId}, nil)
	carol.wantError(codec.CmdGroupMembers, &pb.GroupRequest{GroupId: other.GroupId}, codec.CodeUnknownGroup)
	eve.wantError(codec.CmdGroupJoin, &pb.GroupRequest{GroupId: other.GroupId}, codec.CodeUnknownGroup)
}

// TestGroupChangesRateLimited: group changes spend the send budget, so a
// member cannot flood a group with membership events.
func TestGroupChangesRateLimited(t *testing.T) {
	s := startServer(t, func(c *Config) { c.SendRate, c.SendBurst = 0.001, 3 })
	alice, bob := dial(t, s, codec.JSON), dial(t, s, codec.JSON)
	alice.login("alice", "pc")
	bob.login("bob", "pc")
	var g pb.GroupInfo
	alice.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Members: []string{"bob"}}, &g) // 1 of 3
	alice.mustCall(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: g.GroupId, User: "bob", Admin: true}, nil)
	alice.mustCall(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: g.GroupId, User: "bob"}, nil)
	e := alice.wantError(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: g.GroupId, User: "bob", Admin: true}, codec.CodeRateLimited)
	if !e.Retryable || e.RetryAfterMs == 0 {
		t.Fatalf("RATE_LIMITED %v: want retryable with a wait", e)
	}
	alice.wantError(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: g.GroupId}, codec.CodeRateLimited)
	// Malformed requests are refused before the budget is looked at.
	alice.wantError(codec.CmdGroupRemove, &pb.GroupMembersRequest{GroupId: g.GroupId, Users: []string{"alice"}}, codec.CodeInvalidArgument)
	// bob has his own budget.
	bob.mustCall(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: g.GroupId}, nil)
}

// TestObserverRoleChanges: the observer hears of admin and owner changes,
// a hand-off included, and not of changes that changed nothing.
func TestObserverRoleChanges(t *testing.T) {
	rec := &recorder{}
	s := startServer(t, func(c *Config) { c.Observer = rec })
	a, b := dial(t, s, codec.Protobuf), dial(t, s, codec.Protobuf)
	a.login("alice", "pc")
	b.login("bob", "pc")
	var g pb.GroupInfo
	a.mustCall(codec.CmdGroupCreate, &pb.GroupCreateRequest{Members: []string{"bob"}}, &g)
	a.mustCall(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: g.GroupId, User: "bob", Admin: true}, nil)
	a.mustCall(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: g.GroupId, User: "bob", Admin: true}, nil) // no change
	a.mustCall(codec.CmdGroupTransfer, &pb.GroupTransferRequest{GroupId: g.GroupId, User: "bob"}, nil)
	b.mustCall(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: g.GroupId}, nil)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var got []string
	for _, ch := range rec.groups {
		got = append(got, string(ch.Kind)+" "+ch.User+" by "+ch.By)
	}
	want := []string{"group.created alice by alice", "group.admin_added bob by alice", "group.owner_changed bob by alice",
		"group.member_removed bob by bob", "group.owner_changed alice by "}
	if !slices.Equal(got, want) {
		t.Fatalf("changes %q, want %q", got, want)
	}
}
