package client

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

// The chat commands (docs/protocol.md §4.8): conversations with unread
// counts, read cursors and receipts, typing, recall, delete-for-me,
// history and read counts. Recall and delete events are inbox entries:
// they arrive on Messages like messages, with Event set (pb.Message.Event
// 1 = recall, 2 = delete) and TargetMsgId naming the message they are
// about; the application applies them to that message and does not show
// them. Receipts and typing indications arrive on ChatEvents.

// Conv names a conversation from the user's side: a peer (1:1) or a group.
// Exactly one field is set; build it with Peer or Group.
type Conv struct {
	Peer    string
	GroupID string
}

// Peer names the 1:1 conversation with user.
func Peer(user string) Conv { return Conv{Peer: user} }

// Group names a group's conversation.
func Group(id string) Conv { return Conv{GroupID: id} }

// ConvOf returns the conversation a message of the user's inbox belongs
// to (the rule of docs/protocol.md §4.4), for user = the receiving user.
func ConvOf(user string, m *pb.Message) Conv {
	switch {
	case m.GetGroupId() != "":
		return Group(m.GetGroupId())
	case m.GetFrom() == user:
		return Peer(m.GetTo())
	}
	return Peer(m.GetFrom())
}

// String returns "@peer" or "#group".
func (c Conv) String() string {
	if c.GroupID != "" {
		return "#" + c.GroupID
	}
	return "@" + c.Peer
}

func (c Conv) check() error {
	if (c.Peer == "") == (c.GroupID == "") {
		return invalidArg("a conversation names exactly one of a peer and a group")
	}
	return nil
}

// ChatEvent is a server notification about a conversation: exactly one of
// Receipt (a read cursor moved: another device of the user read, or the
// peer of a 1:1 conversation did) and Typing is set.
type ChatEvent struct {
	Receipt *pb.Receipt
	Typing  *pb.TypingEvent
}

// ChatEvents returns receipts and typing indications. Like notices they
// are best-effort: an event arriving while the channel
// (Config.ChatEventBuffer) is full is dropped (CONVERSATIONS has the read
// cursors; typing expires by itself). The channel is closed when the
// Client stops.
func (c *Client) ChatEvents() <-chan ChatEvent { return c.chatEvents }

func (c *Client) onChatEvent(e ChatEvent) {
	select {
	case c.chatEvents <- e:
	default:
		c.log.Debug("chat event dropped: ChatEvents channel full")
	}
}

// chat runs an idempotent chat request (retried like Send).
func (c *Client) chat(ctx context.Context, cmd, want codec.Command, req proto.Message, resp func() proto.Message) (proto.Message, error) {
	return c.do(ctx, request{cmd: cmd, want: want, body: req, newResp: resp, mode: retryAll, wait: true})
}

// Conversations returns a page of the user's conversations, newest
// activity first, each with its last message, read cursor and unread
// count: those whose LastSeq is below beforeSeq (0: the newest), at most
// limit (0: the server's default, 50; at most 200). Page on with beforeSeq
// = the last one's LastSeq while HasMore.
func (c *Client) Conversations(ctx context.Context, beforeSeq uint64, limit uint32) (*pb.ConversationsOK, error) {
	resp, err := c.chat(ctx, codec.CmdConversations, codec.CmdConversationsOK, &pb.ConversationsRequest{BeforeSeq: beforeSeq, Limit: limit},
		func() proto.Message { return new(pb.ConversationsOK) })
	if err != nil {
		return nil, fmt.Errorf("client: conversations: %w", err)
	}
	return resp.(*pb.ConversationsOK), nil
}

// Read moves the user's read cursor in conv forward to upToSeq (a seq of
// the user's inbox; 0 = everything so far). The server keeps the highest
// cursor it was given and tells the user's other devices and, in 1:1
// conversations, the peer (ChatEvents).
func (c *Client) Read(ctx context.Context, conv Conv, upToSeq uint64) (*pb.ReadOK, error) {
	if err := conv.check(); err != nil {
		return nil, err
	}
	resp, err := c.chat(ctx, codec.CmdRead, codec.CmdReadOK, &pb.ReadRequest{Peer: conv.Peer, GroupId: conv.GroupID, UpToSeq: upToSeq},
		func() proto.Message { return new(pb.ReadOK) })
	if err != nil {
		return nil, fmt.Errorf("client: read %s: %w", conv, err)
	}
	return resp.(*pb.ReadOK), nil
}

