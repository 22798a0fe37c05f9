package engine

import (
	"context"
	"testing"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// groupConv returns u's conversation of group id as CONVERSATIONS lists it.
func (u *unitClient) groupConv(id string) *pb.Conversation {
	u.t.Helper()
	var out pb.ConversationsOK
	u.ok(codec.CmdConversations, &pb.ConversationsRequest{}, codec.CmdConversationsOK, &out)
	for _, cv := range out.Conversations {
		if cv.GroupId == id {
			return cv
		}
	}
	u.t.Fatalf("%s has no conversation of %s: %v", u.c.user, id, &out)
	return nil
}

// wantUnread fails unless each client's conversation of group id has the
// given unread count, and the read cursor at the newest entry when 0.
func wantUnread(t *testing.T, id string, want map[*unitClient]uint32) {
	t.Helper()
	for u, n := range want {
		cv := u.groupConv(id)
		if cv.Unread != n || (n == 0 && cv.ReadSeq != cv.LastSeq) {
			t.Fatalf("%s's conversation of %s: unread %d read_seq %d last_seq %d, want unread %d",
				u.c.user, id, cv.Unread, cv.ReadSeq, cv.LastSeq, n)
		}
	}
}

// TestUnitOwnGroupEventsAreRead: a membership event has no sender, so the
// member who made the change has their read cursor raised to it; the
// other members count it as unread. A change by an operator is nobody's
// own.
func TestUnitOwnGroupEventsAreRead(t *testing.T) {
	fe := newUnit(t, nil)
	alice, bob, carol := online(t, fe, "alice"), online(t, fe, "bob"), online(t, fe, "carol")
	var g pb.GroupInfo
	alice.ok(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team", Members: []string{"bob"}}, codec.CmdGroupInfo, &g)
	id := g.GroupId
	wantUnread(t, id, map[*unitClient]uint32{alice: 0, bob: 1}) // the creation's members_added

	alice.ok(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"carol"}}, codec.CmdGroupInfo, nil)
	wantUnread(t, id, map[*unitClient]uint32{alice: 0, bob: 2, carol: 1})

	// Leaving raises the leaver's cursor over what it had not read.
	carol.ok(codec.CmdGroupLeave, &pb.GroupRequest{GroupId: id}, codec.CmdGroupInfo, nil)
	wantUnread(t, id, map[*unitClient]uint32{alice: 1, bob: 3, carol: 0})

	// A user's own message and own event are alike: bob's admin change
	// by alice is unread for bob, bob's own add is not.
	alice.ok(codec.CmdGroupAdmin, &pb.GroupAdminRequest{GroupId: id, User: "bob", Admin: true}, codec.CmdGroupInfo, nil)
	bob.ok(codec.CmdGroupAdd, &pb.GroupMembersRequest{GroupId: id, Users: []string{"carol"}}, codec.CmdGroupInfo, nil)
	wantUnread(t, id, map[*unitClient]uint32{alice: 1, bob: 0, carol: 1})

	// An operator's change (server API) is unread for every member.
	if _, err := fe.s.RemoveGroupMember(context.Background(), id, "carol"); err != nil {
		t.Fatal(err)
	}
	wantUnread(t, id, map[*unitClient]uint32{alice: 2, bob: 1, carol: 2})
}

// TestUnitGroupCreateAnnouncesItsMembers: the members a group is created
// with are announced as GROUP_ADD announces members, by the creator (by
// nobody when an operator creates it), first in each member's timeline;
// a group created alone announces nothing.
func TestUnitGroupCreateAnnouncesItsMembers(t *testing.T) {
	fe := newUnit(t, nil)
	alice, bob, carol := online(t, fe, "alice"), online(t, fe, "bob"), online(t, fe, "carol")
	var g pb.GroupInfo
	alice.ok(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "team", Members: []string{"carol", "bob", "alice"}}, codec.CmdGroupInfo, &g)
	for _, u := range []*unitClient{alice, bob, carol} {
		var h pb.HistoryOK
		u.ok(codec.CmdHistory, &pb.HistoryRequest{GroupId: g.GroupId}, codec.CmdHistoryOK, &h)
		if len(h.Messages) != 1 {
			t.Fatalf("%s's history of the new group: %v", u.c.user, &h)
		}
		wantGroupEventOf(t, h.Messages[0], g.GroupId, codec.GroupEventAdded, []string{"bob", "carol"}, "alice")
		var pushes []*pb.Message
		for _, f := range u.drain() {
			var p pb.Push
			decodeAs(t, f, codec.CmdPush, &p)
			pushes = append(pushes, p.Messages...)
		}
		if len(pushes) != 1 || pushes[0].MsgId != h.Messages[0].MsgId {
			t.Fatalf("%s was pushed %v, want the event", u.c.user, pushes)
		}
	}

	// An operator's group: the owner did not make the change.
	og, err := fe.s.CreateGroup(context.Background(), "alice", "ops", []string{"bob"}, false)
	if err != nil {
		t.Fatal(err)
	}
	var h pb.HistoryOK
	bob.ok(codec.CmdHistory, &pb.HistoryRequest{GroupId: og.ID}, codec.CmdHistoryOK, &h)
	if len(h.Messages) != 1 {
		t.Fatalf("bob's history of the operator's group: %v", &h)
	}
	wantGroupEventOf(t, h.Messages[0], og.ID, codec.GroupEventAdded, []string{"bob"}, "")
	wantUnread(t, og.ID, map[*unitClient]uint32{alice: 1, bob: 1})

	// Alone: nothing to announce, no conversation yet.
	alice.ok(codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: "solo"}, codec.CmdGroupInfo, &g)
	var h2 pb.HistoryOK
	alice.ok(codec.CmdHistory, &pb.HistoryRequest{GroupId: g.GroupId}, codec.CmdHistoryOK, &h2)
	if len(h2.Messages) != 0 {
		t.Fatalf("a group created alone has history %v", &h2)
	}
}
