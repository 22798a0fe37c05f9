package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"

	"github.com/imgn/imgn/persist"
)

// Groups: a record per group ('g'), a key per member ('n', whose value is
// the member's join number, empty for members stored before join order was
// kept), and a key per (member, group) ('j') for UserGroups. Every change
// goes through UpdateGroup in the committer, which reads the group and its
// members as the batch sees them, so it is atomic with respect to every
// other write.

// groupRecord is the groups table's value. Records written before access
// control end after count: they read as open groups without admins.
type groupRecord struct {
	name, owner string
	created     int64
	count       uint64
	open        bool
	admins      []string
}

const groupFlagOpen = 1 << 0

func appendGroup(b []byte, g *groupRecord) []byte {
	b = append(b, recordV1)
	b = appendLP(b, g.name)
	b = appendLP(b, g.owner)
	b = binary.AppendVarint(b, g.created)
	b = binary.AppendUvarint(b, g.count)
	var flags byte
	if g.open {
		flags |= groupFlagOpen
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(g.admins)))
	for _, a := range g.admins {
		b = appendLP(b, a)
	}
	return b
}

func decodeGroup(id string, rec []byte) (groupRecord, error) {
	d := decoder{b: rec}
	d.version()
	var g groupRecord
	g.name = d.string()
	g.owner = d.string()
	g.created = d.varint()
	g.count = d.uvarint()
	if d.err == nil && len(d.b) == 0 {
		g.open = true // written before join policies: nothing that worked may break
	} else {
		g.open = d.byte()&groupFlagOpen != 0
		n := d.uvarint()
		if n > uint64(len(d.b)) {
			d.fail()
		}
		for range n {
			g.admins = append(g.admins, d.string())
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return groupRecord{}, fmt.Errorf("group %q: %w", id, d.err)
	}
	return g, nil
}

// joinValue is a member key's value.
func joinValue(joined uint64) []byte { return binary.AppendUvarint(nil, joined) }

// decodeJoin reads a member key's value (empty: 0).
func decodeJoin(v []byte) (uint64, error) {
	if len(v) == 0 {
		return 0, nil
	}
	j, n := binary.Uvarint(v)
	if n != len(v) {
		return 0, errCorrupt
	}
	return j, nil
}

// readMembers appends the members of g (and their join numbers), as r
// has them, to g.Members and g.Joined: in key order, so sorted.
func readMembers(r reader, g *persist.Group) error {
	prefix := keyLP(nil, tMember, g.ID)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, verr := it.ValueAndErr()
		if verr != nil {
			err = verr
			break
		}
		j, jerr := decodeJoin(v)
		if jerr != nil {
			err = jerr
			break
		}
		g.Members = append(g.Members, string(it.Key()[len(prefix):]))
		g.Joined = append(g.Joined, j)
	}
	if err == nil {
		err = it.Error()
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	return err
}

// readGroup reads group id from r: the record and every member.
func readGroup(r reader, id string) (persist.Group, error) {
	var rec groupRecord
	err := getValue(r, keyString(nil, tGroup, id), func(v []byte) (err error) {
		rec, err = decodeGroup(id, v)
		return err
	})
	if err != nil {
		return persist.Group{}, err
	}
	g := rec.group(id)
	err = readMembers(r, &g)
	persist.NormalizeGroup(&g)
	return g, err
}

func (rec *groupRecord) group(id string) persist.Group {
	return persist.Group{ID: id, Name: rec.name, Owner: rec.owner, Created: rec.created, Open: rec.open,
		Admins: rec.admins, Members: make([]string, 0, min(rec.count, 1<<16)), Joined: make([]uint64, 0, min(rec.count, 1<<16))}
}

// loadGroup reads group id as the committer's batch sees it: the database
// (every batch applied so far, see committer.get) overlaid with this
// batch's earlier writes.
func (c *committer) loadGroup(id string) (persist.Group, error) {
	v, ok, err := c.get(keyString(nil, tGroup, id))
	if err != nil {
		return persist.Group{}, err
	}
	if !ok {
		return persist.Group{}, persist.ErrNotFound
	}
	rec, err := decodeGroup(id, v)
	if err != nil {
		return persist.Group{}, err
	}
	g := rec.group(id)
	// The database holds the batches applied so far, none of this one's
	// writes: those go on top below.
	if err := readMembers(c.s.db, &g); err != nil {
		return persist.Group{}, err
	}
	prefix := keyLP(nil, tMember, id)
	// This batch's earlier changes of the group (rare) go on top.
	for k, v := range c.overlay {
		if !strings.HasPrefix(k, string(prefix)) {
			continue
		}
		user := k[len(prefix):]
		i, found := slices.BinarySearch(g.Members, user)
		switch {
		case v == nil && found:
			g.Members, g.Joined = slices.Delete(g.Members, i, i+1), slices.Delete(g.Joined, i, i+1)
		case v != nil:
			j, err := decodeJoin(v)
			if err != nil {
				return persist.Group{}, err
			}
			if found {
				g.Joined[i] = j
			} else {
				g.Members, g.Joined = slices.Insert(g.Members, i, user), slices.Insert(g.Joined, i, j)
			}
		}
	}
	persist.NormalizeGroup(&g)
	return g, nil
}

// storeGroup writes the change from old to g (both normalised), deleting
// the group when g has no members.
func (c *committer) storeGroup(old, g *persist.Group) {
	gkey := keyString(nil, tGroup, g.ID)
	if len(g.Members) == 0 {
		c.remove(gkey)
	} else {
		c.put(gkey, appendGroup(nil, &groupRecord{name: g.Name, owner: g.Owner, created: g.Created,
			count: uint64(len(g.Members)), open: g.Open, admins: g.Admins}))
	}
	for _, u := range old.Members {
		if !g.IsMember(u) {
			c.remove(keyLP2(nil, tMember, g.ID, u))
			c.remove(keyLP2(nil, tUserGrp, u, g.ID))
		}
	}
	for i, u := range g.Members {
		if j, was := slices.BinarySearch(old.Members, u); !was || old.Joined[j] != g.Joined[i] {
			c.put(keyLP2(nil, tMember, g.ID, u), joinValue(g.Joined[i]))
			c.put(keyLP2(nil, tUserGrp, u, g.ID), nil)
		}
	}
}

// CreateGroup implements persist.GroupStore; it returns after the group and
// its members are durable, or persist.ErrGroupExists. g's slices are copied
// before CreateGroup queues anything.
func (s *Store) CreateGroup(ctx context.Context, g persist.Group) error {
	g, err := persist.NewGroupState(g)
	if err != nil {
		return fmt.Errorf("pebblestore: create group: %w", err)
	}
	key := keyString(nil, tGroup, g.ID)
	return s.write(ctx, &writeReq{apply: func(c *committer) error {
		_, ok, err := c.get(key)
		if err != nil {
			return unavailable("create group", err)
		}
		if ok {
			return persist.ErrGroupExists
		}
		if len(g.Members) == 0 {
			// A group created empty exists until its first update.
			c.put(key, appendGroup(nil, &groupRecord{name: g.Name, owner: g.Owner, created: g.Created, open: g.Open}))
			return nil
		}
		c.storeGroup(&persist.Group{ID: g.ID}, &g)
		return nil
	}})
}

// GetGroup implements persist.GroupStore. The slices are fresh, owned by
// the caller (Members empty, not nil, for a group without members).
func (s *Store) GetGroup(ctx context.Context, id string) (persist.Group, error) {
	if err := persist.CheckID("group", id); err != nil {
		return persist.Group{}, fmt.Errorf("pebblestore: get group: %w", err)
	}
	var g persist.Group
	err := s.viewRead(ctx, "get group", func(r reader) (err error) {
		g, err = readGroup(r, id)
		return err
	})
	return g, err
}

// UpdateGroup implements persist.GroupStore. fn runs once, on the
// committer's goroutine (it must not call the store), after the group and
// its members are read: O(members).
func (s *Store) UpdateGroup(ctx context.Context, id string, fn func(g *persist.Group) error) (persist.Group, error) {
	if err := persist.CheckID("group", id); err != nil {
		return persist.Group{}, fmt.Errorf("pebblestore: update group: %w", err)
	}
	var out persist.Group
	err := s.write(ctx, &writeReq{apply: func(c *committer) error {
		cur, err := c.loadGroup(id)
		if errors.Is(err, persist.ErrNotFound) {
			return err
		}
		if err != nil {
			return unavailable("update group", err)
		}
		g, write, err := persist.ApplyGroupUpdate(&cur, fn)
		if err != nil {
			return err
		}
		if write {
			c.storeGroup(&cur, &g)
		}
		out = g
		return nil
	}})
	if err != nil {
		// out is the committer's until the request is completed: after
		// ctx ended, apply may be writing it.
		return persist.Group{}, err
	}
	return out, nil
}

// UserGroups implements persist.GroupStore: one range of the user's
// index, then each group's record.
func (s *Store) UserGroups(ctx context.Context, user, after string, limit int) ([]persist.GroupSummary, error) {
	if err := persist.CheckID("user", user); err != nil {
		return nil, fmt.Errorf("pebblestore: user groups: %w", err)
	}
	if limit <= 0 {
		return nil, fmt.Errorf("pebblestore: user groups: %w: limit %d", persist.ErrInvalid, limit)
	}
	var out []persist.GroupSummary
	err := s.viewRead(ctx, "user groups", func(r reader) error {
		prefix := keyLP(nil, tUserGrp, user)
		lower := append(bytes.Clone(prefix), after...)
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
		if err != nil {
			return err
		}
		defer it.Close()
		for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
			id := string(it.Key()[len(prefix):])
			if id == after {
				continue
			}
			g, err := summary(r, id, user)
			if err != nil {
				return err
			}
			out = append(out, g)
		}
		return it.Error()
	})
	return out, err
}

