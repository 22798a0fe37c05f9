package memstore

import (
	"context"
	"fmt"
	"slices"

	"github.com/imgn/imgn/persist"
)

// groupTable holds the groups and, per user, the sorted ids of its groups
// (for UserGroups). Guarded by Store.mu.
type groupTable struct {
	byID   map[string]*persist.Group // owned by the store, never handed out
	byUser map[string][]string
}

func newGroupTable() groupTable {
	return groupTable{byID: make(map[string]*persist.Group), byUser: make(map[string][]string)}
}

// index moves group id in the per-user index from the members in old to
// those in now (both sorted).
func (t *groupTable) index(id string, old, now []string) {
	for _, u := range old {
		if _, still := slices.BinarySearch(now, u); !still {
			ids := t.byUser[u]
			if i, ok := slices.BinarySearch(ids, id); ok {
				ids = slices.Delete(ids, i, i+1)
			}
			if len(ids) == 0 {
				delete(t.byUser, u)
			} else {
				t.byUser[u] = ids
			}
		}
	}
	for _, u := range now {
		if _, was := slices.BinarySearch(old, u); !was {
			ids := t.byUser[u]
			if i, ok := slices.BinarySearch(ids, id); !ok {
				t.byUser[u] = slices.Insert(ids, i, id)
			}
		}
	}
}

// CreateGroup implements persist.GroupStore. g's slices are copied; the
// caller keeps ownership of them.
func (s *Store) CreateGroup(ctx context.Context, g persist.Group) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g, err := persist.NewGroupState(g)
	if err != nil {
		return fmt.Errorf("memstore: create group: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return persist.ErrClosed
	}
	if _, ok := s.groups.byID[g.ID]; ok {
		return persist.ErrGroupExists
	}
	s.groups.byID[g.ID] = &g
	s.groups.index(g.ID, nil, g.Members)
	return nil
}

// GetGroup implements persist.GroupStore. The slices are fresh, owned by
// the caller.
func (s *Store) GetGroup(ctx context.Context, id string) (persist.Group, error) {
	if err := ctx.Err(); err != nil {
		return persist.Group{}, err
	}
	if err := persist.CheckID("group", id); err != nil {
		return persist.Group{}, fmt.Errorf("memstore: get group: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return persist.Group{}, persist.ErrClosed
	}
	g, ok := s.groups.byID[id]
	if !ok {
		return persist.Group{}, persist.ErrNotFound
	}
	return g.Clone(), nil
}

// UpdateGroup implements persist.GroupStore: fn runs once, under the
// store's lock, so it must not call the store. It is O(members).
func (s *Store) UpdateGroup(ctx context.Context, id string, fn func(g *persist.Group) error) (persist.Group, error) {
	if err := ctx.Err(); err != nil {
		return persist.Group{}, err
	}
	if err := persist.CheckID("group", id); err != nil {
		return persist.Group{}, fmt.Errorf("memstore: update group: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return persist.Group{}, persist.ErrClosed
	}
	cur, ok := s.groups.byID[id]
	if !ok {
		return persist.Group{}, persist.ErrNotFound
	}
	g, write, err := persist.ApplyGroupUpdate(cur, fn)
	if err != nil || !write {
		return g, err
	}
	if !slices.Equal(cur.Members, g.Members) {
		s.groups.index(id, cur.Members, g.Members)
	}
	if len(g.Members) == 0 {
		delete(s.groups.byID, id)
		return g, nil
	}
	stored := g.Clone()
	s.groups.byID[id] = &stored
	return g, nil
}

// UserGroups implements persist.GroupStore.
func (s *Store) UserGroups(ctx context.Context, user, after string, limit int) ([]persist.GroupSummary, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := persist.CheckID("user", user); err != nil {
		return nil, fmt.Errorf("memstore: user groups: %w", err)
	}
	if limit <= 0 {
		return nil, fmt.Errorf("memstore: user groups: %w: limit %d", persist.ErrInvalid, limit)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, persist.ErrClosed
	}
	ids := s.groups.byUser[user]
	i, found := slices.BinarySearch(ids, after)
	if found {
		i++
	}
	out := make([]persist.GroupSummary, 0, min(limit, len(ids)-i))
	for _, id := range ids[i:] {
		if len(out) == limit {
			break
		}
		g := s.groups.byID[id]
		sum := g.Summary()
		sum.Admins = slices.Clone(sum.Admins)
		out = append(out, sum)
	}
	return out, nil
}

// AddMember implements persist.GroupStore.
func (s *Store) AddMember(ctx context.Context, groupID, user string, maxMembers int) error {
	return persist.AddMemberVia(ctx, s.UpdateGroup, "memstore", groupID, user, maxMembers)
}

// RemoveMember implements persist.GroupStore.
func (s *Store) RemoveMember(ctx context.Context, groupID, user string) error {
	return persist.RemoveMemberVia(ctx, s.UpdateGroup, "memstore", groupID, user)
}
