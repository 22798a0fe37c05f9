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

// execChat runs a decoded chat request for logged-in c.
func (s *Server) execChat(ctx context.Context, src *loop, c *conn, h codec.Header, req proto.Message) {
	if t, ok := req.(*pb.TypingRequest); ok {
		s.handleTyping(ctx, src, c, h, t)
		return
	}
	cs := s.chatStore()
	if cs == nil {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeUnsupported, "this node's store does not keep conversations", 0)
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

func (s *Server) handleConversations(ctx context.Context, src *loop, c *conn, h codec.Header, cs persist.ChatStore, req *pb.ConversationsRequest) {
	limit := pageLimit(req.Limit)
	list, err := cs.Conversations(ctx, c.user, req.BeforeSeq, limit+1)
	if err != nil {
		s.storeError(src, c, h, "read conversations", err)
		return
	}
	out := &pb.ConversationsOK{HasMore: len(list) > limit}
	list = list[:min(len(list), limit)]
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

func (s *Server) handleRead(ctx context.Context, src *loop, c *conn, h codec.Header, cs persist.ChatStore, req *pb.ReadRequest) {
	id, ok := convID(src, c, h, req.Peer, req.GroupId)
	if !ok {
		return
	}
	res, err := cs.MarkRead(ctx, c.user, id, req.UpToSeq)
	if errors.Is(err, persist.ErrNotFound) {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeUnknownMessage, "no conversation with "+id.ID, 0)
		return
	}
	if err != nil {
		s.storeError(src, c, h, "mark read", err)
		return
	}
	c.writeMsg(src, h.Serializer, codec.CmdReadOK, h.Seq, &pb.ReadOK{Peer: req.Peer, GroupId: req.GroupId, ReadSeq: res.ReadSeq, Unread: uint32(min(res.Unread, 1<<32-1))})
	if !res.Moved {
		return
	}
	// The reader's other devices, then (1:1 only: groups get no receipt
	// storm) the peer's, in the peer's seqs.
	own := &pb.Receipt{Peer: req.Peer, GroupId: req.GroupId, User: c.user, ReadSeq: res.ReadSeq, MsgId: res.MsgID}
	s.signal(src, []string{c.user}, c, codec.CmdReceipt, own)
	if !id.Group && id.ID != c.user && res.PeerSeq != 0 {
		s.signal(src, []string{id.ID}, nil, codec.CmdReceipt, &pb.Receipt{Peer: c.user, User: c.user, ReadSeq: res.PeerSeq, MsgId: res.MsgID})
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

// handleChatEvent runs a RECALL or a DELETE: the store appends the event
// to the inboxes concerned and, through EventRequest.Done, every device of
// those inboxes (the caller's included) is pushed it at its seq there.
func (s *Server) handleChatEvent(ctx context.Context, src *loop, c *conn, h codec.Header, cs persist.ChatStore, req *pb.MessageRequest) {
	if req.MsgId == 0 {
		c.replyError(src, h.Serializer, h.Seq, codec.CodeInvalidArgument, "msg_id is required", 0)
		return
	}
	t := now(src)
	what, okCmd := "delete", codec.CmdDeleteOK
	if h.Command == codec.CmdRecall {
		what, okCmd = "recall", codec.CmdRecallOK
	}
	ev := persist.EventRequest{User: c.user, Target: req.MsgId, ID: s.ids.nextAt(t.UnixMilli()), Timestamp: t.UnixMilli()}
	// The store calls Done once the event is stored (the memory store
	// under its lock, as it completes appends): the reply and the pushes
	// are then queued in seq order with the messages around the event.
	reply := func(res *persist.EventResult) {
		out := &pb.EventOK{MsgId: req.MsgId, Duplicate: res.Duplicate}
		if i := slices.Index(res.Inboxes, c.user); i >= 0 {
			out.Seq = res.Seqs[i]
		}
		c.writeMsg(src, h.Serializer, okCmd, h.Seq, out)
	}
	ev.Done = func(res *persist.EventResult) {
		reply(res)
		// Pushed again on a repeat, as a retried SEND is: the first
		// attempt may have stored the event and never pushed it.
		for i, u := range res.Inboxes {
			s.pushEvent(src, u, res.Seqs[i], &res.Event)
		}
	}
	kind := persist.EventDelete
	if h.Command == codec.CmdRecall {
		kind = persist.EventRecall
		ev.NotBefore = t.Add(-s.cfg.RecallWindow).UnixMilli()
	}
	var err error
	switch ep, _ := cs.(persist.EventPreparer); {
	case s.cfg.Cluster != nil && ep != nil:
		var res persist.EventResult
		if res, err = s.clusterEvent(ctx, ep, kind, ev); err == nil {
			reply(&res)
			s.deliverEvent(src, &res)
		}
	case kind == persist.EventRecall:
		_, err = cs.Recall(ctx, ev)
	default:
		_, err = cs.Delete(ctx, ev)
	}
	switch {
	case errors.Is(err, persist.ErrNotFound):
		c.replyError(src, h.Serializer, h.Seq, codec.CodeUnknownMessage, "no such message in your inbox", 0)
	case errors.Is(err, persist.ErrNotSender):
		c.replyError(src, h.Serializer, h.Seq, codec.CodeNotSender, "only the sender may recall a message", 0)
	case errors.Is(err, persist.ErrRecallWindow):
		c.replyError(src, h.Serializer, h.Seq, codec.CodeRecallExpired, "the recall window ("+s.cfg.RecallWindow.String()+") has passed", 0)
	case err != nil:
		s.storeError(src, c, h, what, err)
	}
}

func (s *Server) handleHistory(ctx context.Context, src *loop, c *conn, h codec.Header, cs persist.ChatStore, req *pb.HistoryRequest) {
	id, ok := convID(src, c, h, req.Peer, req.GroupId)
	if !ok {
		return
	}
	before := req.BeforeSeq
	if req.BeforeMsgId != 0 {
		if before != 0 {
			c.replyError(src, h.Serializer, h.Seq, codec.CodeInvalidArgument, "set at most one of before_seq and before_msg_id", 0)
			return
		}
		seq, err := cs.SeqOf(ctx, c.user, req.BeforeMsgId)
		if errors.Is(err, persist.ErrNotFound) {
			c.replyError(src, h.Serializer, h.Seq, codec.CodeUnknownMessage, "before_msg_id is not in your inbox", 0)
			return
		}
		if err != nil {
			s.storeError(src, c, h, "find message", err)
			return
		}
		before = seq
	}
	limit := pageLimit(req.Limit)
	entries, err := cs.History(ctx, c.user, id, before, limit+1)
	if err != nil {
		s.storeError(src, c, h, "read history", err)
		return
	}
	out := &pb.HistoryOK{HasMore: len(entries) > limit}
	entries = entries[max(0, len(entries)-limit):] // the newest limit
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
