package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
	"google.golang.org/protobuf/proto"
)

// Groups and their access control (docs/protocol.md §4.5, §6.7): every
// change of membership or roles is checked and applied in one atomic store
// update (persist.GroupStore.UpdateGroup), so a check (is the caller an
// admin?) still holds when its change is stored. After a change the cached
// member list is forgotten (a single node caches it for GROUP_SEND; a
// cluster node reads it from the shared store on every GROUP_SEND), so a
// removed member gets none of the group's later messages, and the change is
// announced in the group as a system message (codec.KindGroupEvent).

// maxGroupName is the longest group name, in bytes (docs/protocol.md §4.5).
const maxGroupName = 128

// maxGroupUsers is the most users one GROUP_ADD or GROUP_REMOVE names.
const maxGroupUsers = 500

// GROUPS page sizes (docs/protocol.md §7).
const (
	groupsPageDefault = 50
	groupsPageMax     = 200
)

func (s *Server) handleGroupCreate(r *request) (proto.Message, *codec.Error) {
	req, c := r.msg.(*pb.GroupCreateRequest), r.c
	members, err := s.checkNewGroup(req.Name, c.user, req.Members)
	if err != nil {
		return nil, s.failure(c, "create group", err)
	}
	// Every group is stored for good: creating them counts against the
	// same per-user budget as sending (a GROUP_CREATE storm is refused
	// like a SEND flood).
	if e := s.sendRate(c, now(r.src)); e != nil {
		return nil, e
	}
	g, err := s.createGroup(r.ctx, c.user, c.user, req.Name, members, req.Open)
	if err != nil {
		return nil, s.failure(c, "create group", err)
	}
	return groupInfo(g), nil
}

// groupInfo is the GROUP_INFO of g for one of its members.
func groupInfo(g persist.Group) *pb.GroupInfo {
	return &pb.GroupInfo{GroupId: g.ID, Name: validText(g.Name), Owner: g.Owner, Members: g.Members, Admins: g.Admins, Open: g.Open}
}

// handleGroup runs GROUP_JOIN, GROUP_LEAVE and GROUP_MEMBERS.
func (s *Server) handleGroup(r *request) (proto.Message, *codec.Error) {
	req, c, cmd := r.msg.(*pb.GroupRequest), r.c, r.h.Command
	if !validID(req.GroupId) {
		return nil, &codec.Error{Code: codec.CodeInvalidArgument, Message: "group_id must be a group id"}
	}
	if cmd == codec.CmdGroupMembers {
		g, e := s.loadGroup(r.ctx, c, req.GroupId)
		if e != nil {
			return nil, e
		}
		if !g.IsMember(c.user) {
			return nil, &codec.Error{Code: codec.CodeNotGroupMember, Message: "not a member of " + g.ID}
		}
		return groupInfo(g), nil
	}
	// A change is announced to every member: changes count against the
	// caller's send budget, so toggling one cannot flood the group.
	if e := s.sendRate(c, now(r.src)); e != nil {
		return nil, e
	}
	g, err := s.changeGroup(r.ctx, req.GroupId, groupOp{cmd: cmd, actor: c.user})
	if err != nil {
		return nil, s.failure(c, "update group", err)
	}
	if cmd == codec.CmdGroupLeave {
		// No longer a member: nothing but the id.
		return &pb.GroupInfo{GroupId: g.ID}, nil
	}
	return groupInfo(g), nil
}

// handleGroupMembers runs GROUP_ADD and GROUP_REMOVE.
func (s *Server) handleGroupMembers(r *request) (proto.Message, *codec.Error) {
	req := r.msg.(*pb.GroupMembersRequest)
	return s.groupChange(r, req.GroupId, groupOp{users: req.Users})
}

// handleGroupTransfer runs GROUP_TRANSFER.
func (s *Server) handleGroupTransfer(r *request) (proto.Message, *codec.Error) {
	req := r.msg.(*pb.GroupTransferRequest)
	return s.groupChange(r, req.GroupId, groupOp{users: []string{req.User}})
}

// handleGroupAdmin runs GROUP_ADMIN.
func (s *Server) handleGroupAdmin(r *request) (proto.Message, *codec.Error) {
	req := r.msg.(*pb.GroupAdminRequest)
	return s.groupChange(r, req.GroupId, groupOp{users: []string{req.User}, admin: req.Admin})
}

