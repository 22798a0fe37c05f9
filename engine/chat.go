package engine

import (
	"context"
	"errors"
	"slices"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"github.com/imgn/imgn/persist"
)

// The chat commands (docs/protocol.md §4.8, §6.12-§6.16): CONVERSATIONS,
// READ (with RECEIPT pushes), TYPING (forwarded, never stored), RECALL and
// DELETE (events appended to inboxes, then pushed), HISTORY and
// READ_COUNT. They run like every other request: on the loop when the
// store never blocks, else on a worker, one at a time per connection.
//
// Everything but TYPING needs a store with the persist.ChatStore seam; in
// cluster mode one with the persist.EventPreparer seam, the store all
// nodes share (chat_cluster.go); otherwise the answer is UNSUPPORTED.

// Page sizes of CONVERSATIONS and HISTORY.
const (
	chatPageDefault = 50
	chatPageMax     = 200
)

// chatStore returns the store's chat seam, or nil when this node cannot
// serve the chat commands that need it.
func (s *Server) chatStore() persist.ChatStore {
	if s.cfg.Cluster != nil {
		ep, _ := s.store.(persist.EventPreparer)
		if ep == nil {
			return nil
		}
		return ep
	}
	cs, _ := s.store.(persist.ChatStore)
	return cs
}

// errNoChat answers the chat commands on a node whose store cannot serve
// them.
var errNoChat = &Error{Code: codec.CodeUnsupported, Message: "this node's store does not keep conversations"}

// chatSeam returns chatStore, or errNoChat when there is none.
func (s *Server) chatSeam() (persist.ChatStore, error) {
	if cs := s.chatStore(); cs != nil {
		return cs, nil
	}
	return nil, errNoChat
}

// execChat runs a decoded chat request for logged-in c.
func (s *Server) execChat(ctx context.Context, src *loop, c *conn, h codec.Header, req proto.Message) {
	if t, ok := req.(*pb.TypingRequest); ok {
		s.handleTyping(ctx, src, c, h, t)
		return
	}
	cs, err := s.chatSeam()
	if err != nil {
		s.replyFailure(src, c, h, "", err)
		return
	}
	switch req := req.(type) {
	case *pb.ConversationsRequest:
		s.handleConversations(ctx, src, c, h, cs, req)
	case *pb.ReadRequest:
		s.handleRead(ctx, src, c, h, cs, req)
	case *pb.MessageRequest:
		s.handleChatEvent(ctx, src, c, h, cs, req)
	case *pb.HistoryRequest:
		s.handleHistory(ctx, src, c, h, cs, req)
	case *pb.ReadCountRequest:
		s.handleReadCount(ctx, src, c, h, cs, req)
	}
}

// convID checks a request's conversation (exactly one of peer and group)
// and answers INVALID_ARGUMENT when it is malformed.
func convID(src *loop, c *conn, h codec.Header, peer, group string) (persist.ConvID, bool) {
	id := persist.ConvID{ID: peer}
	if group != "" {
		id = persist.ConvID{ID: group, Group: true}
	}
	if (peer == "") == (group == "") || !validID(id.ID) {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeInvalidArgument, "set exactly one of peer and group_id, a valid id", 0)
		return id, false
	}
	return id, true
}

// names returns the peer and group_id fields naming id.
func names(id persist.ConvID) (peer, group string) {
	if id.Group {
		return "", id.ID
	}
	return id.ID, ""
}

// pageLimit applies the chat page default and cap.
func pageLimit(limit uint32) int {
	if limit == 0 {
		return chatPageDefault
	}
	return min(int(limit), chatPageMax)
}

// entryPB is an inbox entry as the wire carries it.
func entryPB(e *persist.InboxEntry) *pb.Message {
	m := toPB(e.Seq, &e.Msg)
	m.Deleted = e.Deleted
	return m
}

// conversations reads a page of user's conversations: the newest limit
// (pageLimit) below beforeSeq, and whether more follow.
func (s *Server) conversations(ctx context.Context, cs persist.ChatStore, user string, beforeSeq uint64, limit uint32) ([]persist.Conversation, bool, error) {
	n := pageLimit(limit)
	list, err := cs.Conversations(ctx, user, beforeSeq, n+1)
	if err != nil {
		return nil, false, &opError{what: "read conversations", err: err}
	}
	return list[:min(len(list), n)], len(list) > n, nil
}

