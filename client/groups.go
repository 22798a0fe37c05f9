package client

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// Group access control (docs/protocol.md §4.5). Membership changes also
// arrive through Messages as system messages of the group (From "", Kind
// codec.KindGroupEvent, a JSON body that codec.ParseGroupEvent reads).

// CreateOpenGroup creates a group that anyone who knows its id may join
// (JoinGroup); CreateGroup's groups are invite-only. Retried as
// CreateGroup.
func (c *Client) CreateOpenGroup(ctx context.Context, name string, members ...string) (*pb.GroupInfo, error) {
	gi, err := c.group(ctx, codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: name, Members: members, Open: true}, retryServer)
	if err != nil {
		return nil, fmt.Errorf("client: create group %q: %w", name, err)
	}
	return gi, nil
}

// AddGroupMembers adds users to a group (the owner and admins only;
// idempotent, retried like Send).
func (c *Client) AddGroupMembers(ctx context.Context, groupID string, users ...string) (*pb.GroupInfo, error) {
	return c.groupChange(ctx, codec.CmdGroupAdd, "add to", groupID, &pb.GroupMembersRequest{GroupId: groupID, Users: users}, retryAll)
}

// RemoveGroupMembers removes users from a group (the owner and admins; an
// admin removes neither the owner nor another admin; idempotent, retried
// like Send).
func (c *Client) RemoveGroupMembers(ctx context.Context, groupID string, users ...string) (*pb.GroupInfo, error) {
	return c.groupChange(ctx, codec.CmdGroupRemove, "remove from", groupID, &pb.GroupMembersRequest{GroupId: groupID, Users: users}, retryAll)
}

// TransferGroup makes user, a member, the owner of a group (the owner
// only; the former owner becomes an admin). A retry after a lost reply
// could find the caller no longer owner, so only retryable server errors
// are retried.
func (c *Client) TransferGroup(ctx context.Context, groupID, user string) (*pb.GroupInfo, error) {
	return c.groupChange(ctx, codec.CmdGroupTransfer, "transfer", groupID, &pb.GroupTransferRequest{GroupId: groupID, User: user}, retryServer)
}

// SetGroupAdmin gives user, a member, the admin role of a group or takes
// it away (the owner only; idempotent, retried like Send).
func (c *Client) SetGroupAdmin(ctx context.Context, groupID, user string, admin bool) (*pb.GroupInfo, error) {
	return c.groupChange(ctx, codec.CmdGroupAdmin, "set admin of", groupID, &pb.GroupAdminRequest{GroupId: groupID, User: user, Admin: admin}, retryAll)
}

func (c *Client) groupChange(ctx context.Context, cmd codec.Command, verb, groupID string, req proto.Message, mode retryMode) (*pb.GroupInfo, error) {
	if groupID == "" {
		return nil, invalidArg("group id is empty")
	}
	gi, err := c.group(ctx, cmd, req, mode)
	if err != nil {
		return nil, fmt.Errorf("client: %s group %s: %w", verb, groupID, err)
	}
	return gi, nil
}

// Groups returns a page of the user's groups, ascending by group id, after
// the group id after ("" for the first page), at most limit (0: the
// server's default, 50), and whether more follow. Retried like Send.
func (c *Client) Groups(ctx context.Context, after string, limit int) ([]*pb.GroupSummary, bool, error) {
	if limit < 0 {
		return nil, false, invalidArg("limit is negative")
	}
	resp, err := c.do(ctx, request{cmd: codec.CmdGroups, want: codec.CmdGroupsOK, body: &pb.GroupsRequest{After: after, Limit: uint32(min(limit, 1<<31))},
		newResp: func() proto.Message { return new(pb.GroupsOK) }, mode: retryAll, wait: true})
	if err != nil {
		return nil, false, fmt.Errorf("client: groups: %w", err)
	}
	ok := resp.(*pb.GroupsOK)
	return ok.GetGroups(), ok.GetHasMore(), nil
}