// groupChange runs GROUP_ADD, GROUP_REMOVE, GROUP_TRANSFER and
// GROUP_ADMIN: op's arguments, by the caller.
func (s *Server) groupChange(r *request, groupID string, op groupOp) (proto.Message, *codec.Error) {
	c := r.c
	op.cmd, op.actor = r.h.Command, c.user
	if err := checkGroupOp(groupID, op); err != nil {
		return nil, s.failure(c, "update group", err)
	}
	if e := s.sendRate(c, now(r.src)); e != nil { // as for GROUP_JOIN and GROUP_LEAVE
		return nil, e
	}
	g, err := s.changeGroupChecked(r.ctx, groupID, op)
	if err != nil {
		return nil, s.failure(c, "update group", err)
	}
	return groupInfo(g), nil
}

// handleGroups answers GROUPS: a page of the caller's groups.
func (s *Server) handleGroups(r *request) (proto.Message, *codec.Error) {
	req, user := r.msg.(*pb.GroupsRequest), r.c.user
	if req.After != "" && !validID(req.After) {
		return nil, &codec.Error{Code: codec.CodeInvalidArgument, Message: "after must be empty or a group id"}
	}
	limit := int(req.Limit)
	switch {
	case limit == 0:
		limit = groupsPageDefault
	case limit > groupsPageMax:
		limit = groupsPageMax
	}
	gs, err := s.store.UserGroups(r.ctx, user, req.After, limit+1)
	if err != nil {
		return nil, s.storeFailure(r.c, "list groups", err)
	}
	out := &pb.GroupsOK{HasMore: len(gs) > limit}
	for _, g := range gs[:min(len(gs), limit)] {
		_, admin := slices.BinarySearch(g.Admins, user)
		out.Groups = append(out.Groups, &pb.GroupSummary{GroupId: g.ID, Name: validText(g.Name), Owner: g.Owner,
			Size: uint32(g.Size), Open: g.Open, Admin: admin})
	}
	return out, nil
}

// loadGroup reads a group from the store for c's request, or returns why
// it cannot.
func (s *Server) loadGroup(ctx context.Context, c *conn, id string) (persist.Group, *codec.Error) {
	if !validID(id) {
		return persist.Group{}, &codec.Error{Code: codec.CodeInvalidArgument, Message: "group_id must be a group id"}
	}
	g, err := s.store.GetGroup(ctx, id)
	if errors.Is(err, persist.ErrNotFound) {
		return g, &codec.Error{Code: codec.CodeUnknownGroup, Message: "no such group: " + id}
	}
	if err != nil {
		return g, s.storeFailure(c, "read group", err)
	}
	return g, nil
}

// checkNewGroup applies GROUP_CREATE's checks that need no store, in the
// protocol's order (the name, the member ids, then the size), and returns
// the members with the owner, sorted and without repeats.
func (s *Server) checkNewGroup(name, owner string, members []string) ([]string, error) {
	if len(name) > maxGroupName {
		return nil, refuse(codec.CodeInvalidArgument, "name must be at most %d bytes", maxGroupName)
	}
	for _, m := range members {
		if !validID(m) {
			return nil, refuse(codec.CodeInvalidArgument, "members must be user ids: 1..64 bytes of [A-Za-z0-9_.-]")
		}
	}
	members = append([]string{owner}, members...)
	slices.Sort(members)
	members = slices.Compact(members)
	if len(members) > s.cfg.MaxGroupSize {
		return nil, refuse(codec.CodeGroupFull, "more members than the maximum group size %d", s.cfg.MaxGroupSize)
	}
	return members, nil
}

// checkExist refuses with UNKNOWN_RECIPIENT the first of users without an
// account.
func (s *Server) checkExist(ctx context.Context, users []string) error {
	for _, m := range users {
		ok, err := s.userExists(ctx, m)
		if err != nil {
			return fmt.Errorf("engine: read member: %w", err)
		}
		if !ok {
			return refuse(codec.CodeUnknownRecipient, "no such user: %s", m)
		}
	}
	return nil
}

// createGroup stores a group owned by owner with members (checked by
// checkNewGroup) once every member is known to exist, and tells the
// observer (by is who asked).
func (s *Server) createGroup(ctx context.Context, owner, by, name string, members []string, open bool) (persist.Group, error) {
	if err := s.checkExist(ctx, members); err != nil {
		return persist.Group{}, err
	}
	g := persist.Group{ID: "g" + strconv.FormatUint(s.ids.next(), 36), Name: name, Owner: owner, Members: members,
		Open: open, Created: time.Now().UnixMilli()}
	if err := s.store.CreateGroup(ctx, g); err != nil {
		return persist.Group{}, fmt.Errorf("engine: create group: %w", err)
	}
	s.observeGroup(GroupChange{Kind: GroupCreated, Group: g.ID, User: g.Owner, By: by, Name: g.Name, Owner: g.Owner, Members: g.Members})
	// The state as stored (roles normalised), without reading it back: a
	// read could already see a later change.
	g, err := persist.NewGroupState(g)
	if err != nil {
		return g, err
	}
	// The initial members are announced as GROUP_ADD announces members:
	// each member's timeline starts with how it came into the group.
	ch := groupChange{oldOwner: g.Owner}
	for _, u := range g.Members {
		if u != owner {
			ch.added = append(ch.added, u)
		}
	}
	s.announce(ctx, g, groupOp{cmd: codec.CmdGroupCreate, actor: by}, &ch)
	return g, nil
}