// summary reads group id's summary; user is a member. Only a group whose
// stored owner is not a member (stored before ownership passed on) needs
// its members read.
func summary(r reader, id, user string) (persist.GroupSummary, error) {
	var rec groupRecord
	err := getValue(r, keyString(nil, tGroup, id), func(v []byte) (err error) {
		rec, err = decodeGroup(id, v)
		return err
	})
	if err != nil {
		return persist.GroupSummary{}, fmt.Errorf("group %q of %q's index: %w", id, user, err)
	}
	err = getValue(r, keyLP2(nil, tMember, id, rec.owner), func([]byte) error { return nil })
	if errors.Is(err, persist.ErrNotFound) {
		g, err := readGroup(r, id)
		return g.Summary(), err
	}
	if err != nil {
		return persist.GroupSummary{}, err
	}
	return persist.GroupSummary{ID: id, Name: rec.name, Owner: rec.owner, Admins: rec.admins, Open: rec.open, Size: int(rec.count)}, nil
}

// AddMember implements persist.GroupStore.
func (s *Store) AddMember(ctx context.Context, groupID, user string, maxMembers int) error {
	return persist.AddMemberVia(ctx, s.UpdateGroup, "pebblestore", groupID, user, maxMembers)
}

// RemoveMember implements persist.GroupStore.
func (s *Store) RemoveMember(ctx context.Context, groupID, user string) error {
	return persist.RemoveMemberVia(ctx, s.UpdateGroup, "pebblestore", groupID, user)
}

