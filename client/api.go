package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

// SendOption adjusts one Send or SendGroup.
type SendOption func(*sendOptions)

type sendOptions struct {
	clientMsgID string
	kind        uint32
}

// WithClientMsgID sets the idempotency key instead of a fresh random one.
// Reusing the id of a message already stored returns that message's
// original SEND_ACK (Duplicate = true) and stores nothing. Use it to retry
// a send across restarts (persist the id with the unsent message; see
// NewClientMsgID). 1..64 bytes.
func WithClientMsgID(id string) SendOption { return func(o *sendOptions) { o.clientMsgID = id } }

// WithKind sets the application-defined content kind (0 = text).
func WithKind(kind uint32) SendOption { return func(o *sendOptions) { o.kind = kind } }

func buildSendOptions(opts []SendOption) (sendOptions, error) {
	var o sendOptions
	for _, f := range opts {
		f(&o)
	}
	if o.clientMsgID == "" {
		o.clientMsgID = NewClientMsgID()
	} else if len(o.clientMsgID) > 64 {
		return o, invalidArg("client_msg_id longer than 64 bytes")
	}
	return o, nil
}

// Send sends a 1:1 message to user to and returns its SEND_ACK once the
// message is durable on the server.
//
// Retries: on a retryable server error (honouring retry_after_ms), a
// timeout (Config.RequestTimeout) or a lost connection, Send retries with
// the same client_msg_id (flag RESENT), on a new connection if needed,
// after a jittered backoff, until it is acknowledged, ctx ends or the
// Client stops; the server stores the message at most once. Bound the wait
// with ctx. When ctx ends first the outcome is unknown: retry later with
// WithClientMsgID and the same id to be sure.
//
// Errors: a non-retryable *Error (UNKNOWN_RECIPIENT, INVALID_ARGUMENT,
// ...), ctx's error (wrapping context.DeadlineExceeded or Canceled), or the
// Client's final error (ErrClosed, a kick).
//
// The sent message is also an entry of the sender's inbox, at
// SendAck.Seq; unless SendOnly it appears on Messages too (From = User()).
// body is copied for that and may be reused after Send returns.
func (c *Client) Send(ctx context.Context, to string, body []byte, opts ...SendOption) (*pb.SendAck, error) {
	o, err := buildSendOptions(opts)
	if err != nil {
		return nil, err
	}
	if to == "" {
		return nil, invalidArg("recipient is empty")
	}
	req := &pb.SendRequest{ClientMsgId: o.clientMsgID, To: to, Kind: o.kind, Body: body}
	ack, err := c.send(ctx, codec.CmdSend, req)
	if err != nil {
		return nil, fmt.Errorf("client: send to %s: %w", to, err)
	}
	c.ownMessage(ack, &pb.Message{To: to, ClientMsgId: o.clientMsgID, Kind: o.kind, Body: body})
	return ack, nil
}

// SendGroup sends a message to a group the user is a member of. It has the
// same guarantees, retries and errors as Send (plus UNKNOWN_GROUP,
// NOT_GROUP_MEMBER).
func (c *Client) SendGroup(ctx context.Context, groupID string, body []byte, opts ...SendOption) (*pb.SendAck, error) {
	o, err := buildSendOptions(opts)
	if err != nil {
		return nil, err
	}
	if groupID == "" {
		return nil, invalidArg("group id is empty")
	}
	req := &pb.GroupSendRequest{ClientMsgId: o.clientMsgID, GroupId: groupID, Kind: o.kind, Body: body}
	ack, err := c.send(ctx, codec.CmdGroupSend, req)
	if err != nil {
		return nil, fmt.Errorf("client: send to group %s: %w", groupID, err)
	}
	c.ownMessage(ack, &pb.Message{To: groupID, GroupId: groupID, ClientMsgId: o.clientMsgID, Kind: o.kind, Body: body})
	return ack, nil
}

func (c *Client) send(ctx context.Context, cmd codec.Command, req proto.Message) (*pb.SendAck, error) {
	resp, err := c.do(ctx, request{cmd: cmd, want: codec.CmdSendAck, body: req,
		newResp: func() proto.Message { return new(pb.SendAck) }, mode: retryAll, wait: true})
	if err != nil {
		return nil, err
	}
	return resp.(*pb.SendAck), nil
}

// ownMessage feeds the sender's own inbox entry (the server does not push
// it to the sending connection) to the delivery goroutine.
func (c *Client) ownMessage(ack *pb.SendAck, m *pb.Message) {
	if c.cfg.SendOnly || ack.GetSeq() == 0 {
		return
	}
	m.Seq, m.MsgId, m.Time = ack.GetSeq(), ack.GetMsgId(), ack.GetTime()
	m.From = c.User()
	m.Body = bytes.Clone(m.Body)
	c.offer([]*pb.Message{m})
}