// CreateGroup creates a group owned by owner (an existing account, made a
// member) with the given members, as GROUP_CREATE does; open groups take
// GROUP_JOIN from anyone, the others are invite-only.
func (s *Server) CreateGroup(ctx context.Context, owner, name string, members []string, open bool) (persist.Group, error) {
	if err := checkUserID("owner", owner); err != nil {
		return persist.Group{}, err
	}
	members, err := s.checkNewGroup(name, owner, members)
	if err != nil {
		return persist.Group{}, err
	}
	return s.createGroup(ctx, owner, "", name, members, open)
}

// Group returns group id with its members. Errors: UNKNOWN_GROUP, or the
// store's.
func (s *Server) Group(ctx context.Context, id string) (persist.Group, error) {
	if err := checkUserID("group_id", id); err != nil {
		return persist.Group{}, err
	}
	g, err := s.store.GetGroup(ctx, id)
	if errors.Is(err, persist.ErrNotFound) {
		return g, refuse(codec.CodeUnknownGroup, "no such group: %s", id)
	}
	if err != nil {
		return g, fmt.Errorf("engine: read group: %w", err)
	}
	return g, nil
}

// AddGroupMember adds user (an existing account) to group id as an
// operator (invite-only or not) and returns the group (idempotent).
// Errors: UNKNOWN_GROUP, UNKNOWN_RECIPIENT, GROUP_FULL, or the store's.
func (s *Server) AddGroupMember(ctx context.Context, id, user string) (persist.Group, error) {
	return s.changeGroupChecked(ctx, id, groupOp{cmd: codec.CmdGroupAdd, users: []string{user}})
}

// RemoveGroupMember removes user from group id as an operator and returns
// the group (idempotent). Removing the owner hands ownership on; removing
// the last member dissolves the group.
func (s *Server) RemoveGroupMember(ctx context.Context, id, user string) (persist.Group, error) {
	return s.changeGroupChecked(ctx, id, groupOp{cmd: codec.CmdGroupRemove, users: []string{user}})
}

// groupOp is one change of a group: the command that asks for it, who
// asks ("" for an operator, who has every right), and its arguments.
type groupOp struct {
	cmd   codec.Command
	actor string
	users []string // GROUP_ADD, GROUP_REMOVE; [0] for GROUP_TRANSFER and GROUP_ADMIN
	admin bool     // GROUP_ADMIN
}

// changeGroupChecked checks the ids of a GROUP_ADD, GROUP_REMOVE,
// GROUP_TRANSFER or GROUP_ADMIN (and, for an add, that the users exist)
// before changeGroup.
func (s *Server) changeGroupChecked(ctx context.Context, id string, op groupOp) (persist.Group, error) {
	if err := checkGroupOp(id, op); err != nil {
		return persist.Group{}, err
	}
	if op.cmd == codec.CmdGroupAdd {
		if err := s.checkExist(ctx, op.users); err != nil {
			return persist.Group{}, err
		}
	}
	return s.changeGroup(ctx, id, op)
}

// checkGroupOp checks the ids of a GROUP_ADD, GROUP_REMOVE, GROUP_TRANSFER
// or GROUP_ADMIN.
func checkGroupOp(id string, op groupOp) error {
	if err := checkUserID("group_id", id); err != nil {
		return err
	}
	switch {
	case len(op.users) == 0:
		return refuse(codec.CodeInvalidArgument, "users must name at least one user")
	case len(op.users) > maxGroupUsers:
		return refuse(codec.CodeInvalidArgument, "at most %d users per request", maxGroupUsers)
	}
	for _, u := range op.users {
		if err := checkUserID("user", u); err != nil {
			return err
		}
		if op.cmd == codec.CmdGroupRemove && u == op.actor {
			return refuse(codec.CodeInvalidArgument, "use GROUP_LEAVE to leave %s", id)
		}
	}
	return nil
}

// groupChange is what one application of a groupOp changed.
type groupChange struct {
	added, removed []string
	oldOwner       string
	admin          string // the user whose admin role changed
}

