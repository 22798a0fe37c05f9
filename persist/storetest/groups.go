package storetest

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/imgn/imgn/persist"
)

// groupTests are the cases of group access control (docs/protocol.md
// §4.5): roles, join order, atomic updates, dissolution and the per-user
// list.
var groupTests = []struct {
	name string
	fn   func(t *testing.T, s persist.Store)
}{
	{"GroupRoles", testGroupRoles},
	{"GroupUpdate", testGroupUpdate},
	{"GroupOwnerLeaves", testGroupOwnerLeaves},
	{"GroupDissolves", testGroupDissolves},
	{"GroupUpdateAtomic", testGroupUpdateAtomic},
	{"UserGroups", testUserGroups},
}

func update(t *testing.T, s persist.Store, id string, fn func(g *persist.Group) error) persist.Group {
	t.Helper()
	g, err := s.UpdateGroup(t.Context(), id, fn)
	if err != nil {
		t.Fatalf("UpdateGroup(%s): %v", id, err)
	}
	return g
}

// sameGroup fails t unless got has the members, owner and admins given.
func sameGroup(t *testing.T, what string, got persist.Group, owner string, members, admins []string) {
	t.Helper()
	if got.Owner != owner || !slices.Equal(got.Members, members) || !slices.Equal(got.Admins, admins) ||
		len(got.Joined) != len(got.Members) {
		t.Fatalf("%s: owner %q members %v admins %v joined %v; want owner %q members %v admins %v",
			what, got.Owner, got.Members, got.Admins, got.Joined, owner, members, admins)
	}
}

func testGroupRoles(t *testing.T, s persist.Store) {
	ctx := t.Context()
	err := s.CreateGroup(ctx, persist.Group{ID: "g1", Name: "team", Owner: "alice",
		Members: []string{"dave", "alice", "bob", "carol"}, Admins: []string{"carol", "alice", "bob", "zed"}, Created: 7})
	if err != nil {
		t.Fatal(err)
	}
	g := getGroup(t, s, "g1")
	// The owner is no admin, and neither is a non-member.
	sameGroup(t, "created", g, "alice", []string{"alice", "bob", "carol", "dave"}, []string{"bob", "carol"})
	if g.Open || g.Name != "team" || g.Created != 7 {
		t.Fatalf("created %+v: want invite-only, name team, created 7", g)
	}
	for i, j := range g.Joined {
		if j != g.Joined[0] {
			t.Fatalf("initial members joined at different times: %v (member %d)", g.Joined, i)
		}
	}
	if err := s.CreateGroup(ctx, persist.Group{ID: "g2", Owner: "alice", Members: []string{"alice"}, Open: true}); err != nil {
		t.Fatal(err)
	}
	if g := getGroup(t, s, "g2"); !g.Open {
		t.Fatalf("open group reads as invite-only: %+v", g)
	}
	// A creator that is not a member: the most senior member owns it.
	if err := s.CreateGroup(ctx, persist.Group{ID: "g3", Owner: "zed", Members: []string{"bob", "amy"}}); err != nil {
		t.Fatal(err)
	}
	sameGroup(t, "owner not a member", getGroup(t, s, "g3"), "amy", []string{"amy", "bob"}, nil)
}

