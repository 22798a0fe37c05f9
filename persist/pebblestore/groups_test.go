package pebblestore

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

// TestLegacyGroups: a store written before group access control (group
// records without policy or admins, member keys without join numbers, no
// per-user index, an owner who left) opens with its groups open, owned by
// their most senior member, listed per user, and changeable.
func TestLegacyGroups(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := db.NewBatch()
	legacy := func(id, owner string, members ...string) {
		rec := appendLP(appendLP([]byte{recordV1}, "old "+id), owner)
		rec = append(rec, 0)                  // created (zig-zag varint 0)
		rec = append(rec, byte(len(members))) // count
		must(t, b.Set(keyString(nil, tGroup, id), rec, nil))
		for _, m := range members {
			must(t, b.Set(keyLP2(nil, tMember, id, m), nil, nil))
		}
	}
	legacy("g1", "alice", "alice", "bob")
	legacy("g2", "zoe", "carol", "bob") // the creator left: v1 kept it as owner
	must(t, b.Delete(metaGroupIndexKey, nil))
	must(t, b.Commit(pebble.Sync))
	must(t, b.Close())
	must(t, db.Close())

	s, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	g1, err := s.GetGroup(ctx, "g1")
	if err != nil || !g1.Open || g1.Owner != "alice" || !slices.Equal(g1.Members, []string{"alice", "bob"}) || len(g1.Admins) != 0 {
		t.Fatalf("legacy g1: %+v, %v", g1, err)
	}
	g2, err := s.GetGroup(ctx, "g2")
	if err != nil || !g2.Open || g2.Owner != "bob" {
		t.Fatalf("legacy g2 whose owner left: %+v, %v; want open, owned by bob", g2, err)
	}
	gs, err := s.UserGroups(ctx, "bob", "", 10)
	if err != nil || len(gs) != 2 || gs[0].ID != "g1" || gs[1].ID != "g2" || gs[1].Owner != "bob" || gs[1].Size != 2 || !gs[1].Open {
		t.Fatalf("bob's legacy groups: %+v, %v", gs, err)
	}
	// Joining (open) and leaving work; a newcomer is junior to the old
	// members.
	if err := s.AddMember(ctx, "g1", "dave", 0); err != nil {
		t.Fatal(err)
	}
	g, err := s.UpdateGroup(ctx, "g1", func(g *persist.Group) error { g.Remove("alice"); return nil })
	if err != nil || g.Owner != "bob" || !slices.Equal(g.Members, []string{"bob", "dave"}) {
		t.Fatalf("owner left legacy g1: %+v, %v; want bob, the senior member, as owner", g, err)
	}
	if gs, err := s.UserGroups(ctx, "alice", "", 10); err != nil || len(gs) != 0 {
		t.Fatalf("alice's groups after leaving: %+v, %v", gs, err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestUpdateGroupCanceledWhileApplied: a caller whose context ends while
// the committer runs its update returns the context's error and no group
// (the committer may still be writing the result: under -race, reading it
// would be a data race).
func TestUpdateGroupCanceledWhileApplied(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateGroup(t.Context(), persist.Group{ID: "g", Owner: "a", Members: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	entered, release := make(chan struct{}), make(chan struct{})
	type result struct {
		g   persist.Group
		err error
	}
	res := make(chan result, 1)
	go func() {
		g, err := s.UpdateGroup(ctx, "g", func(g *persist.Group) error {
			close(entered)
			<-release
			g.Name = "renamed"
			return nil
		})
		res <- result{g, err}
	}()
	<-entered
	cancel()
	close(release) // not after the caller returned: its return and the committer's result race
	r := <-res
	if !errors.Is(r.err, context.Canceled) || r.g.ID != "" {
		t.Fatalf("UpdateGroup canceled while applied: %+v, %v; want no group and context.Canceled", r.g, r.err)
	}
}