// changeGroup applies op to group id in one atomic store update, then
// forgets the cached member list, tells the observer and announces the
// change in the group. It returns the group as stored. Refusals are
// *Error.
func (s *Server) changeGroup(ctx context.Context, id string, op groupOp) (persist.Group, error) {
	var ch groupChange
	g, err := s.store.UpdateGroup(ctx, id, func(g *persist.Group) error {
		ch = groupChange{oldOwner: g.Owner}
		return s.applyGroupOp(g, op, &ch)
	})
	// Even a failed update may have been stored (a write abandoned by its
	// context): the next GROUP_SEND reads the members again.
	s.groups.forget(id)
	var e *Error
	switch {
	case errors.As(err, &e):
		return persist.Group{}, e
	case errors.Is(err, persist.ErrNotFound):
		return persist.Group{}, refuse(codec.CodeUnknownGroup, "no such group: %s", id)
	case errors.Is(err, persist.ErrGroupFull):
		return persist.Group{}, refuse(codec.CodeGroupFull, "group is full")
	case err != nil:
		return persist.Group{}, fmt.Errorf("engine: update group: %w", err)
	}
	for _, u := range ch.added {
		s.observeGroup(GroupChange{Kind: GroupMemberAdded, Group: id, User: u, By: op.actor})
	}
	for _, u := range ch.removed {
		s.observeGroup(GroupChange{Kind: GroupMemberRemoved, Group: id, User: u, By: op.actor})
	}
	if g.Owner != ch.oldOwner && g.Owner != "" {
		by := op.actor
		if op.cmd != codec.CmdGroupTransfer {
			by = "" // it followed from the owner leaving or being removed
		}
		s.observeGroup(GroupChange{Kind: GroupOwnerChanged, Group: id, User: g.Owner, By: by})
	}
	if ch.admin != "" {
		kind := GroupAdminRemoved
		if op.admin {
			kind = GroupAdminAdded
		}
		s.observeGroup(GroupChange{Kind: kind, Group: id, User: ch.admin, By: op.actor})
	}
	s.announce(ctx, g, op, &ch)
	return g, nil
}

// applyGroupOp checks op against g's current state and applies it; it
// records what changed in ch. It runs inside the store's update, so it
// depends on nothing but its arguments.
func (s *Server) applyGroupOp(g *persist.Group, op groupOp, ch *groupChange) error {
	actor := op.actor
	if actor != "" && op.cmd != codec.CmdGroupJoin && !g.IsMember(actor) {
		if op.cmd == codec.CmdGroupLeave {
			return persist.ErrUnchanged // leaving a group you are not in
		}
		return refuse(codec.CodeNotGroupMember, "not a member of %s", g.ID)
	}
	owner := actor == "" || actor == g.Owner
	switch op.cmd {
	case codec.CmdGroupJoin:
		if g.IsMember(actor) {
			return persist.ErrUnchanged
		}
		if !g.Open {
			return refuse(codec.CodeGroupInviteOnly, "%s is invite-only: ask its owner or an admin to add you", g.ID)
		}
		if len(g.Members) >= s.cfg.MaxGroupSize {
			return refuse(codec.CodeGroupFull, "group is full")
		}
		g.Add(actor)
		ch.added = []string{actor}
	case codec.CmdGroupLeave:
		g.Remove(actor)
		ch.removed = []string{actor}
	case codec.CmdGroupAdd:
		if !owner && !g.IsAdmin(actor) {
			return refuse(codec.CodeNotGroupAdmin, "only the owner and admins of %s add members", g.ID)
		}
		for _, u := range op.users {
			if g.Add(u) {
				ch.added = append(ch.added, u)
			}
		}
		if len(g.Members) > s.cfg.MaxGroupSize {
			return refuse(codec.CodeGroupFull, "more members than the maximum group size %d", s.cfg.MaxGroupSize)
		}
	case codec.CmdGroupRemove:
		if !owner && !g.IsAdmin(actor) {
			return refuse(codec.CodeNotGroupAdmin, "only the owner and admins of %s remove members", g.ID)
		}
		for _, u := range op.users {
			if !owner && (u == g.Owner || g.IsAdmin(u)) {
				return refuse(codec.CodeNotGroupOwner, "only the owner of %s removes its admins", g.ID)
			}
			if g.Remove(u) {
				ch.removed = append(ch.removed, u)
			}
		}
	case codec.CmdGroupTransfer, codec.CmdGroupAdmin:
		u := op.users[0]
		if !owner {
			return refuse(codec.CodeNotGroupOwner, "only the owner of %s may do this", g.ID)
		}
		if !g.IsMember(u) {
			return refuse(codec.CodeNotGroupMember, "%s is not a member of %s", u, g.ID)
		}
		if op.cmd == codec.CmdGroupTransfer {
			if u == g.Owner {
				return persist.ErrUnchanged
			}
			// The former owner stays on as an admin.
			g.SetAdmin(g.Owner, true)
			g.Owner = u
			g.SetAdmin(u, false)
			break
		}
		if u == g.Owner {
			return refuse(codec.CodeInvalidArgument, "%s owns %s: the owner is not an admin", u, g.ID)
		}
		if g.IsAdmin(u) == op.admin {
			return persist.ErrUnchanged
		}
		g.SetAdmin(u, op.admin)
		ch.admin = u
	default:
		return fmt.Errorf("engine: %s is not a group change", op.cmd)
	}
	if len(ch.added) == 0 && len(ch.removed) == 0 && ch.admin == "" && g.Owner == ch.oldOwner {
		return persist.ErrUnchanged
	}
	return nil
}

