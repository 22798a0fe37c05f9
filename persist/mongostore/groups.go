package mongostore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/imgn/imgn/persist"
)

// Groups are one document each: members in join order with their join
// numbers (joined), n, owner, admins, open, a version v and an incarnation
// inc. Changes are serialised per group by claiming versions (UpdateGroup).
// Documents written before access control have neither open (they read as
// open), admins, joined (the array order is the join order), v (version
// 0) nor inc (0).

// collGroupVersions holds the claimed versions of group changes.
const collGroupVersions = "groupversions"

// Claims: the latest keptVersions of a group, and every claim younger than
// claimTTL, stay stored (older ones are dropped every cleanupEvery
// versions), so that a version is claimed at most once by a writer whose
// read of the group is younger than maxClaimDelay; a slower writer gives up
// with ErrUnavailable. rollForwardAfter is how long a claim may stay
// unapplied before another writer applies it (its writer presumed dead).
const (
	keptVersions     = 4
	claimTTL         = 5 * time.Minute
	maxClaimDelay    = time.Minute
	cleanupEvery     = 16
	rollForwardAfter = time.Second
)

// maxUpdateAttempts bounds the claim loop of UpdateGroup. Changes
// of one group are rare; losing this many races in a row means the group
// is under a write storm, which is reported as ErrUnavailable.
const maxUpdateAttempts = 200

// CreateGroup implements persist.GroupStore.
func (s *Store) CreateGroup(ctx context.Context, g persist.Group) error {
	g, err := persist.NewGroupState(g)
	if err != nil {
		return fmt.Errorf("mongostore: create group: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer leave()
	// inc tells this incarnation of the id from a dissolved one, whose
	// version documents may be left over.
	doc := append(bson.D{{Key: "_id", Value: enc(g.ID)}, {Key: "created", Value: g.Created}, {Key: "inc", Value: rand.Int64()}},
		groupFields(&g, 1)...)
	_, err = s.groups.InsertOne(ctx, doc)
	if mongo.IsDuplicateKeyError(err) {
		return persist.ErrGroupExists
	}
	return mapErr(ctx, "create group", err)
}

// groupFields are the fields an update sets: members ordered by seniority.
func groupFields(g *persist.Group, version int64) bson.D {
	order := make([]int, len(g.Members))
	for i := range order {
		order[i] = i
	}
	// Members is sorted: ties stay in id order.
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(g.Joined[a], g.Joined[b]) })
	members, joined := make(bson.A, len(order)), make(bson.A, len(order))
	for i, j := range order {
		members[i], joined[i] = enc(g.Members[j]), int64(g.Joined[j])
	}
	return bson.D{
		{Key: "name", Value: enc(g.Name)},
		{Key: "owner", Value: enc(g.Owner)},
		{Key: "members", Value: members},
		{Key: "joined", Value: joined},
		{Key: "n", Value: int64(len(members))},
		{Key: "admins", Value: encAll(g.Admins)},
		{Key: "open", Value: g.Open},
		{Key: "v", Value: version},
	}
}