// Typing tells the other members of conv that the user is typing (on) or
// stopped. It is sent once, without a reply and without retries (a typing
// indication is advisory and expires by itself: send it again every few
// seconds while typing). It fails only when there is no connection.
func (c *Client) Typing(conv Conv, on bool) error {
	if err := conv.check(); err != nil {
		return err
	}
	cn := c.liveConn()
	if cn == nil {
		return fmt.Errorf("client: typing: %w", ErrConnectionLost)
	}
	if err := cn.write(codec.CmdTyping, 0, c.nextSeq(), &pb.TypingRequest{Peer: conv.Peer, GroupId: conv.GroupID, On: on}); err != nil {
		return fmt.Errorf("client: typing: %w", err)
	}
	return nil
}

// Recall withdraws a message the user sent, for everyone, within the
// server's recall window (default 2 minutes). Idempotent: a repeat
// reports Duplicate. Errors: NOT_SENDER, RECALL_EXPIRED, UNKNOWN_MESSAGE.
func (c *Client) Recall(ctx context.Context, msgID uint64) (*pb.EventOK, error) {
	return c.event(ctx, codec.CmdRecall, codec.CmdRecallOK, "recall", msgID)
}

// Delete hides a message from the user's own views (all its devices).
// Idempotent: a repeat reports Duplicate.
func (c *Client) Delete(ctx context.Context, msgID uint64) (*pb.EventOK, error) {
	return c.event(ctx, codec.CmdDelete, codec.CmdDeleteOK, "delete", msgID)
}

func (c *Client) event(ctx context.Context, cmd, want codec.Command, verb string, msgID uint64) (*pb.EventOK, error) {
	if msgID == 0 {
		return nil, invalidArg("message id is 0")
	}
	resp, err := c.chat(ctx, cmd, want, &pb.MessageRequest{MsgId: msgID}, func() proto.Message { return new(pb.EventOK) })
	if err != nil {
		return nil, fmt.Errorf("client: %s %d: %w", verb, msgID, err)
	}
	return resp.(*pb.EventOK), nil
}

// History returns a page of conv's messages below beforeSeq (0: the
// newest), at most limit (0: the server's default, 50; at most 200), in
// ascending seq order. Page backwards with beforeSeq = the first message's
// seq while HasMore.
func (c *Client) History(ctx context.Context, conv Conv, beforeSeq uint64, limit uint32) (*pb.HistoryOK, error) {
	if err := conv.check(); err != nil {
		return nil, err
	}
	resp, err := c.chat(ctx, codec.CmdHistory, codec.CmdHistoryOK,
		&pb.HistoryRequest{Peer: conv.Peer, GroupId: conv.GroupID, BeforeSeq: beforeSeq, Limit: limit},
		func() proto.Message { return new(pb.HistoryOK) })
	if err != nil {
		return nil, fmt.Errorf("client: history of %s: %w", conv, err)
	}
	return resp.(*pb.HistoryOK), nil
}

// ReadCount reports how many members other than its sender have read the
// message at seq (of the user's inbox) of conv, out of how many.
func (c *Client) ReadCount(ctx context.Context, conv Conv, seq uint64) (*pb.ReadCountOK, error) {
	if err := conv.check(); err != nil {
		return nil, err
	}
	resp, err := c.chat(ctx, codec.CmdReadCount, codec.CmdReadCountOK, &pb.ReadCountRequest{Peer: conv.Peer, GroupId: conv.GroupID, Seq: seq},
		func() proto.Message { return new(pb.ReadCountOK) })
	if err != nil {
		return nil, fmt.Errorf("client: read count in %s: %w", conv, err)
	}
	return resp.(*pb.ReadCountOK), nil
}