// announce stores the membership events of ch in the group: in the inbox
// of every member and of every removed user (who so learns of it), pushed
// like any message. An event that cannot be stored is logged: the change
// itself stands.
func (s *Server) announce(ctx context.Context, g persist.Group, op groupOp, ch *groupChange) {
	var events []codec.GroupEvent
	if len(ch.added) > 0 {
		events = append(events, codec.GroupEvent{Type: codec.GroupEventAdded, Users: ch.added, By: op.actor})
	}
	if len(ch.removed) > 0 {
		events = append(events, codec.GroupEvent{Type: codec.GroupEventRemoved, Users: ch.removed, By: op.actor})
	}
	if g.Owner != ch.oldOwner && g.Owner != "" {
		by := op.actor
		if op.cmd != codec.CmdGroupTransfer {
			by = "" // it followed from the owner leaving or being removed
		}
		events = append(events, codec.GroupEvent{Type: codec.GroupEventOwnerChanged, Users: []string{g.Owner}, By: by})
	}
	if ch.admin != "" {
		t := codec.GroupEventAdminRemoved
		if op.admin {
			t = codec.GroupEventAdminAdded
		}
		events = append(events, codec.GroupEvent{Type: t, Users: []string{ch.admin}, By: op.actor})
	}
	if len(events) == 0 {
		return
	}
	inboxes := append(slices.Clone(g.Members), ch.removed...)
	if len(inboxes) == 0 {
		return
	}
	for _, ev := range events {
		body, err := json.Marshal(ev)
		if err == nil {
			err = s.systemGroupMessage(ctx, g.ID, inboxes, body, op.actor)
		}
		if err != nil {
			s.log.Warn("group event not stored", "group", g.ID, "event", ev.Type, "err", err)
		}
	}
}

// systemGroupMessage stores a system message of kind codec.KindGroupEvent
// in group id's conversation of each inbox and pushes it. The event has no
// sender, so actor (who made the change; "" for an operator) has their
// read cursor raised to it, as a sender's own message does: nobody sees
// their own change as unread. The cursor is raised before the pushes, so
// a device that reads its conversations on the push sees it read.
func (s *Server) systemGroupMessage(ctx context.Context, id string, inboxes []string, body []byte, actor string) error {
	now := time.Now().UnixMilli()
	mid := s.ids.nextAt(now)
	msg := persist.Message{ID: mid, To: id, Group: true, ClientMsgID: "sys-" + strconv.FormatUint(mid, 36),
		Timestamp: now, Kind: codec.KindGroupEvent, Body: body}
	res, err := s.appendInboxes(ctx, msg, inboxes)
	if err != nil {
		return err
	}
	s.metrics.messages.Inc()
	if i := slices.Index(inboxes, actor); actor != "" && i >= 0 {
		s.readOwnEvent(ctx, actor, id, res.Seqs[i])
	}
	s.deliver(nil, nil, &res.Msg, inboxes, res.Seqs, nil)
	return nil
}

// readOwnEvent raises actor's read cursor in group id to seq, the seq of a
// membership event actor caused. It reads and writes the chat store (in a
// cluster the shared one, where cursors only rise); a store without the
// chat seam keeps no cursors. A failure is logged: the event stands and
// only counts as unread.
func (s *Server) readOwnEvent(ctx context.Context, actor, id string, seq uint64) {
	cs := s.chatStore()
	if cs == nil {
		return
	}
	if _, err := cs.MarkRead(ctx, actor, persist.ConvID{ID: id, Group: true}, seq); err != nil {
		s.log.Warn("own group event not marked read", "group", id, "user", actor, "err", err)
	}
}