// CreateGroup creates an invite-only group owned by the user, with the
// given other members (the creator is always a member). It retries retryable server
// errors, but not timeouts or lost connections (a retry could create a
// second group): those fail with ErrTimeout or ErrConnectionLost ("outcome
// unknown").
func (c *Client) CreateGroup(ctx context.Context, name string, members ...string) (*pb.GroupInfo, error) {
	gi, err := c.group(ctx, codec.CmdGroupCreate, &pb.GroupCreateRequest{Name: name, Members: members}, retryServer)
	if err != nil {
		return nil, fmt.Errorf("client: create group %q: %w", name, err)
	}
	return gi, nil
}

// JoinGroup adds the user to an open group (idempotent; retried like
// Send); an invite-only group refuses it with GROUP_INVITE_ONLY.
func (c *Client) JoinGroup(ctx context.Context, groupID string) (*pb.GroupInfo, error) {
	return c.groupOp(ctx, codec.CmdGroupJoin, "join", groupID)
}

// LeaveGroup removes the user from a group (idempotent; retried like
// Send). The GroupInfo returned holds only the group id: the user is no
// member any more. An owner who leaves hands the group on to its most
// senior admin, else its most senior member; the last member's leave
// dissolves it.
func (c *Client) LeaveGroup(ctx context.Context, groupID string) (*pb.GroupInfo, error) {
	return c.groupOp(ctx, codec.CmdGroupLeave, "leave", groupID)
}

// GroupMembers returns a group's info and members (members only).
func (c *Client) GroupMembers(ctx context.Context, groupID string) (*pb.GroupInfo, error) {
	return c.groupOp(ctx, codec.CmdGroupMembers, "members of", groupID)
}

func (c *Client) groupOp(ctx context.Context, cmd codec.Command, verb, groupID string) (*pb.GroupInfo, error) {
	if groupID == "" {
		return nil, invalidArg("group id is empty")
	}
	gi, err := c.group(ctx, cmd, &pb.GroupRequest{GroupId: groupID}, retryAll)
	if err != nil {
		return nil, fmt.Errorf("client: %s group %s: %w", verb, groupID, err)
	}
	return gi, nil
}

func (c *Client) group(ctx context.Context, cmd codec.Command, req proto.Message, mode retryMode) (*pb.GroupInfo, error) {
	resp, err := c.do(ctx, request{cmd: cmd, want: codec.CmdGroupInfo, body: req,
		newResp: func() proto.Message { return new(pb.GroupInfo) }, mode: mode, wait: true})
	if err != nil {
		return nil, err
	}
	return resp.(*pb.GroupInfo), nil
}

// Presence reports which of users are online and on which devices (at
// most 500 users per call). Retried like Send.
func (c *Client) Presence(ctx context.Context, users ...string) ([]*pb.UserPresence, error) {
	if len(users) == 0 {
		return nil, nil
	}
	resp, err := c.do(ctx, request{cmd: codec.CmdPresence, want: codec.CmdPresenceOK, body: &pb.PresenceRequest{Users: users},
		newResp: func() proto.Message { return new(pb.PresenceOK) }, mode: retryAll, wait: true})
	if err != nil {
		return nil, fmt.Errorf("client: presence: %w", err)
	}
	return resp.(*pb.PresenceOK).GetUsers(), nil
}

// SyncNow syncs the inbox from the last delivered seq right away (the
// Client already syncs on every (re)connect and on gaps; call this e.g.
// when the application returns to the foreground, to catch a lost push of
// the latest message). It returns when the sync completed and its messages
// were handed to Messages (so it waits for a slow reader), or with the
// sync's error, ctx's error or ErrClosed. While disconnected it waits for
// the reconnect's sync.
func (c *Client) SyncNow(ctx context.Context) error {
	if c.cfg.SendOnly {
		return errors.New("client: SyncNow on a SendOnly client")
	}
	w := make(chan error, 1)
	select {
	case c.syncReq <- w:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return c.Err()
	}
	select {
	case err := <-w:
		if err != nil {
			return fmt.Errorf("client: sync: %w", err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Logout flushes the PUSH_ACK, sends LOGOUT, waits for LOGOUT_OK (at most
// RequestTimeout or ctx) and closes the Client. The device's cursor stays
// on the server. The Client is closed even when Logout returns an error.
func (c *Client) Logout(ctx context.Context) error {
	defer c.Close()
	if !c.cfg.SendOnly {
		w := make(chan struct{})
		select {
		case c.ackReq <- w:
			<-w
		case <-ctx.Done():
		case <-c.ctx.Done():
		}
	}
	c.mu.Lock()
	c.loggingOut = true
	c.mu.Unlock()
	_, err := c.do(ctx, request{cmd: codec.CmdLogout, want: codec.CmdLogoutOK, body: &pb.Empty{},
		newResp: func() proto.Message { return new(pb.Empty) }, mode: retryNone})
	if err != nil && !errors.Is(err, ErrConnectionLost) { // the server may close before we read LOGOUT_OK
		return fmt.Errorf("client: logout: %w", err)
	}
	return nil
}
