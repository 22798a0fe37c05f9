package engine

import (
	"errors"
	"slices"
	"testing"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/codec"
)

// TestClientGroupsEverySerializer drives the client library's group calls
// against the engine: invite-only creation, admins, adds, the events on
// Messages, GROUPS, transfer, removal and open groups.
func TestClientGroupsEverySerializer(t *testing.T) {
	s := startServer(t, nil)
	for _, ser := range serializers {
		t.Run(ser.String(), func(t *testing.T) {
			ctx := t.Context()
			n := func(u string) string { return u + "-" + ser.String() }
			alice := dialClient(t, s, n("alice"), "pc", ser)
			bob := dialClient(t, s, n("bob"), "pc", ser)
			carol := dialClient(t, s, n("carol"), "pc", ser)
			g, err := alice.CreateGroup(ctx, "team", n("bob"))
			if err != nil || g.Open {
				t.Fatalf("create %v %v", g, err)
			}
			id := g.GroupId
			var ce *client.Error
			if _, err := carol.JoinGroup(ctx, id); !errors.As(err, &ce) || ce.Code != codec.CodeGroupInviteOnly {
				t.Fatalf("join of an invite-only group: %v", err)
			}
			if _, err := bob.AddGroupMembers(ctx, id, n("carol")); !errors.As(err, &ce) || ce.Code != codec.CodeNotGroupAdmin {
				t.Fatalf("add by a plain member: %v", err)
			}
			if g, err = alice.SetGroupAdmin(ctx, id, n("bob"), true); err != nil || !slices.Equal(g.Admins, []string{n("bob")}) {
				t.Fatalf("set admin %v %v", g, err)
			}
			if g, err = bob.AddGroupMembers(ctx, id, n("carol")); err != nil || len(g.Members) != 3 {
				t.Fatalf("add %v %v", g, err)
			}
			// Messages carries the events: the creation's addition of bob,
			// the admin change, then the add (carol sees only her addition).
			for _, c := range []*client.Client{alice, bob} {
				wantGroupEvent(t, receive(t, c, 1)[0], id, codec.GroupEventAdded, n("bob"), n("alice"))
			}
			for _, c := range []*client.Client{alice, bob} {
				wantGroupEvent(t, receive(t, c, 1)[0], id, codec.GroupEventAdminAdded, n("bob"), n("alice"))
			}
			for _, c := range []*client.Client{alice, bob, carol} {
				wantGroupEvent(t, receive(t, c, 1)[0], id, codec.GroupEventAdded, n("carol"), n("bob"))
			}
			gs, more, err := carol.Groups(ctx, "", 0)
			if err != nil || more || len(gs) != 1 || gs[0].GroupId != id || gs[0].Owner != n("alice") || gs[0].Size != 3 || gs[0].Admin {
				t.Fatalf("carol's groups %v %v %v", gs, more, err)
			}
			if g, err = alice.TransferGroup(ctx, id, n("carol")); err != nil || g.Owner != n("carol") {
				t.Fatalf("transfer %v %v", g, err)
			}
			if g, err = carol.RemoveGroupMembers(ctx, id, n("alice"), n("bob")); err != nil || !slices.Equal(g.Members, []string{n("carol")}) {
				t.Fatalf("remove %v %v", g, err)
			}
			if _, err := bob.SendGroup(ctx, id, []byte("x")); !errors.As(err, &ce) || ce.Code != codec.CodeNotGroupMember {
				t.Fatalf("send after removal: %v", err)
			}
			open, err := carol.CreateOpenGroup(ctx, "open")
			if err != nil || !open.Open {
				t.Fatalf("open group %v %v", open, err)
			}
			if g, err = bob.JoinGroup(ctx, open.GroupId); err != nil || len(g.Members) != 2 {
				t.Fatalf("join of an open group %v %v", g, err)
			}
			if g, err = bob.LeaveGroup(ctx, open.GroupId); err != nil || len(g.Members) != 0 {
				t.Fatalf("leave %v %v", g, err)
			}
		})
	}
}