func testGroupUpdate(t *testing.T, s persist.Store) {
	ctx := t.Context()
	if err := s.CreateGroup(ctx, persist.Group{ID: "g", Name: "n", Owner: "alice", Members: []string{"alice", "bob"}}); err != nil {
		t.Fatal(err)
	}
	g := update(t, s, "g", func(g *persist.Group) error {
		g.Add("carol")
		g.SetAdmin("bob", true)
		g.Name = "renamed"
		return nil
	})
	sameGroup(t, "after add", g, "alice", []string{"alice", "bob", "carol"}, []string{"bob"})
	got := getGroup(t, s, "g")
	sameGroup(t, "stored after add", got, "alice", []string{"alice", "bob", "carol"}, []string{"bob"})
	if got.Name != "renamed" || got.Joined[2] <= got.Joined[1] {
		t.Fatalf("stored %+v: want the name renamed and carol junior to bob", got)
	}
	// An error from fn stores nothing and comes back.
	boom := errors.New("boom")
	_, err := s.UpdateGroup(ctx, "g", func(g *persist.Group) error {
		g.Remove("bob")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("UpdateGroup with a failing fn: %v, want boom", err)
	}
	sameGroup(t, "after a failed update", getGroup(t, s, "g"), "alice", []string{"alice", "bob", "carol"}, []string{"bob"})
	// ErrUnchanged: the current state, nothing written.
	g, err = s.UpdateGroup(ctx, "g", func(g *persist.Group) error {
		g.Remove("carol")
		return persist.ErrUnchanged
	})
	if err != nil {
		t.Fatalf("UpdateGroup returning ErrUnchanged: %v", err)
	}
	sameGroup(t, "ErrUnchanged", g, "alice", []string{"alice", "bob", "carol"}, []string{"bob"})
	// A later join is junior to everyone, also after a removal.
	update(t, s, "g", func(g *persist.Group) error { g.Remove("carol"); return nil })
	g = update(t, s, "g", func(g *persist.Group) error { g.Add("aaron"); return nil })
	if i, _ := slices.BinarySearch(g.Members, "aaron"); g.Joined[i] <= slices.Max(slices.Delete(slices.Clone(g.Joined), i, i+1)) {
		t.Fatalf("aaron joined last but has join numbers %v of %v", g.Joined, g.Members)
	}
	// AddMember and RemoveMember keep roles consistent.
	if err := s.RemoveMember(ctx, "g", "bob"); err != nil {
		t.Fatal(err)
	}
	sameGroup(t, "admin removed", getGroup(t, s, "g"), "alice", []string{"aaron", "alice"}, nil)
	_, err = s.UpdateGroup(ctx, "nope", func(*persist.Group) error { return nil })
	wantErr(t, "UpdateGroup of an unknown group", err, persist.ErrNotFound)
	_, err = s.UpdateGroup(ctx, "g", func(g *persist.Group) error { g.Add(""); return nil })
	wantErr(t, "UpdateGroup adding an invalid id", err, persist.ErrInvalid)
}

func testGroupOwnerLeaves(t *testing.T, s persist.Store) {
	ctx := t.Context()
	if err := s.CreateGroup(ctx, persist.Group{ID: "g", Owner: "alice", Members: []string{"alice", "bob", "carol"}}); err != nil {
		t.Fatal(err)
	}
	update(t, s, "g", func(g *persist.Group) error { g.Add("dave"); g.SetAdmin("dave", true); return nil })
	// The admin, though junior, takes over from the owner.
	g := update(t, s, "g", func(g *persist.Group) error { g.Remove("alice"); return nil })
	sameGroup(t, "owner left", g, "dave", []string{"bob", "carol", "dave"}, nil)
	sameGroup(t, "stored", getGroup(t, s, "g"), "dave", []string{"bob", "carol", "dave"}, nil)
	// No admin: the most senior member (bob and carol joined together:
	// the lower id).
	if err := s.RemoveMember(ctx, "g", "dave"); err != nil {
		t.Fatal(err)
	}
	sameGroup(t, "second owner left", getGroup(t, s, "g"), "bob", []string{"bob", "carol"}, nil)
	// Seniority beats the id.
	update(t, s, "g", func(g *persist.Group) error { g.Add("aaron"); return nil })
	update(t, s, "g", func(g *persist.Group) error { g.Remove("carol"); return nil })
	g = update(t, s, "g", func(g *persist.Group) error { g.Add("abe"); g.Remove("bob"); return nil })
	sameGroup(t, "senior member takes over", g, "aaron", []string{"aaron", "abe"}, nil)
}

func testGroupDissolves(t *testing.T, s persist.Store) {
	ctx := t.Context()
	if err := s.CreateGroup(ctx, persist.Group{ID: "g", Owner: "alice", Members: []string{"alice", "bob"}}); err != nil {
		t.Fatal(err)
	}
	update(t, s, "g", func(g *persist.Group) error { g.Remove("alice"); return nil })
	g := update(t, s, "g", func(g *persist.Group) error { g.Remove("bob"); return nil })
	if len(g.Members) != 0 || g.Owner != "" {
		t.Fatalf("last member left: %+v, want no members and no owner", g)
	}
	_, err := s.GetGroup(ctx, "g")
	wantErr(t, "GetGroup of a dissolved group", err, persist.ErrNotFound)
	if gs, err := s.UserGroups(ctx, "bob", "", 10); err != nil || len(gs) != 0 {
		t.Fatalf("UserGroups(bob) after dissolution = %v, %v", gs, err)
	}
	// The id may be taken again.
	if err := s.CreateGroup(ctx, persist.Group{ID: "g", Owner: "carol", Members: []string{"carol"}}); err != nil {
		t.Fatalf("CreateGroup of a dissolved group's id: %v", err)
	}
	sameGroup(t, "recreated", getGroup(t, s, "g"), "carol", []string{"carol"}, nil)
}

// testGroupUpdateAtomic: concurrent read-check-write updates (some
// checking a role another one takes away) lose nothing.
func testGroupUpdateAtomic(t *testing.T, s persist.Store) {
	ctx := t.Context()
	if err := s.CreateGroup(ctx, persist.Group{ID: "g", Name: "0", Owner: "owner", Members: []string{"owner", "admin"}, Admins: []string{"admin"}}); err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, 2*n+1)
	for i := range n {
		wg.Go(func() {
			_, err := s.UpdateGroup(ctx, "g", func(g *persist.Group) error {
				c, err := strconv.Atoi(g.Name)
				if err != nil {
					return err
				}
				g.Name = strconv.Itoa(c + 1)
				g.Add(fmt.Sprintf("u%02d", i))
				return nil
			})
			errs <- err
		})
		// Removals that check the remover's role race the owner taking
		// the role away.
		wg.Go(func() {
			_, err := s.UpdateGroup(ctx, "g", func(g *persist.Group) error {
				if !g.IsAdmin("admin") {
					return persist.ErrUnchanged
				}
				g.Remove(fmt.Sprintf("u%02d", i))
				return nil
			})
			errs <- err
		})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := s.UpdateGroup(ctx, "g", func(g *persist.Group) error { g.SetAdmin("admin", false); return nil })
		errs <- err
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	g := getGroup(t, s, "g")
	if g.Name != strconv.Itoa(n) {
		t.Fatalf("after %d concurrent increments the name is %q: an update was lost", n, g.Name)
	}
	if g.IsAdmin("admin") || !g.IsMember("owner") || !g.IsMember("admin") {
		t.Fatalf("final group %+v", g)
	}
}

func testUserGroups(t *testing.T, s persist.Store) {
	ctx := t.Context()
	for _, id := range []string{"g5", "g1", "g3", "g2", "g4"} {
		if err := s.CreateGroup(ctx, persist.Group{ID: id, Name: "name-" + id, Owner: "alice", Members: []string{"alice", "bob"}, Admins: []string{"bob"}, Open: id == "g3"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateGroup(ctx, persist.Group{ID: "other", Owner: "carol", Members: []string{"carol"}}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	after := ""
	for page := 0; page < 5; page++ {
		gs, err := s.UserGroups(ctx, "bob", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(gs) > 2 {
			t.Fatalf("UserGroups with limit 2 returned %d", len(gs))
		}
		for _, g := range gs {
			ids = append(ids, g.ID)
			if g.Name != "name-"+g.ID || g.Owner != "alice" || g.Size != 2 || !slices.Equal(g.Admins, []string{"bob"}) || g.Open != (g.ID == "g3") {
				t.Fatalf("summary %+v", g)
			}
		}
		if len(gs) < 2 {
			break
		}
		after = gs[len(gs)-1].ID
	}
	if want := []string{"g1", "g2", "g3", "g4", "g5"}; !slices.Equal(ids, want) {
		t.Fatalf("bob's groups, paged by 2: %v, want %v", ids, want)
	}
	update(t, s, "g2", func(g *persist.Group) error { g.Remove("bob"); return nil })
	update(t, s, "other", func(g *persist.Group) error { g.Add("bob"); return nil })
	gs, err := s.UserGroups(ctx, "bob", "g1", 100)
	if err != nil {
		t.Fatal(err)
	}
	ids = ids[:0]
	for _, g := range gs {
		ids = append(ids, g.ID)
	}
	if want := []string{"g3", "g4", "g5", "other"}; !slices.Equal(ids, want) {
		t.Fatalf("bob's groups after g1, after leaving g2 and joining other: %v, want %v", ids, want)
	}
	if gs, err := s.UserGroups(ctx, "nobody", "", 10); err != nil || len(gs) != 0 {
		t.Fatalf("UserGroups(nobody) = %v, %v", gs, err)
	}
	_, err = s.UserGroups(ctx, "bob", "", 0)
	wantErr(t, "UserGroups with limit 0", err, persist.ErrInvalid)
}

// benchGroupUpdate: one UpdateGroup (an admin role toggled) per op on a
// group of members members: the cost of a checked membership change.
func benchGroupUpdate(b *testing.B, open func(b *testing.B) persist.Store, members int) {
	s := open(b)
	defer func() {
		if err := s.Close(); err != nil && !errors.Is(err, persist.ErrClosed) {
			b.Error(err)
		}
	}()
	ms := make([]string, members)
	for i := range ms {
		ms[i] = fmt.Sprintf("m%05d", i)
	}
	if err := s.CreateGroup(b.Context(), persist.Group{ID: "bench", Owner: ms[0], Members: ms}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := s.UpdateGroup(b.Context(), "bench", func(g *persist.Group) error {
			if !g.IsAdmin(ms[0]) && !g.IsMember(ms[1]) {
				return errors.New("lost a member")
			}
			g.SetAdmin(ms[1], i%2 == 0)
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}
