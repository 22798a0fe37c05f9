package persist

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// ErrUnchanged is returned by an UpdateGroup function to store nothing:
// UpdateGroup then returns the group's current state and a nil error.
var ErrUnchanged = errors.New("persist: group unchanged")

// member returns the index of user in g.Members and whether it is there.
func (g *Group) member(user string) (int, bool) {
	return slices.BinarySearch(g.Members, user)
}

// IsMember reports whether user is a member of g.
func (g *Group) IsMember(user string) bool {
	_, ok := g.member(user)
	return ok
}

// IsAdmin reports whether user is an admin of g (the owner is not one).
func (g *Group) IsAdmin(user string) bool {
	_, ok := slices.BinarySearch(g.Admins, user)
	return ok
}

// Add makes user a member, the most junior one, and reports whether it was
// not one already. Joined and Members stay parallel.
func (g *Group) Add(user string) bool {
	i, ok := g.member(user)
	if ok {
		return false
	}
	g.fixJoined()
	next := uint64(1)
	for _, j := range g.Joined {
		next = max(next, j+1)
	}
	g.Members = slices.Insert(g.Members, i, user)
	g.Joined = slices.Insert(g.Joined, i, next)
	return true
}

// Remove takes user out of the members and the admins and reports whether
// it was a member. When user is the owner, ownership passes to Successor
// (the group has no owner when it has no members left).
func (g *Group) Remove(user string) bool {
	i, ok := g.member(user)
	if !ok {
		return false
	}
	g.fixJoined()
	g.Members = slices.Delete(g.Members, i, i+1)
	g.Joined = slices.Delete(g.Joined, i, i+1)
	g.SetAdmin(user, false)
	if g.Owner == user {
		g.Owner = ""
		g.Owner = g.Successor()
		g.SetAdmin(g.Owner, false)
	}
	return true
}

// SetAdmin gives user the admin role or takes it away. It does not check
// that user is a member.
func (g *Group) SetAdmin(user string, admin bool) {
	i, ok := slices.BinarySearch(g.Admins, user)
	switch {
	case admin && !ok:
		g.Admins = slices.Insert(g.Admins, i, user)
	case !admin && ok:
		g.Admins = slices.Delete(g.Admins, i, i+1)
	}
}

// Successor returns who would own g if its owner went: the most senior
// admin, else the most senior other member (seniority by Joined, ties by
// user id), or "" when no other member is left.
func (g *Group) Successor() string {
	g.fixJoined()
	best, bestAdmin := -1, false
	for i, m := range g.Members {
		if m == g.Owner {
			continue
		}
		admin := g.IsAdmin(m)
		switch {
		case best < 0, admin && !bestAdmin:
		case admin == bestAdmin && g.Joined[i] < g.Joined[best]:
		default:
			continue
		}
		best, bestAdmin = i, admin
	}
	if best < 0 {
		return ""
	}
	return g.Members[best]
}

// Summary returns g as UserGroups lists it.
func (g *Group) Summary() GroupSummary {
	return GroupSummary{ID: g.ID, Name: g.Name, Owner: g.Owner, Admins: g.Admins, Open: g.Open, Size: len(g.Members)}
}

// Clone returns a deep copy of g.
func (g *Group) Clone() Group {
	c := *g
	c.Members = slices.Clone(g.Members)
	c.Joined = slices.Clone(g.Joined)
	c.Admins = slices.Clone(g.Admins)
	if c.Members == nil {
		c.Members = []string{}
	}
	return c
}

// fixJoined makes Joined as long as Members (zeros for the missing ones).
func (g *Group) fixJoined() {
	if len(g.Joined) != len(g.Members) {
		g.Joined = append(g.Joined[:min(len(g.Joined), len(g.Members))], make([]uint64, max(0, len(g.Members)-len(g.Joined)))...)
	}
}

// NormalizeGroup restores the invariants of a group read from a store:
// Joined parallel to Members, Admins sorted members other than the owner,
// and an owner who is a member (the successor when the stored one is not,
// as groups stored before ownership carried rights may have it).
func NormalizeGroup(g *Group) {
	g.fixJoined()
	if g.Members == nil {
		g.Members = []string{}
	}
	admins := g.Admins[:0:0]
	for _, a := range g.Admins {
		if g.IsMember(a) {
			admins = append(admins, a)
		}
	}
	slices.Sort(admins)
	g.Admins = slices.Compact(admins)
	if !g.IsMember(g.Owner) {
		g.Owner = ""
		g.Owner = g.Successor()
	}
	g.SetAdmin(g.Owner, false)
}

// NewGroupState returns g as CreateGroup stores it: members and admins
// checked, sorted and deduplicated, admins reduced to members other than
// the owner, every member with join number 1, and an owner who is a member
// (as NormalizeGroup makes it). It never aliases g's slices.
func NewGroupState(g Group) (Group, error) {
	if err := CheckID("group", g.ID); err != nil {
		return Group{}, err
	}
	members, err := NormalizeMembers(g.Members)
	if err != nil {
		return Group{}, err
	}
	admins, err := NormalizeMembers(g.Admins)
	if err != nil {
		return Group{}, err
	}
	g.Members, g.Admins = members, admins
	g.Joined = make([]uint64, len(members))
	for i := range g.Joined {
		g.Joined[i] = 1
	}
	NormalizeGroup(&g)
	return g, nil
}

// ApplyGroupUpdate runs fn on a copy of cur for UpdateGroup and returns the
// state to store, whether to store it (false for ErrUnchanged), and fn's
// other errors. The result is normalised (NormalizeGroup) and validated:
// fn cannot store an invalid member or admin name.
func ApplyGroupUpdate(cur *Group, fn func(g *Group) error) (Group, bool, error) {
	g := cur.Clone()
	if err := fn(&g); errors.Is(err, ErrUnchanged) {
		return cur.Clone(), false, nil
	} else if err != nil {
		return Group{}, false, err
	}
	g.ID = cur.ID
	for _, m := range g.Members {
		if err := CheckID("member", m); err != nil {
			return Group{}, false, err
		}
	}
	if !slices.IsSorted(g.Members) || len(g.Joined) != len(g.Members) {
		return Group{}, false, fmt.Errorf("%w: members changed other than by Add and Remove", ErrInvalid)
	}
	NormalizeGroup(&g)
	return g, true, nil
}

// UpdateFunc is GroupStore.UpdateGroup.
type UpdateFunc func(ctx context.Context, id string, fn func(g *Group) error) (Group, error)

// AddMemberVia implements GroupStore.AddMember with UpdateGroup; errors
// start with store, the name of the store.
func AddMemberVia(ctx context.Context, update UpdateFunc, store, groupID, user string, maxMembers int) error {
	if err := CheckID("user", user); err != nil {
		return fmt.Errorf("%s: add member: %w", store, err)
	}
	_, err := update(ctx, groupID, func(g *Group) error {
		if g.IsMember(user) {
			return ErrUnchanged
		}
		if maxMembers > 0 && len(g.Members) >= maxMembers {
			return ErrGroupFull
		}
		g.Add(user)
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: add member: %w", store, err)
	}
	return nil
}

// RemoveMemberVia implements GroupStore.RemoveMember with UpdateGroup;
// errors start with store, the name of the store.
func RemoveMemberVia(ctx context.Context, update UpdateFunc, store, groupID, user string) error {
	if err := CheckID("user", user); err != nil {
		return fmt.Errorf("%s: remove member: %w", store, err)
	}
	_, err := update(ctx, groupID, func(g *Group) error {
		if !g.Remove(user) {
			return ErrUnchanged
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: remove member: %w", store, err)
	}
	return nil
}