func (s *Server) handleConversations(ctx context.Context, src *loop, c *conn, h codec.Header, cs persist.ChatStore, req *pb.ConversationsRequest) {
	list, more, err := s.conversations(ctx, cs, c.user, req.BeforeSeq, req.Limit)
	if err != nil {
		s.replyFailure(src, c, h, "", err)
		return
	}
	out := &pb.ConversationsOK{HasMore: more}
	out.Conversations = make([]*pb.Conversation, len(list))
	for i := range list {
		cv := &list[i]
		p := &pb.Conversation{LastSeq: cv.LastSeq, ReadSeq: cv.ReadSeq, Unread: uint32(min(cv.Unread, 1<<32-1))}
		p.Peer, p.GroupId = names(cv.Conv)
		if cv.HasLast {
			p.Last = entryPB(&cv.Last)
		}
		out.Conversations[i] = p
	}
	c.writeMsg(src, h.Serializer, codec.CmdConversationsOK, h.Seq, out)
}

// markRead raises user's read cursor in conversation id (READ). The
// caller answers, then sends the receipts (receipts) when res.Moved.
func (s *Server) markRead(ctx context.Context, cs persist.ChatStore, user string, id persist.ConvID, upTo uint64) (persist.ReadResult, error) {
	res, err := cs.MarkRead(ctx, user, id, upTo)
	if errors.Is(err, persist.ErrNotFound) {
		return res, refuse(codec.CodeUnknownMessage, "no conversation with %s", id.ID)
	}
	if err != nil {
		return res, &opError{what: "mark read", err: err}
	}
	return res, nil
}

// receipts sends the RECEIPTs of a read cursor that moved: to the reader's
// devices but skip, then (1:1 only: groups get no receipt storm) to the
// peer's, in the peer's seqs.
func (s *Server) receipts(src *loop, user string, id persist.ConvID, res persist.ReadResult, skip *conn) {
	peer, group := names(id)
	own := &pb.Receipt{Peer: peer, GroupId: group, User: user, ReadSeq: res.ReadSeq, MsgId: res.MsgID}
	s.signal(src, []string{user}, skip, codec.CmdReceipt, own)
	if !id.Group && id.ID != user && res.PeerSeq != 0 {
		s.signal(src, []string{id.ID}, nil, codec.CmdReceipt, &pb.Receipt{Peer: user, User: user, ReadSeq: res.PeerSeq, MsgId: res.MsgID})
	}
}

func (s *Server) handleRead(ctx context.Context, src *loop, c *conn, h codec.Header, cs persist.ChatStore, req *pb.ReadRequest) {
	id, ok := convID(src, c, h, req.Peer, req.GroupId)
	if !ok {
		return
	}
	res, err := s.markRead(ctx, cs, c.user, id, req.UpToSeq)
	if err != nil {
		s.replyFailure(src, c, h, "", err)
		return
	}
	c.writeMsg(src, h.Serializer, codec.CmdReadOK, h.Seq, &pb.ReadOK{Peer: req.Peer, GroupId: req.GroupId, ReadSeq: res.ReadSeq, Unread: uint32(min(res.Unread, 1<<32-1))})
	if res.Moved {
		s.receipts(src, c.user, id, res, c)
	}
}

// fanout queues a server frame (cmd, seq 0, msg) to every device of user
// online on this node but skip, encoding msg once per serializer.
// Best-effort, like a PUSH.
func (s *Server) fanout(src *loop, user string, skip *conn, cmd codec.Command, msg proto.Message) {
	var arr [8]*conn
	var frames [4][]byte
	for _, d := range s.sessions.devices(user, arr[:0]) {
		if d == skip {
			continue
		}
		ser := d.ser
		if frames[ser] == nil {
			f, err := codec.AppendFrame(nil, ser, cmd, 0, 0, msg)
			if err != nil {
				s.log.Error("encode frame", "cmd", cmd, "err", err)
				return
			}
			frames[ser] = f
		}
		d.queue(src, func(b []byte) []byte { return append(b, frames[ser]...) })
	}
}