// metaGroupIndexKey marks a store whose per-user group index ('j') is
// complete: stores written before it existed get it built at Open.
var metaGroupIndexKey = []byte("\x00groupindex")

// buildGroupIndex builds the per-user group index from the members table
// once, before the committer starts (so nothing else writes).
func buildGroupIndex(db *pebble.DB, sync *pebble.WriteOptions) error {
	_, closer, err := db.Get(metaGroupIndexKey)
	if err == nil {
		return closer.Close()
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return err
	}
	prefix := []byte{tMember}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	b := db.NewBatch()
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()[1:]
		n, w := binary.Uvarint(k)
		if w <= 0 || uint64(len(k)-w) < n {
			_ = it.Close()
			_ = b.Close()
			return fmt.Errorf("members key %q: %w", it.Key(), errCorrupt)
		}
		group, user := string(k[w:w+int(n)]), string(k[w+int(n):])
		if err := b.Set(keyLP2(nil, tUserGrp, user, group), nil, nil); err != nil {
			_ = it.Close()
			_ = b.Close()
			return err
		}
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = b.Set(metaGroupIndexKey, []byte{1}, nil)
	}
	if err == nil {
		err = b.Commit(sync)
	}
	if cerr := b.Close(); err == nil {
		err = cerr
	}
	return err
}
