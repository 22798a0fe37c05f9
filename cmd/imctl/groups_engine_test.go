package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestGroupCommands drives imctl group add/remove/admin/transfer and imctl
// groups against a real node.
func TestGroupCommands(t *testing.T) {
	addr := startEngine(t)
	alice, bob, carol := userEnv(t, addr, "alice"), userEnv(t, addr, "bob"), userEnv(t, addr, "carol")
	for _, env := range []map[string]string{bob, carol} { // accounts exist once they logged in
		if r := invoke(t, env, "", "groups"); r.code != exitOK {
			t.Fatalf("groups: %+v", r)
		}
	}
	type info struct {
		GroupID string   `json:"group_id"`
		Owner   string   `json:"owner"`
		Members []string `json:"members"`
		Admins  []string `json:"admins"`
		Open    bool     `json:"open"`
	}
	group := func(env map[string]string, args ...string) info {
		t.Helper()
		r := invoke(t, env, "", append(append([]string{"group"}, args...), "--json")...)
		var gi info
		if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &gi) != nil {
			t.Fatalf("group %v: %+v", args, r)
		}
		return gi
	}
	g := group(alice, "create", "--name", "team", "--members", "bob")
	if g.Open || g.Owner != "alice" {
		t.Fatalf("created %+v", g)
	}
	if r := invoke(t, carol, "", "group", "join", "--group", g.GroupID); r.code == exitOK || !strings.Contains(r.stderr, "GROUP_INVITE_ONLY") {
		t.Fatalf("join of an invite-only group: %+v", r)
	}
	if r := invoke(t, bob, "", "group", "add", "--group", g.GroupID, "--members", "carol"); r.code == exitOK || !strings.Contains(r.stderr, "NOT_GROUP_ADMIN") {
		t.Fatalf("add by a member: %+v", r)
	}
	if g = group(alice, "admin", "--group", g.GroupID, "--member", "bob"); !slices.Equal(g.Admins, []string{"bob"}) {
		t.Fatalf("admin: %+v", g)
	}
	if g = group(bob, "add", "--group", g.GroupID, "--members", "carol"); !slices.Equal(g.Members, []string{"alice", "bob", "carol"}) {
		t.Fatalf("add: %+v", g)
	}
	if g = group(alice, "unadmin", "--group", g.GroupID, "--member", "bob"); len(g.Admins) != 0 {
		t.Fatalf("unadmin: %+v", g)
	}
	if g = group(alice, "transfer", "--group", g.GroupID, "--member", "carol"); g.Owner != "carol" || !slices.Equal(g.Admins, []string{"alice"}) {
		t.Fatalf("transfer: %+v", g)
	}
	if g = group(carol, "remove", "--group", g.GroupID, "--members", "bob"); !slices.Equal(g.Members, []string{"alice", "carol"}) {
		t.Fatalf("remove: %+v", g)
	}
	r := invoke(t, carol, "", "groups")
	if r.code != exitOK || !strings.Contains(r.stdout, "#"+g.GroupID) || !strings.Contains(r.stdout, "you: owner") {
		t.Fatalf("groups: %+v", r)
	}
	r = invoke(t, alice, "", "groups", "--json")
	var page struct {
		HasMore bool `json:"has_more"`
		Groups  []struct {
			GroupID string `json:"group_id"`
			Admin   bool   `json:"admin"`
			Size    uint32 `json:"size"`
		} `json:"groups"`
	}
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &page) != nil || len(page.Groups) != 1 || !page.Groups[0].Admin || page.Groups[0].Size != 2 {
		t.Fatalf("groups --json: %+v", r)
	}
	if r := invoke(t, bob, "", "group", "admin", "--group", g.GroupID); r.code != exitUsage {
		t.Fatalf("admin without --member: %+v", r)
	}
}