// GetGroup implements persist.GroupStore.
func (s *Store) GetGroup(ctx context.Context, id string) (persist.Group, error) {
	if err := persist.CheckID("group id", id); err != nil {
		return persist.Group{}, fmt.Errorf("mongostore: get group: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return persist.Group{}, err
	}
	defer leave()
	g, _, _, err := s.getGroup(ctx, id)
	return g, err
}

// getGroup reads group id, its version (0 for a document without one) and
// its incarnation.
func (s *Store) getGroup(ctx context.Context, id string) (g persist.Group, version, inc int64, err error) {
	raw, err := s.groups.FindOne(ctx, bson.D{{Key: "_id", Value: enc(id)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return persist.Group{}, 0, 0, persist.ErrNotFound
	}
	if err != nil {
		return persist.Group{}, 0, 0, mapErr(ctx, "get group", err)
	}
	if g, version, err = decodeGroup(id, raw); err != nil {
		return persist.Group{}, 0, 0, mapErr(ctx, "get group", err)
	}
	inc, _ = raw.Lookup("inc").Int64OK()
	return g, version, inc, nil
}

func decodeGroup(id string, raw bson.Raw) (g persist.Group, version int64, err error) {
	g.ID = id
	if g.Name, err = strField(raw, "name"); err != nil {
		return
	}
	if g.Owner, err = strField(raw, "owner"); err != nil {
		return
	}
	if g.Created, err = int64Field(raw, "created"); err != nil {
		return
	}
	g.Open = true // documents written before join policies
	if v, lerr := raw.LookupErr("open"); lerr == nil {
		if v.Type != bson.TypeBoolean {
			return g, 0, fmt.Errorf("%w: field \"open\" has BSON type %v", errCorrupt, v.Type)
		}
		g.Open = v.Boolean()
	}
	if _, lerr := raw.LookupErr("v"); lerr == nil {
		if version, err = int64Field(raw, "v"); err != nil {
			return
		}
	}
	members, err := idList(raw, "members", true)
	if err != nil {
		return
	}
	if g.Admins, err = idList(raw, "admins", false); err != nil {
		return
	}
	// Seniority: the join numbers stored beside the members, or (written
	// before they were) the position in the array, which $push kept in
	// join order.
	joined := make([]uint64, len(members))
	for i := range joined {
		joined[i] = uint64(i) + 1
	}
	if v, lerr := raw.LookupErr("joined"); lerr == nil {
		vals, verr := v.Array().Values()
		if v.Type != bson.TypeArray || verr != nil || len(vals) != len(members) {
			return g, 0, fmt.Errorf("%w: field \"joined\" does not match the members", errCorrupt)
		}
		for i, j := range vals {
			n, ok := j.Int64OK()
			if !ok || n < 0 {
				return g, 0, fmt.Errorf("%w: field \"joined\" holds %v", errCorrupt, j)
			}
			joined[i] = uint64(n)
		}
	}
	order := make([]int, len(members))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(members[a], members[b]) })
	g.Members = make([]string, 0, len(members))
	g.Joined = make([]uint64, 0, len(members))
	for _, i := range order {
		if n := len(g.Members); n > 0 && g.Members[n-1] == members[i] {
			continue
		}
		g.Members = append(g.Members, members[i])
		g.Joined = append(g.Joined, joined[i])
	}
	persist.NormalizeGroup(&g)
	return g, version, nil
}

// idList decodes the array of identifiers name of raw; a missing array is
// empty unless required.
func idList(raw bson.Raw, name string, required bool) ([]string, error) {
	if _, err := raw.LookupErr(name); err != nil && !required {
		return nil, nil
	}
	arr, err := lookup(raw, name, bson.TypeArray)
	if err != nil {
		return nil, err
	}
	vals, err := arr.Array().Values()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errCorrupt, name, err)
	}
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		m, err := dec(v)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// UpdateGroup implements persist.GroupStore. fn may run more than once.
//
// MongoDB applies a conditional update atomically, but FerretDB v1 does
// not isolate updates, so a compare-and-set on the group document alone
// could lose a change there. What both isolate is an insert under a unique
// _id: a change from version v claims version v+1 by inserting a version
// document (the new state) with the _id (group, incarnation, v+1); one
// writer wins, the others read again. The winner then writes the state to
// the group document. A writer that keeps finding v+1 claimed while the
// group document stays at v (the claimer died between its two writes)
// copies the claimed state to the group document itself and goes on.
func (s *Store) UpdateGroup(ctx context.Context, id string, fn func(g *persist.Group) error) (persist.Group, error) {
	if err := persist.CheckID("group id", id); err != nil {
		return persist.Group{}, fmt.Errorf("mongostore: update group: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return persist.Group{}, err
	}
	defer leave()
	versions := s.db.Collection(collGroupVersions)
	var stuck string // a claim found taken while the group stayed below it
	var stuckSince time.Time
	for attempt := range maxUpdateAttempts {
		if attempt > 0 {
			// Back off a little so that racing writers spread out.
			t := time.NewTimer(time.Duration(rand.Int64N(int64(min(attempt, 10))*int64(time.Millisecond) + 1)))
			select {
			case <-ctx.Done():
				t.Stop()
				return persist.Group{}, ctx.Err()
			case <-t.C:
			}
		}
		readAt := time.Now()
		cur, version, inc, err := s.getGroup(ctx, id)
		if err != nil {
			return persist.Group{}, err
		}
		g, write, err := persist.ApplyGroupUpdate(&cur, fn)
		if err != nil || !write {
			return g, err
		}
		claim := versionKey(id, inc, version+1)
		fields := groupFields(&g, version+1)
		_, err = versions.InsertOne(ctx, append(bson.D{{Key: "_id", Value: claim}, {Key: "gone", Value: len(g.Members) == 0},
			{Key: "t", Value: time.Now().UnixMilli()}}, fields...))
		if mongo.IsDuplicateKeyError(err) {
			if claim != stuck {
				stuck, stuckSince = claim, time.Now()
			} else if time.Since(stuckSince) > rollForwardAfter {
				if err := s.rollForward(ctx, versions, id, claim, version); err != nil {
					return persist.Group{}, err
				}
			}
			continue
		}
		if err != nil {
			return persist.Group{}, mapErr(ctx, "update group", err)
		}
		if time.Since(readAt) > maxClaimDelay {
			// The claim may re-take a version dropped since the read: its
			// state may be stale. Others roll it forward if it is not.
			return persist.Group{}, fmt.Errorf("mongostore: update group %q: %w: the claim took %v, outcome unknown",
				id, persist.ErrUnavailable, time.Since(readAt).Round(time.Second))
		}
		// The claim is the only one of its version, so a group document
		// past it (its update matching nothing) holds its state already:
		// another writer rolled it forward.
		if err := s.applyVersion(ctx, id, version, len(g.Members) == 0, fields); err != nil {
			return persist.Group{}, err
		}
		if (version+1)%cleanupEvery == 0 {
			// Best effort: a left-over claim only takes space. Recent ones
			// stay: on FerretDB a late roll-forward may set the group
			// document back a version or two, and the claims still there
			// make the next writers roll it forward again rather than
			// build on the old state.
			_, _ = versions.DeleteMany(ctx, bson.D{
				{Key: "_id", Value: bson.D{{Key: "$gte", Value: versionKey(id, inc, 0)}, {Key: "$lt", Value: versionKey(id, inc, version+1-keptVersions)}}},
				{Key: "t", Value: bson.D{{Key: "$lt", Value: time.Now().Add(-claimTTL).UnixMilli()}}},
			})
		}
		return g, nil
	}
	return persist.Group{}, fmt.Errorf("mongostore: update group: %w: group %q keeps changing", persist.ErrUnavailable, id)
}

// versionKey is the _id of the version document of group id's incarnation
// inc at version v.
func versionKey(id string, inc, v int64) string {
	// Fixed-width numbers: the keys of one incarnation sort by version.
	return fmt.Sprintf("%s%016x:%016x", keyPart(id), uint64(inc), uint64(max(v, 0)))
}

// applyVersion writes the state of version from+1 (fields) to group id's
// document, which is at version from or later.
func (s *Store) applyVersion(ctx context.Context, id string, from int64, gone bool, fields bson.D) error {
	filter := bson.D{{Key: "_id", Value: enc(id)}, {Key: "v", Value: bson.D{{Key: "$lte", Value: from}}}}
	if from == 0 {
		// Documents written before versions have no v at all.
		filter = bson.D{{Key: "_id", Value: enc(id)}, {Key: "$or", Value: bson.A{
			bson.D{{Key: "v", Value: bson.D{{Key: "$exists", Value: false}}}},
			bson.D{{Key: "v", Value: bson.D{{Key: "$lte", Value: from}}}},
		}}}
	}
	var err error
	if gone {
		_, err = s.groups.DeleteOne(ctx, filter)
	} else {
		_, err = s.groups.UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: fields}})
	}
	return mapErr(ctx, "update group", err)
}