func (s *Server) newTypingLimiter() *rate.Limiter {
	if s.cfg.TypingRate < 0 {
		return rate.NewLimiter(rate.Inf, 0)
	}
	return rate.NewLimiter(rate.Limit(s.cfg.TypingRate), s.cfg.TypingBurst)
}

// handleTyping forwards a TYPING to the other members' devices on this
// node. Nothing is stored and nothing answers it but errors.
func (s *Server) handleTyping(ctx context.Context, src *loop, c *conn, h codec.Header, req *pb.TypingRequest) {
	id, ok := convID(src, c, h, req.Peer, req.GroupId)
	if !ok {
		return
	}
	var targets []string
	if id.Group {
		g, ok := s.groupFor(ctx, src, c, h, nil, id.ID, true)
		if !ok {
			return
		}
		if _, member := slices.BinarySearch(g.Members, c.user); !member {
			c.replyError(src, h.Serializer, h.Seq, codec.CodeNotGroupMember, "not a member of "+g.ID, 0)
			return
		}
		targets = g.Members
	} else {
		exists, err := s.userExists(ctx, id.ID)
		if err != nil {
			s.storeError(src, c, h, "read recipient", err)
			return
		}
		if !exists {
			c.replyError(src, h.Serializer, h.Seq, codec.CodeUnknownRecipient, "no such user: "+id.ID, 0)
			return
		}
		targets = []string{id.ID}
	}
	lim := s.sessions.typingLimiter(c.user, s.newTypingLimiter)
	if lim != nil && !lim.AllowN(now(src), 1) {
		s.metrics.typingDropped.Inc()
		return
	}
	ev := &pb.TypingEvent{GroupId: req.GroupId, User: c.user, On: req.On, ExpiresMs: uint32(s.cfg.TypingExpiry.Milliseconds())}
	if !id.Group {
		ev.Peer = c.user // the conversation as the receiver names it
	}
	others := make([]string, 0, len(targets))
	for _, u := range targets {
		if u != c.user {
			others = append(others, u)
		}
	}
	s.signal(src, others, nil, codec.CmdTypingEvent, ev)
}

// chatEvent runs a recall (kind persist.EventRecall) or a delete-for-me
// (persist.EventDelete) of message target by user: the store appends the
// event to the inboxes concerned and every device of those inboxes is
// pushed it at its seq there. reply, when not nil, is called once the event
// is stored, before the pushes; with a NonBlocking store it runs under the
// store's lock (so the pushes are queued in seq order with the messages
// around the event) and must not block.
func (s *Server) chatEvent(ctx context.Context, src *loop, cs persist.ChatStore, kind uint32, user string, target uint64, reply func(*persist.EventResult)) (persist.EventResult, error) {
	if target == 0 {
		return persist.EventResult{}, refuse(codec.CodeInvalidArgument, "msg_id is required")
	}
	if reply == nil {
		reply = func(*persist.EventResult) {}
	}
	t := now(src)
	ev := persist.EventRequest{User: user, Target: target, ID: s.ids.nextAt(t.UnixMilli()), Timestamp: t.UnixMilli()}
	ev.Done = func(res *persist.EventResult) {
		reply(res)
		// Pushed again on a repeat, as a retried SEND is: the first
		// attempt may have stored the event and never pushed it.
		for i, u := range res.Inboxes {
			s.pushEvent(src, u, res.Seqs[i], &res.Event)
		}
	}
	what := "delete"
	if kind == persist.EventRecall {
		what = "recall"
		ev.NotBefore = t.Add(-s.cfg.RecallWindow).UnixMilli()
	}
	var res persist.EventResult
	var err error
	switch ep, _ := cs.(persist.EventPreparer); {
	case s.cfg.Cluster != nil && ep != nil:
		if res, err = s.clusterEvent(ctx, ep, kind, ev); err == nil {
			reply(&res)
			s.deliverEvent(src, &res)
		}
	case kind == persist.EventRecall:
		res, err = cs.Recall(ctx, ev)
	default:
		res, err = cs.Delete(ctx, ev)
	}
	switch {
	case err == nil:
		return res, nil
	case errors.Is(err, persist.ErrNotFound):
		return res, refuse(codec.CodeUnknownMessage, "no such message in your inbox")
	case errors.Is(err, persist.ErrNotSender):
		return res, refuse(codec.CodeNotSender, "only the sender may recall a message")
	case errors.Is(err, persist.ErrRecallWindow):
		return res, refuse(codec.CodeRecallExpired, "the recall window (%s) has passed", s.cfg.RecallWindow)
	}
	return res, &opError{what: what, err: err}
}

