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

// convID checks a request's conversation (exactly one of peer and group).
func convID(peer, group string) (persist.ConvID, *codec.Error) {
	id := persist.ConvID{ID: peer}
	if group != "" {
		id = persist.ConvID{ID: group, Group: true}
	}
	if (peer == "") == (group == "") || !validID(id.ID) {
		return id, &codec.Error{Code: codec.CodeInvalidArgument, Message: "set exactly one of peer and group_id, a valid id"}
	}
	return id, nil
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

func (s *Server) handleConversations(r *request) (proto.Message, *codec.Error) {
	req := r.msg.(*pb.ConversationsRequest)
	list, more, err := s.conversations(r.ctx, r.cs, r.c.user, req.BeforeSeq, req.Limit)
	if err != nil {
		return nil, s.failure(r.c, "", err)
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
	return out, nil
}

// markRead raises user's read cursor in conversation id (READ). When
// res.Moved the caller sends the receipts (receipts) and then answers:
// receipts go only to other connections, so the reader sees no difference.
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

// handleRead answers READ; the receipts of a cursor that moved go to the
// other devices first (the reader's own connection gets none).
func (s *Server) handleRead(r *request) (proto.Message, *codec.Error) {
	req := r.msg.(*pb.ReadRequest)
	id, e := convID(req.Peer, req.GroupId)
	if e != nil {
		return nil, e
	}
	res, err := s.markRead(r.ctx, r.cs, r.c.user, id, req.UpToSeq)
	if err != nil {
		return nil, s.failure(r.c, "", err)
	}
	if res.Moved {
		s.receipts(r.src, r.c.user, id, res, r.c)
	}
	return &pb.ReadOK{Peer: req.Peer, GroupId: req.GroupId, ReadSeq: res.ReadSeq, Unread: uint32(min(res.Unread, 1<<32-1))}, nil
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
func (s *Server) handleTyping(r *request) (proto.Message, *codec.Error) {
	req, c := r.msg.(*pb.TypingRequest), r.c
	id, e := convID(req.Peer, req.GroupId)
	if e != nil {
		return nil, e
	}
	var targets []string
	if id.Group {
		g, e := s.groupFor(r.ctx, r.src, c, r.h, nil, id.ID, true)
		if e != nil {
			return nil, e
		}
		if _, member := slices.BinarySearch(g.Members, c.user); !member {
			return nil, &codec.Error{Code: codec.CodeNotGroupMember, Message: "not a member of " + g.ID}
		}
		targets = g.Members
	} else {
		exists, err := s.userExists(r.ctx, id.ID)
		if err != nil {
			return nil, s.storeFailure(c, "read recipient", err)
		}
		if !exists {
			return nil, &codec.Error{Code: codec.CodeUnknownRecipient, Message: "no such user: " + id.ID}
		}
		targets = []string{id.ID}
	}
	lim := s.sessions.typingLimiter(c.user, s.newTypingLimiter)
	if lim != nil && !lim.AllowN(now(r.src), 1) {
		s.metrics.typingDropped.Inc()
		return nil, nil
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
	s.signal(r.src, others, nil, codec.CmdTypingEvent, ev)
	return nil, nil
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

// handleChatEvent runs a RECALL or a DELETE (chatEvent). It writes
// RECALL_OK or DELETE_OK itself, once the event is stored and before the
// event's pushes (which reach the caller's own connection too).
func (s *Server) handleChatEvent(r *request) (proto.Message, *codec.Error) {
	req, c, src, h := r.msg.(*pb.MessageRequest), r.c, r.src, r.h
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
	if _, err := s.chatEvent(r.ctx, src, r.cs, kind, c.user, req.MsgId, reply); err != nil {
		return nil, s.failure(c, "", err)
	}
	return nil, nil
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

func (s *Server) handleHistory(r *request) (proto.Message, *codec.Error) {
	req := r.msg.(*pb.HistoryRequest)
	id, e := convID(req.Peer, req.GroupId)
	if e != nil {
		return nil, e
	}
	entries, more, err := s.history(r.ctx, r.cs, r.c.user, id, req.BeforeSeq, req.BeforeMsgId, req.Limit)
	if err != nil {
		return nil, s.failure(r.c, "", err)
	}
	out := &pb.HistoryOK{HasMore: more}
	out.Messages = make([]*pb.Message, len(entries))
	for i := range entries {
		out.Messages[i] = entryPB(&entries[i])
	}
	return out, nil
}

// readCount reads, for the message at seq of user's inbox in conversation
// id, how many of the other members holding it (its sender excepted) have
// read it, out of how many: READ_COUNT and the server API's ReadCount.
// Refusals are *Error (UNKNOWN_MESSAGE: no message at seq there); store
// failures are *opError.
func readCount(ctx context.Context, cs persist.ChatStore, user string, id persist.ConvID, seq uint64) (read, members int, err error) {
	read, members, err = cs.ReadCount(ctx, user, id, seq)
	switch {
	case errors.Is(err, persist.ErrNotFound):
		return 0, 0, refuse(codec.CodeUnknownMessage, "no such message in that conversation")
	case err != nil:
		return 0, 0, &opError{what: "read count", err: err}
	}
	return read, members, nil
}

func (s *Server) handleReadCount(r *request) (proto.Message, *codec.Error) {
	req := r.msg.(*pb.ReadCountRequest)
	id, e := convID(req.Peer, req.GroupId)
	if e != nil {
		return nil, e
	}
	read, members, err := readCount(r.ctx, r.cs, r.c.user, id, req.Seq)
	if err != nil {
		return nil, s.failure(r.c, "", err)
	}
	return &pb.ReadCountOK{Seq: req.Seq, Read: uint32(read), Members: uint32(members)}, nil
}