// rollForward copies the claimed version claim (from+1) of group id to the
// group document when the document is still at from.
func (s *Store) rollForward(ctx context.Context, versions *mongo.Collection, id, claim string, from int64) error {
	raw, err := versions.FindOne(ctx, bson.D{{Key: "_id", Value: claim}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil // cleaned up: the group document is past it
	}
	if err != nil {
		return mapErr(ctx, "update group", err)
	}
	gone, _ := raw.Lookup("gone").BooleanOK()
	var fields bson.D
	elems, err := raw.Elements()
	if err != nil {
		return mapErr(ctx, "update group", fmt.Errorf("%w: version %s: %v", errCorrupt, claim, err))
	}
	for _, e := range elems {
		if k := e.Key(); k != "_id" && k != "gone" {
			fields = append(fields, bson.E{Key: k, Value: e.Value()})
		}
	}
	return s.applyVersion(ctx, id, from, gone, fields)
}

// UserGroups implements persist.GroupStore: the groups whose members
// array holds user (indexed), by ascending _id.
func (s *Store) UserGroups(ctx context.Context, user, after string, limit int) ([]persist.GroupSummary, error) {
	if err := persist.CheckID("user", user); err != nil {
		return nil, fmt.Errorf("mongostore: user groups: %w", err)
	}
	if limit <= 0 {
		return nil, fmt.Errorf("mongostore: user groups: %w: limit %d", persist.ErrInvalid, limit)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer leave()
	filter := bson.D{{Key: "members", Value: enc(user)}}
	if after != "" {
		filter = append(filter, bson.E{Key: "_id", Value: bson.D{{Key: "$gt", Value: enc(after)}}})
	}
	cur, err := s.groups.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, mapErr(ctx, "user groups", err)
	}
	defer cur.Close(ctx)
	var out []persist.GroupSummary
	for cur.Next(ctx) {
		id, err := strField(cur.Current, "_id")
		if err != nil {
			return nil, mapErr(ctx, "user groups", err)
		}
		g, _, err := decodeGroup(id, cur.Current)
		if err != nil {
			return nil, mapErr(ctx, "user groups", err)
		}
		out = append(out, g.Summary())
	}
	if err := cur.Err(); err != nil {
		return nil, mapErr(ctx, "user groups", err)
	}
	return out, nil
}

// AddMember implements persist.GroupStore.
func (s *Store) AddMember(ctx context.Context, groupID, user string, maxMembers int) error {
	return persist.AddMemberVia(ctx, s.UpdateGroup, "mongostore", groupID, user, maxMembers)
}

// RemoveMember implements persist.GroupStore.
func (s *Store) RemoveMember(ctx context.Context, groupID, user string) error {
	return persist.RemoveMemberVia(ctx, s.UpdateGroup, "mongostore", groupID, user)
}