// handleChatEvent runs a RECALL or a DELETE (chatEvent), answering
// RECALL_OK or DELETE_OK before the event's pushes.
func (s *Server) handleChatEvent(ctx context.Context, src *loop, c *conn, h codec.Header, cs persist.ChatStore, req *pb.MessageRequest) {
	kind, okCmd := persist.EventDelete, codec.CmdDeleteOK
	if h.Command == codec.CmdRecall {
		kind, okCmd = persist.EventRecall, codec.CmdRecallOK
	}
	reply := func(res *persist.EventResult) {
		out := &pb.EventOK{MsgId: req.MsgId, Duplicate: res.Duplicate}
		if i := slices.Index(res.Inboxes, c.user); i >= 0 {
			out.Seq = res.Seqs[i]
		}
		c.writeMsg(src, h.Serializer, okCmd, h.Seq, out)
	}
	if _, err := s.chatEvent(ctx, src, cs, kind, c.user, req.MsgId, reply); err != nil {
		s.replyFailure(src, c, h, "", err)
	}
}

// history reads a page of conversation id in user's inbox (HISTORY): the
// newest limit (pageLimit) messages below beforeSeq, or below message
// beforeMsgID of user's inbox (at most one of the two), in ascending seq
// order, and whether older ones remain.
func (s *Server) history(ctx context.Context, cs persist.ChatStore, user string, id persist.ConvID, beforeSeq, beforeMsgID uint64, limit uint32) ([]persist.InboxEntry, bool, error) {
	if beforeMsgID != 0 {
		if beforeSeq != 0 {
			return nil, false, refuse(codec.CodeInvalidArgument, "set at most one of before_seq and before_msg_id")
		}
		seq, err := cs.SeqOf(ctx, user, beforeMsgID)
		if errors.Is(err, persist.ErrNotFound) {
			return nil, false, refuse(codec.CodeUnknownMessage, "before_msg_id is not in your inbox")
		}
		if err != nil {
			return nil, false, &opError{what: "find message", err: err}
		}
		beforeSeq = seq
	}
	n := pageLimit(limit)
	entries, err := cs.History(ctx, user, id, beforeSeq, n+1)
	if err != nil {
		return nil, false, &opError{what: "read history", err: err}
	}
	return entries[max(0, len(entries)-n):], len(entries) > n, nil // the newest n
}

func (s *Server) handleHistory(ctx context.Context, src *loop, c *conn, h codec.Header, cs persist.ChatStore, req *pb.HistoryRequest) {
	id, ok := convID(src, c, h, req.Peer, req.GroupId)
	if !ok {
		return
	}
	entries, more, err := s.history(ctx, cs, c.user, id, req.BeforeSeq, req.BeforeMsgId, req.Limit)
	if err != nil {
		s.replyFailure(src, c, h, "", err)
		return
	}
	out := &pb.HistoryOK{HasMore: more}
	out.Messages = make([]*pb.Message, len(entries))
	for i := range entries {
		out.Messages[i] = entryPB(&entries[i])
	}
	c.writeMsg(src, h.Serializer, codec.CmdHistoryOK, h.Seq, out)
}

func (s *Server) handleReadCount(ctx context.Context, src *loop, c *conn, h codec.Header, cs persist.ChatStore, req *pb.ReadCountRequest) {
	id, ok := convID(src, c, h, req.Peer, req.GroupId)
	if !ok {
		return
	}
	read, members, err := cs.ReadCount(ctx, c.user, id, req.Seq)
	if errors.Is(err, persist.ErrNotFound) {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeUnknownMessage, "no such message in that conversation", 0)
		return
	}
	if err != nil {
		s.storeError(src, c, h, "read count", err)
		return
	}
	c.writeMsg(src, h.Serializer, codec.CmdReadCountOK, h.Seq, &pb.ReadCountOK{Seq: req.Seq, Read: uint32(read), Members: uint32(members)})
}
