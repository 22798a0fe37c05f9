package mongostore

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/persist"
)

// TestLegacyGroups: group documents written before access control (no
// open, admins, joined or v; members in join order; the creator gone but
// still named owner) read as open groups owned by their most senior
// member, are listed per user, and take changes.
func TestLegacyGroups(t *testing.T) {
	svc := testsvc.StartMongo(t)
	s, err := Open(t.Context(), Options{URI: svc.URI(), Database: fmt.Sprintf("legacygroups%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	for _, doc := range []bson.D{
		{{Key: "_id", Value: "g1"}, {Key: "name", Value: "one"}, {Key: "owner", Value: "alice"},
			{Key: "members", Value: bson.A{"alice", "zed", "bob"}}, {Key: "n", Value: int64(3)}, {Key: "created", Value: int64(5)}},
		{{Key: "_id", Value: "g2"}, {Key: "name", Value: "two"}, {Key: "owner", Value: "gone"},
			{Key: "members", Value: bson.A{"zed", "bob"}}, {Key: "n", Value: int64(2)}, {Key: "created", Value: int64(6)}},
	} {
		if _, err := s.groups.InsertOne(ctx, doc); err != nil {
			t.Fatal(err)
		}
	}
	g1, err := s.GetGroup(ctx, "g1")
	if err != nil || !g1.Open || g1.Owner != "alice" || !slices.Equal(g1.Members, []string{"alice", "bob", "zed"}) || len(g1.Admins) != 0 {
		t.Fatalf("legacy g1: %+v, %v", g1, err)
	}
	// zed was pushed before bob: zed is senior, and owns g2.
	g2, err := s.GetGroup(ctx, "g2")
	if err != nil || !g2.Open || g2.Owner != "zed" {
		t.Fatalf("legacy g2 whose owner left: %+v, %v; want open, owned by zed", g2, err)
	}
	gs, err := s.UserGroups(ctx, "bob", "", 10)
	if err != nil || len(gs) != 2 || gs[0].ID != "g1" || gs[1].ID != "g2" || gs[1].Owner != "zed" || gs[1].Size != 2 {
		t.Fatalf("bob's legacy groups: %+v, %v", gs, err)
	}
	if err := s.AddMember(ctx, "g1", "carol", 0); err != nil {
		t.Fatal(err)
	}
	g, err := s.UpdateGroup(ctx, "g1", func(g *persist.Group) error { g.Remove("alice"); return nil })
	if err != nil || g.Owner != "zed" || !slices.Equal(g.Members, []string{"bob", "carol", "zed"}) {
		t.Fatalf("owner left legacy g1: %+v, %v; want zed, the senior member, as owner", g, err)
	}
	if g, err := s.GetGroup(ctx, "g1"); err != nil || g.Owner != "zed" || !g.Open {
		t.Fatalf("g1 read back: %+v, %v", g, err)
	}
}

// TestGroupClaimRollForward: a writer that claimed a version and died
// before applying it does not block the group: the next writer applies the
// claimed state, then its own change on top.
func TestGroupClaimRollForward(t *testing.T) {
	svc := testsvc.StartMongo(t)
	s, err := Open(t.Context(), Options{URI: svc.URI(), Database: fmt.Sprintf("rollforward%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	if err := s.CreateGroup(ctx, persist.Group{ID: "g", Owner: "alice", Members: []string{"alice", "bob"}}); err != nil {
		t.Fatal(err)
	}
	cur, version, inc, err := s.getGroup(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	// The dead writer's claim: carol added.
	dead := cur.Clone()
	dead.Add("carol")
	_, err = s.db.Collection(collGroupVersions).InsertOne(ctx, append(bson.D{{Key: "_id", Value: versionKey("g", inc, version+1)},
		{Key: "gone", Value: false}, {Key: "t", Value: time.Now().UnixMilli()}}, groupFields(&dead, version+1)...))
	if err != nil {
		t.Fatal(err)
	}
	g, err := s.UpdateGroup(ctx, "g", func(g *persist.Group) error { g.Add("dave"); return nil })
	if err != nil || !slices.Equal(g.Members, []string{"alice", "bob", "carol", "dave"}) {
		t.Fatalf("update over a dead claim: %+v, %v; want carol's addition kept and dave's added", g, err)
	}
	if g, err := s.GetGroup(ctx, "g"); err != nil || !slices.Equal(g.Members, []string{"alice", "bob", "carol", "dave"}) {
		t.Fatalf("stored %+v, %v", g, err)
	}
}
